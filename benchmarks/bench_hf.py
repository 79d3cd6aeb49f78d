"""Training-step benchmark of Hugging Face models with and without fastlayernorm.

For GPT-2 (124M: ``GPT2Config()`` defaults, batch 8 x sequence 1024) and ViT-B/16
(``ViTConfig()`` defaults, batch 128 x 224x224), randomly initialised and fed random data, it
times a full training step (forward, backward, AdamW step; CUDA-synchronized, after
warm-up) in two precision modes:

* ``bf16``: bfloat16 weights, no autocast;
* ``autocast``: float32 weights under ``torch.autocast(dtype=torch.bfloat16)``;

once with ``torch.nn.LayerNorm`` and once after ``fastlayernorm.patch_model``. Both
variants stay resident and their timed steps alternate, so drift in clocks or host
load hits both alike. A
short ``torch.profiler`` run of the same step gives the LayerNorm share of GPU
time: the time of kernels whose name says LayerNorm (ours: ``ln_*``/fastlayernorm;
PyTorch's: ``*layer_norm*``, ``LayerNorm*``, ``GammaBeta*``, ``RowwiseMoments*``, ...)
over the time of all GPU kernels. The step speed-up shows what the kernels buy end to
end, where the share bounds it. Under autocast, the casts around PyTorch's float32
LayerNorm are separate elementwise kernels and are not counted as LayerNorm time,
though patching may remove them; the step time includes them either way. A step
whose GPU time is well below its wall time is flagged host-bound: its step time
measures Python and kernel launches more than kernels. On CPU (``--quick`` only) the
"GPU ms" column holds the self time of CPU ops instead.

    python benchmarks/bench_hf.py --out hf_h100.json     # about 1-2 min on an H100
    python benchmarks/bench_hf.py --quick --out hf_quick.json  # tiny configs; runs on CPU too

Results go to ``benchmarks/results/<out>`` as JSON; a table is printed at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Kernel names that belong to a LayerNorm, ours or PyTorch's (forward and backward).
LN_KERNEL = re.compile(
    r"layer_?norm|fastlayernorm|(?<![a-z0-9])ln_|gammabeta|rowwisemoments|"
    r"computeinternalgradients|computegradientfused",
    re.IGNORECASE,
)
MODES = ("bf16", "autocast")
VARIANTS = ("torch", "fastlayernorm")


# --------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------


@dataclass
class Workload:
    """A model factory and a batch factory; ``batch`` includes labels so the model returns a loss."""

    name: str
    build: Callable[[], torch.nn.Module]
    batch: Callable[[torch.device], Dict[str, torch.Tensor]]
    description: str


def gpt2_workload(quick: bool, batch_size: int) -> Workload:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=512, n_positions=128) if quick else GPT2Config()
    seq = 64 if quick else 1024
    batch_size = 2 if quick else batch_size

    def batch(device):
        ids = torch.randint(0, config.vocab_size, (batch_size, seq), device=device)
        return dict(input_ids=ids, labels=ids)

    return Workload("gpt2", lambda: GPT2LMHeadModel(config), batch,
                    f"GPT-2 {'tiny' if quick else '124M'}, batch {batch_size} x seq {seq}")


def vit_workload(quick: bool, batch_size: int) -> Workload:
    from transformers import ViTConfig, ViTForImageClassification

    if quick:
        config = ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                           image_size=32, patch_size=8, num_labels=10)
    else:
        config = ViTConfig(num_labels=1000)
    batch_size = 4 if quick else batch_size
    size = config.image_size

    def batch(device):
        return dict(pixel_values=torch.randn(batch_size, 3, size, size, device=device),
                    labels=torch.randint(0, config.num_labels, (batch_size,), device=device))

    return Workload("vit", lambda: ViTForImageClassification(config), batch,
                    f"ViT-{'tiny' if quick else 'B/16'}, batch {batch_size} x {size}x{size}")


# --------------------------------------------------------------------------------------
# One training configuration
# --------------------------------------------------------------------------------------


@dataclass
class Result:
    model: str
    mode: str
    variant: str
    patched_modules: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    ln_ms_per_step: float
    gpu_ms_per_step: float
    ln_share: float
    step_mem_gib: float
    final_loss: float
    host_bound: bool
    top_ln_kernels: List[str] = field(default_factory=list)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Runner:
    """One variant's model with its optimizer and batch, ready to step."""

    variant: str
    model: torch.nn.Module
    step: Callable[[], torch.Tensor]
    patched: int


def build_model(workload: Workload, mode: str, variant: str, device: torch.device):
    """Same seed for both variants, so they train the same weights; built on the device to skip a slow CPU init."""
    import fastlayernorm

    torch.manual_seed(0)
    with device:
        model = workload.build()
    if mode == "bf16":
        model = model.to(torch.bfloat16)
    model.train()
    patched = len(fastlayernorm.patch_model(model).patched) if variant == "fastlayernorm" else 0
    return model, patched


def make_step(model, batch, mode: str, device: torch.device):
    """A closure running forward + backward + AdamW step; returns the loss tensor (not synchronized)."""
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if mode == "autocast"
                else contextlib.nullcontext())

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        return loss

    return step


def make_runner(workload: Workload, mode: str, variant: str, device: torch.device) -> Runner:
    model, patched = build_model(workload, mode, variant, device)
    torch.manual_seed(1)
    return Runner(variant, model, make_step(model, workload.batch(device), mode, device), patched)


def timed_step(step, device: torch.device) -> float:
    """Wall time of one step in ms, synchronized before and after so it covers the step's GPU work."""
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3


def time_interleaved(runners: List[Runner], device: torch.device, warmup: int, steps: int) -> Dict[str, List[float]]:
    """Steps the variants in alternating order (AB, BA, ...), so clock and host drift hit both alike."""
    for runner in runners:
        for _ in range(warmup):
            runner.step()
    times: Dict[str, List[float]] = {r.variant: [] for r in runners}
    for i in range(steps):
        for runner in (runners if i % 2 == 0 else runners[::-1]):
            times[runner.variant].append(timed_step(runner.step, device))
    return times


def step_memory_gib(step, device: torch.device) -> float:
    """Peak memory of one step above what was allocated before it (activations and temporaries).

    Measured this way because both variants' weights are resident at once."""
    if device.type != "cuda":
        return 0.0
    synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**30


def profile_steps(step, device: torch.device, steps: int):
    """(LayerNorm ms, total ms, top LayerNorm kernel names) per step.

    On CUDA: GPU kernel durations. On CPU (``--quick`` only) there are no kernels, so
    the self time of the CPU ops stands in, with the same name filter.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(device)

    per_name: Dict[str, float] = {}
    total = 0.0
    for event in prof.events():
        if device.type == "cuda":
            if event.device_type != DeviceType.CUDA:
                continue
            duration = event.time_range.elapsed_us()
        else:
            duration = event.self_cpu_time_total
        total += duration
        if LN_KERNEL.search(event.name):
            per_name[event.name] = per_name.get(event.name, 0.0) + duration
    ln = sum(per_name.values())
    top = sorted(per_name, key=per_name.get, reverse=True)[:6]
    return ln / steps / 1e3, total / steps / 1e3, [name[:120] for name in top]


def summarize(runner: Runner, workload: Workload, mode: str, times: List[float], device, args) -> Result:
    ln_ms, total_ms, top = profile_steps(runner.step, device, args.profile_steps)
    memory = step_memory_gib(runner.step, device)
    loss = runner.step().item()
    median = statistics.median(times)
    deciles = statistics.quantiles(times, n=10) if len(times) > 1 else times * 9
    # GPU busy well under the step time: the step waits on Python/launches, not on kernels.
    host_bound = device.type == "cuda" and total_ms < 0.8 * median
    return Result(workload.name, mode, runner.variant, runner.patched, median, deciles[0], deciles[-1],
                  ln_ms, total_ms, ln_ms / total_ms if total_ms else 0.0, memory, loss, host_bound, top)


def run_pair(workload: Workload, mode: str, device: torch.device, args) -> List[Result]:
    """Both variants of one (model, mode), resident together and timed interleaved."""
    for variant in VARIANTS:
        print(f"[bench_hf] {workload.description}, {mode}: building {variant}", flush=True)
    runners = [make_runner(workload, mode, variant, device) for variant in VARIANTS]
    times = time_interleaved(runners, device, args.warmup, args.steps)
    results = [summarize(r, workload, mode, times[r.variant], device, args) for r in runners]
    del runners
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------


def speedups(results: List[Result]) -> List[dict]:
    """Per (model, mode): torch median step time over fastlayernorm's, and the same for LayerNorm time."""
    by_key = {(r.model, r.mode, r.variant): r for r in results}
    rows = []
    for model, mode in dict.fromkeys((r.model, r.mode) for r in results):
        base, fast = by_key.get((model, mode, "torch")), by_key.get((model, mode, "fastlayernorm"))
        if base and fast:
            ln = base.ln_ms_per_step / fast.ln_ms_per_step if fast.ln_ms_per_step else None
            gpu = base.gpu_ms_per_step / fast.gpu_ms_per_step if fast.gpu_ms_per_step else None
            rows.append(dict(model=model, mode=mode, step_speedup=base.median_ms / fast.median_ms,
                             gpu_time_speedup=gpu, ln_speedup=ln, host_bound=base.host_bound or fast.host_bound))
    return rows


def _ratio(value) -> str:
    return f"{value:.3f}x" if value else "n/a"


def print_table(results: List[Result], rows: List[dict]) -> None:
    print(f"\n{'model':6} {'mode':9} {'variant':14} {'step ms':>8} {'GPU ms':>8} {'LN ms':>7} {'LN share':>9} "
          f"{'step GiB':>9} {'loss':>7}")
    for r in results:
        print(f"{r.model:6} {r.mode:9} {r.variant:14} {r.median_ms:8.2f} {r.gpu_ms_per_step:8.2f} "
              f"{r.ln_ms_per_step:7.2f} {r.ln_share:9.1%} {r.step_mem_gib:9.2f} {r.final_loss:7.3f}")
    print(f"\n{'model':6} {'mode':9} {'step speed-up':>14} {'GPU-time speed-up':>18} {'LN speed-up':>12}")
    for row in rows:
        note = "  (host-bound: step time waits on Python/launches)" if row["host_bound"] else ""
        print(f"{row['model']:6} {row['mode']:9} {_ratio(row['step_speedup']):>14} "
              f"{_ratio(row['gpu_time_speedup']):>18} {_ratio(row['ln_speedup']):>12}{note}")


def environment(device: torch.device) -> dict:
    import fastlayernorm
    import transformers

    return dict(
        torch=torch.__version__, transformers=transformers.__version__, fastlayernorm=fastlayernorm.__version__,
        cuda_built=fastlayernorm.cuda_built(), python=platform.python_version(), device=str(device),
        gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        date=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def output_path(out: str) -> Path:
    path = Path(out)
    return path if path.parent != Path(".") else RESULTS_DIR / path


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_hf.json",
                        help="JSON file name under benchmarks/results/ (or a path with a directory)")
    parser.add_argument("--quick", action="store_true", help="tiny configs and few steps; runs on CPU without CUDA")
    parser.add_argument("--models", default="gpt2,vit", help="comma-separated subset of gpt2,vit")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of bf16,autocast")
    parser.add_argument("--gpt2-batch", type=int, default=8)
    parser.add_argument("--vit-batch", type=int, default=128,
                        help="default 128: at 32 an H100 finishes the kernels in ~12 ms and the step "
                             "waits on Python and launches, which hides kernel speed")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5, quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20, quick 3)")
    parser.add_argument("--profile-steps", type=int, default=None, help="profiled steps (default 3, quick 1)")
    args = parser.parse_args(argv)
    defaults = (2, 3, 1) if args.quick else (5, 20, 3)
    for name, value in zip(("warmup", "steps", "profile_steps"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.quick:
        print("bench_hf.py: no CUDA device. The benchmark measures GPU kernels; "
              "use --quick for a tiny smoke run on CPU.", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    factories = {"gpt2": lambda: gpt2_workload(args.quick, args.gpt2_batch),
                 "vit": lambda: vit_workload(args.quick, args.vit_batch)}
    workloads = [factories[name]() for name in args.models.split(",")]
    modes = args.modes.split(",")

    results = []
    for workload in workloads:
        for mode in modes:
            results.extend(run_pair(workload, mode, device, args))

    rows = speedups(results)
    path = output_path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = dict(environment=environment(device), quick=args.quick,
                  settings=dict(warmup=args.warmup, steps=args.steps, profile_steps=args.profile_steps),
                  workloads={w.name: w.description for w in workloads},
                  results=[asdict(r) for r in results], speedups=rows)
    path.write_text(json.dumps(report, indent=2))
    print_table(results, rows)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
