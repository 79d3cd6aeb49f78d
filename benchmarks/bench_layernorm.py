"""LayerNorm benchmark: fastlayernorm against torch eager, torch.compile, Liger-Kernel and apex.

Run from the repository root::

    python -m benchmarks.bench_layernorm                 # full sweep (needs a GPU)
    python -m benchmarks.bench_layernorm --quick         # few tiny shapes; runs on CPU too
    python benchmarks/bench_layernorm.py --dtypes bf16 --sizes 1024,4096 --providers fastlayernorm,torch

Every shape is first checked against a float64 reference (relative L2 error of y, dx, dw,
db), then timed by CUDA events around each call with L2 flushed before it, median
(``triton.testing.do_bench``'s method, with the host given a head start so that host time
per call is not timed: see ``_cuda_bench_ms``) or, on CPU, with ``time.perf_counter``.  Bandwidth is given
as a fraction of a device-to-device copy measured in the same process.  Results go to
``benchmarks/results/<out>-<device>-<date>.json`` (and ``.png``); the last thing printed
is a compact summary table.  See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import gc
import json
import math
import os
import re
import signal
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

from benchmarks import plot_results
from benchmarks.gpu_monitor import GpuMonitor

REPO = Path(__file__).resolve().parent.parent
BASELINE_NAME = "peers-h100-2026-11-26.json"
DEFAULT_BASELINES = (
    REPO / "benchmarks" / "baseline" / BASELINE_NAME,
    REPO.parent / "shared" / "baseline" / BASELINE_NAME,
)
EPS = 1e-5
FLN = "fastlayernorm"

# dtype key -> (input dtype, weight dtype, tag used for sweep rows, as in the baseline file)
DTYPES: Dict[str, Tuple[torch.dtype, torch.dtype, str]] = {
    "bf16": (torch.bfloat16, torch.bfloat16, "sweep"),
    "fp16": (torch.float16, torch.float16, "fp16"),
    "fp32": (torch.float32, torch.float32, "fp32"),
    "bf16-w32": (torch.bfloat16, torch.float32, "mixed"),
}
DTYPE_ALIASES = {
    "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32",
    "float": "fp32", "mixed": "bf16-w32", "bf16w32": "bf16-w32",
}
# Pass mark for the relative L2 error against float64, by input dtype (a few ulps).
TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-5}

FULL_SIZES = (128, 256, 512, 768, 1000, 1024, 1536, 1600, 2048, 3072, 4096, 4099, 5000,
              5120, 6144, 8192, 12288, 16384, 32768, 65536, 131072, 262144)
SMALLM_ROWS = (1, 8, 64)          # few-row latency rows, at N=4096 bf16
SMALLM_N = 4096
EXTRA_SHAPES = ((1024, 65536), (1 << 20, 64))   # (M, N) extra backward shapes, bf16
MAX_INPUT_SETS = 16               # rotation among input sets for shapes that fit in L2
CONTEXT_KILLERS = ("illegal memory access", "device-side assert", "unspecified launch failure",
                   "misaligned address", "illegal instruction")


def log(*parts: object) -> None:
    print(*parts, flush=True)


# --------------------------------------------------------------------------- providers


class Unsupported(Exception):
    """A provider cannot run on this machine or for this dtype combination."""


LayerNormFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


def _fastlayernorm(device: torch.device) -> LayerNormFn:
    try:
        import fastlayernorm
    except Exception as exc:  # ImportError, or a broken build raising anything
        raise Unsupported(f"import fastlayernorm failed: {exc}") from exc
    return lambda x, w, b, eps: fastlayernorm.layer_norm(x, (x.shape[-1],), w, b, eps)


def _torch(device: torch.device) -> LayerNormFn:
    return lambda x, w, b, eps: F.layer_norm(x, (x.shape[-1],), w, b, eps)


def _configure_dynamo() -> None:
    """Let dynamo compile every shape instead of falling back to eager after 8."""
    import torch._dynamo.config as cfg
    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, key):
            setattr(cfg, key, 100_000)
    for key in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, key):
            setattr(cfg, key, 1_000_000)


def _compile(device: torch.device) -> LayerNormFn:
    _configure_dynamo()
    compiled = torch.compile(F.layer_norm, dynamic=False)
    return lambda x, w, b, eps: compiled(x, (x.shape[-1],), w, b, eps)


def _liger(device: torch.device) -> LayerNormFn:
    if device.type != "cuda":
        raise Unsupported("Liger-Kernel needs CUDA")
    try:
        from liger_kernel.ops.layer_norm import LigerLayerNormFunction
    except Exception as exc:
        raise Unsupported(f"liger_kernel not importable: {exc}") from exc
    return lambda x, w, b, eps: LigerLayerNormFunction.apply(x, w, b, eps)


class _ApexLayerNorm(torch.autograd.Function):
    """apex's fused_layer_norm_cuda forward_affine / backward_affine, as apex wraps them."""

    module = None
    backward_takes_memory_efficient: Optional[bool] = None

    @staticmethod
    def forward(ctx, x, w, b, eps):
        shape = [x.shape[-1]]
        y, mean, invvar = _ApexLayerNorm.module.forward_affine(x.contiguous(), shape, w, b, eps)
        ctx.save_for_backward(x, w, b, mean, invvar)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w, b, mean, invvar = ctx.saved_tensors
        args = (dy.contiguous(), mean, invvar, x, [x.shape[-1]], w, b, ctx.eps)
        cls = _ApexLayerNorm
        if cls.backward_takes_memory_efficient is None:  # newer apex added memory_efficient
            try:
                grads = cls.module.backward_affine(*args, False)
                cls.backward_takes_memory_efficient = True
            except TypeError:
                grads = cls.module.backward_affine(*args)
                cls.backward_takes_memory_efficient = False
        elif cls.backward_takes_memory_efficient:
            grads = cls.module.backward_affine(*args, False)
        else:
            grads = cls.module.backward_affine(*args)
        dx, dw, db = grads
        return dx, dw, db, None


def _apex(device: torch.device) -> LayerNormFn:
    if device.type != "cuda":
        raise Unsupported("apex needs CUDA")
    try:
        import fused_layer_norm_cuda
    except Exception as exc:
        raise Unsupported(f"apex fused_layer_norm_cuda not importable: {exc}") from exc
    _ApexLayerNorm.module = fused_layer_norm_cuda
    return lambda x, w, b, eps: _ApexLayerNorm.apply(x, w, b, eps)


# name -> factory(device) returning fn(x, w, b, eps) -> y (autograd-enabled forward)
PROVIDERS: Dict[str, Callable[[torch.device], LayerNormFn]] = {
    FLN: _fastlayernorm,
    "torch": _torch,
    "compile": _compile,
    "liger": _liger,
    "apex": _apex,
}
PEER_LETTER = {"torch": "t", "compile": "c", "liger": "l", "apex": "a"}


def probe_providers(names: Sequence[str], device: torch.device) -> Tuple[Dict[str, str], Dict[str, str]]:
    """Returns (available: name -> 'ok', unavailable: name -> reason)."""
    available, unavailable = {}, {}
    for name in names:
        try:
            PROVIDERS[name](device)
            available[name] = "ok"
        except Unsupported as exc:
            unavailable[name] = str(exc)
        except Exception as exc:  # noqa: BLE001 - a broken provider must not stop the run
            unavailable[name] = f"{type(exc).__name__}: {exc}"
    return available, unavailable


# --------------------------------------------------------------------------- shapes


@dataclasses.dataclass(frozen=True)
class Shape:
    dtype_key: str
    M: int
    N: int
    tag: str  # 'sweep' | 'fp16' | 'fp32' | 'mixed' (main sweep), 'smallm', 'extra'

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_key][0]

    @property
    def wdtype(self) -> torch.dtype:
        return DTYPES[self.dtype_key][1]

    @property
    def is_latency(self) -> bool:
        return self.tag == "smallm"

    def label(self) -> str:
        return f"{self.dtype_key} M={self.M} N={self.N} [{self.tag}]"


def sweep_tag(dtype_key: str, N: int) -> str:
    """The baseline file's tags: bf16 rows are 'sweep', or 'odd' when N is not a multiple of 128."""
    tag = DTYPES[dtype_key][2]
    if tag == "sweep" and N % 128:
        return "odd"
    return tag


def parse_sizes(text: str) -> List[Tuple[Optional[int], int]]:
    """'1024,4099,64x4096' -> [(None, 1024), (None, 4099), (64, 4096)] (M None: from elements)."""
    sizes = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "x" in item.lower():
            m, n = item.lower().split("x")
            sizes.append((int(m), int(n)))
        else:
            sizes.append((None, int(item)))
    return sizes


def build_shapes(args: argparse.Namespace) -> List[Shape]:
    """Main sweep per dtype (rows = elements // N); the bf16 extras follow the bf16 sweep."""
    shapes: List[Shape] = []
    for key in args.dtypes:
        elements = 1 << (args.fp32_elements_log2 if key == "fp32" else args.elements_log2)
        for m, n in args.sizes:
            M = m if m is not None else max(1, elements // n)
            shapes.append(Shape(key, M, n, sweep_tag(key, n)))
        if key == "bf16" and args.extras:
            shapes += [Shape("bf16", m, SMALLM_N, "smallm") for m in args.smallm_rows]
            shapes += [Shape("bf16", m, n, "extra") for m, n in args.extra_shapes]
    if args.extras and "bf16" not in args.dtypes:
        log("note: few-row/extra shapes are bf16 only and bf16 is not in --dtypes: skipped")
    unique: Dict[Tuple[str, int, int], Shape] = {}
    for shape in shapes:  # e.g. the extra 1024x65536 is also a bf16 sweep shape
        unique.setdefault((shape.dtype_key, shape.M, shape.N), shape)
    return list(unique.values())


# --------------------------------------------------------------------------- timing


def bench_ms(fn: Callable[[], object], device: torch.device, warmup_ms: float, rep_ms: float) -> float:
    """Median time of one call in ms: GPU time by CUDA events (_cuda_bench_ms), perf_counter
    on CPU."""
    if device.type == "cuda":
        return _cuda_bench_ms(fn, warmup_ms, rep_ms)
    return _cpu_median_ms(fn, warmup_ms, rep_ms)


GPU_TIMER = ("CUDA events around each call, L2 flushed before it (triton.testing.do_bench's "
             "method), median; the GPU held back (torch.cuda._sleep) while the host enqueues the "
             "timed calls, so host time per call does not enter")


@functools.lru_cache(maxsize=None)
def _flush_buffer(device: int) -> torch.Tensor:
    """The 256 MiB buffer zeroed before each timed call to flush L2 (do_bench's size)."""
    return torch.empty(256 << 20, dtype=torch.int8, device=f"cuda:{device}")


@functools.lru_cache(maxsize=None)
def _sleep_cycles_per_ms(device: int) -> float:
    """torch.cuda._sleep cycles per millisecond on this GPU (measured once)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(1000)  # module load outside the timed span
    start.record()
    torch.cuda._sleep(10_000_000)
    end.record()
    torch.cuda.synchronize()
    return 10_000_000 / max(start.elapsed_time(end), 1e-3)


def _cuda_bench_ms(fn, warmup_ms: float, rep_ms: float) -> float:
    """do_bench's measurement (an L2-sized buffer zeroed before each call, CUDA events
    around the call, median over ~rep_ms of calls) with one change: before the timed calls
    the GPU sleeps as long as the host will need to enqueue them (host time per call
    measured over the warmup; where the host takes over half the GPU's time per call), so
    every timed call finds its predecessors' work queued and the events time the GPU's
    work alone. Without it, a call whose host side is slower than flush + kernel (the
    autograd backward: 120-620 us of host time per call on the H100 machine against ~150
    us of GPU time) is timed with the GPU idle, waiting for the host (docs/kernels.md,
    sessions 7 and 12)."""
    device = torch.cuda.current_device()
    flush = _flush_buffer(device)
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        flush.zero_()
        fn()
    end.record()
    torch.cuda.synchronize()
    gpu_ms = max(start.elapsed_time(end) / 5, 1e-3)  # flush + call
    n_warmup = max(1, int(warmup_ms / gpu_ms))
    n_rep = max(1, int(rep_ms / gpu_ms))
    t0 = time.perf_counter()
    for _ in range(n_warmup):
        flush.zero_()
        fn()
    host_ms = (time.perf_counter() - t0) * 1e3 / n_warmup
    torch.cuda.synchronize()
    lag_ms = 0.5
    if host_ms > 0.5 * gpu_ms:
        # The head start holds only what the launch queue holds (about a thousand
        # launches: 100 calls of a few kernels each); beyond that the host blocks on a
        # full queue and the remaining calls are timed waiting for it again.
        n_rep = min(n_rep, 100)
        # The host's whole time for the timed calls, not its excess over the GPU's:
        # a host near the GPU's pace (v17: 185-250 us per backward call against
        # ~250 us of GPU time) falls behind on any hiccup, and the calls after it
        # are timed with the GPU waiting for the host.
        lag_ms = min(n_rep * host_ms * 1.5 + 0.5, 5000.0)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    torch.cuda._sleep(int(lag_ms * _sleep_cycles_per_ms(device)))
    for i in range(n_rep):
        flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def _cpu_median_ms(fn, warmup_ms, rep_ms) -> float:
    t0 = time.perf_counter()
    fn()
    est_s = max(time.perf_counter() - t0, 1e-6)
    for _ in range(min(100, max(1, int(warmup_ms / 1e3 / est_s)))):
        fn()
    times = []
    for _ in range(min(1000, max(5, int(rep_ms / 1e3 / est_s)))):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_clock_us(fn: Callable[[], object], device: torch.device, iters: int, trials: int = 5) -> float:
    """Eager wall clock per call: `iters` back-to-back calls between two synchronizes
    (no CUDA graphs, launch overhead included); the median of `trials` such loops."""
    fn()
    sync(device)
    per_call = []
    for _ in range(trials):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        sync(device)
        per_call.append((time.perf_counter() - t0) / iters)
    return statistics.median(per_call) * 1e6


def measure_copy(device: torch.device, nbytes: int, args: argparse.Namespace) -> Dict[str, float]:
    """Device-to-device copy of an nbytes buffer: the bandwidth ceiling (bytes read + written)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), device, args.warmup_ms, args.rep_ms)
    del src, dst
    free_memory(device)
    return {"copy_bytes": 2 * nbytes, "copy_ms": ms, "copy_gbs": 2 * nbytes / (ms * 1e-3) / 1e9}


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        try:
            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - a broken CUDA context is reported elsewhere
            pass


# --------------------------------------------------------------------------- traffic


def traffic_bytes(M: int, N: int, dtype: torch.dtype, wdtype: torch.dtype) -> Tuple[int, int]:
    """(fwd, bwd) bytes, as defined by the baseline file.

    fwd = read x + write y + weight, bias (N each, weight dtype) + 8 B/row (mean, rstd);
    bwd = read x, dy + write dx + 3 vectors of N (weight dtype) + 8 B/row.
    """
    isz = torch.tensor([], dtype=dtype).element_size()
    wsz = torch.tensor([], dtype=wdtype).element_size()
    return 2 * M * N * isz + 2 * N * wsz + 8 * M, 3 * M * N * isz + 3 * N * wsz + 8 * M


# --------------------------------------------------------------------------- inputs and reference


@dataclasses.dataclass
class Inputs:
    xs: List[torch.Tensor]    # requires-grad leaves, one per input set
    dys: List[torch.Tensor]   # fixed output gradients, one per input set
    w: torch.Tensor
    b: torch.Tensor


def input_sets_for(shape: Shape, device: torch.device) -> int:
    """Rotate among several input sets when x and dy of one set would stay in L2."""
    if device.type != "cuda":
        return 1
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    isz = torch.tensor([], dtype=shape.dtype).element_size()
    set_bytes = 2 * shape.M * shape.N * isz
    if set_bytes >= 2 * l2:
        return 1
    return min(MAX_INPUT_SETS, math.ceil(2 * l2 / set_bytes))


def make_inputs(shape: Shape, device: torch.device, seed: int) -> Inputs:
    """randn inputs with a non-zero mean, weight 1+0.1*randn, bias 0.1*randn (never zeros)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    M, N, dt, wdt = shape.M, shape.N, shape.dtype, shape.wdtype

    def randn(*size, dtype):
        return torch.randn(*size, generator=gen, device=device, dtype=dtype)

    n_sets = input_sets_for(shape, device)
    xs = [randn(M, N, dtype=dt).add_(0.5).requires_grad_(True) for _ in range(n_sets)]
    dys = [randn(M, N, dtype=dt) for _ in range(n_sets)]
    w = (1 + 0.1 * randn(N, dtype=torch.float32)).to(wdt).requires_grad_(True)
    b = (0.1 * randn(N, dtype=torch.float32)).to(wdt).requires_grad_(True)
    return Inputs(xs, dys, w, b)


def reference(inp: Inputs, need_bwd: bool) -> Dict[str, torch.Tensor]:
    """float64 y (and dx, dw, db) for the first input set."""
    x = inp.xs[0].detach().double().requires_grad_(need_bwd)
    w = inp.w.detach().double().requires_grad_(need_bwd)
    b = inp.b.detach().double().requires_grad_(need_bwd)
    y = F.layer_norm(x, (x.shape[-1],), w, b, EPS)
    ref = {"y": y.detach()}
    if need_bwd:
        ref["dx"], ref["dw"], ref["db"] = torch.autograd.grad(y, [x, w, b], inp.dys[0].double())
    return ref


def rel_l2(a: torch.Tensor, ref: torch.Tensor) -> float:
    diff = (a.detach().double() - ref).norm().item()
    scale = ref.norm().item()
    return diff / scale if scale > 0 else diff


class Cycle:
    """Round-robin over input sets, so that small shapes are not timed out of L2."""

    def __init__(self, items: Sequence):
        self.items, self.i = list(items), 0

    def next(self):
        item = self.items[self.i]
        self.i = (self.i + 1) % len(self.items)
        return item


# --------------------------------------------------------------------------- one provider, one shape


def classify_failure(exc: BaseException) -> str:
    """'unsupported' for dtype/feature refusals (e.g. torch eager bf16 input + fp32 weight)."""
    if isinstance(exc, (Unsupported, NotImplementedError)):
        return "unsupported"
    text = str(exc).lower()
    if re.search(r"dtype|scalar type|same type|expected .*(float|half|bfloat)|not implemented|"
                 r"not supported|unsupported|mixed", text):
        return "unsupported"
    return "error"


def short_error(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    return f"{type(exc).__name__}: {first[:300]}"


@dataclasses.dataclass
class Context:
    args: argparse.Namespace
    device: torch.device
    copy_gbs: float
    need_fwd: bool
    need_bwd: bool
    broken: Optional[str] = None   # set once the CUDA context is unusable
    tracebacks_shown: set = dataclasses.field(default_factory=set)


def base_row(name: str, shape: Shape, n_sets: int, ctx: Context) -> Dict[str, object]:
    fwd_bytes, bwd_bytes = traffic_bytes(shape.M, shape.N, shape.dtype, shape.wdtype)
    return {
        "provider": name, "tag": shape.tag, "dtype": str(shape.dtype).replace("torch.", ""),
        "wdtype": str(shape.wdtype).replace("torch.", ""), "M": shape.M, "N": shape.N,
        "status": "ok", "error": None,
        "fwd_ms": None, "bwd_ms": None, "fwdbwd_ms": None,
        "fwd_gbs": None, "bwd_gbs": None, "fwdbwd_gbs": None,
        "fwd_frac": None, "bwd_frac": None, "fwdbwd_frac": None,
        "fwd_bytes": fwd_bytes, "bwd_bytes": bwd_bytes,
        "err_y": None, "err_dx": None, "err_dw": None, "err_db": None, "err_ok": None,
        "tolerance": TOLERANCE[shape.dtype], "deterministic": None, "peak_x": None,
        "first_call_s": None, "bwd_method": None, "input_sets": n_sets,
        "elements": shape.M * shape.N, "copy_gbs": ctx.copy_gbs,
    }


def first_call(fn: LayerNormFn, inp: Inputs, ctx: Context):
    """The first forward (+ backward) call: triggers compilation; returns (y, grads, seconds)."""
    x, dy = inp.xs[0], inp.dys[0]
    sync(ctx.device)
    t0 = time.perf_counter()
    y = fn(x, inp.w, inp.b, EPS)
    grads = None
    if ctx.need_bwd:
        grads = torch.autograd.grad(y, [x, inp.w, inp.b], dy, retain_graph=True)
    sync(ctx.device)
    return y, grads, time.perf_counter() - t0


def check_accuracy(row, y, grads, inp, ref) -> None:
    """err_* against float64; err_ok when every one is finite and within tolerance."""
    row["err_y"] = rel_l2(y, ref["y"])
    errs = [row["err_y"]]
    for key, g in zip(("dx", "dw", "db"), grads or ()):
        row[f"err_{key}"] = rel_l2(g, ref[key])
        errs.append(row[f"err_{key}"])
    row["err_ok"] = all(math.isfinite(e) and e <= row["tolerance"] for e in errs)


def check_determinism(row, y, grads, inp) -> None:
    """deterministic: three more backwards through the same graph give bitwise-equal grads."""
    if grads is None:
        return
    x, dy = inp.xs[0], inp.dys[0]
    row["deterministic"] = all(
        all(torch.equal(a, b) for a, b in zip(
            grads, torch.autograd.grad(y, [x, inp.w, inp.b], dy, retain_graph=True)))
        for _ in range(3))


def measure_peak(row, fn, inp, ctx: Context) -> None:
    """peak_x: peak memory of forward+backward beyond the outputs (y, dx, dw, db), over one x."""
    if ctx.device.type != "cuda":
        return
    x, dy = inp.xs[0], inp.dys[0]
    free_memory(ctx.device)
    sync(ctx.device)
    base = torch.cuda.memory_allocated(ctx.device)
    torch.cuda.reset_peak_memory_stats(ctx.device)
    y = fn(x, inp.w, inp.b, EPS)
    outputs = [y]
    if ctx.need_bwd:
        outputs += list(torch.autograd.grad(y, [x, inp.w, inp.b], dy))
    sync(ctx.device)
    peak = torch.cuda.max_memory_allocated(ctx.device) - base
    out_bytes = sum(t.numel() * t.element_size() for t in outputs)
    row["peak_x"] = max(0, peak - out_bytes) / (x.numel() * x.element_size())


def _cuda_mallocs(device: torch.device) -> Optional[int]:
    """cudaMalloc + cudaFree calls of the caching allocator so far (None off CUDA)."""
    if device.type != "cuda":
        return None
    stats = torch.cuda.memory_stats(device)
    return int(stats.get("num_device_alloc", 0)) + int(stats.get("num_device_free", 0))


def _host_us_per_call(fn: Callable[[], object], device: torch.device, calls: int = 20) -> float:
    """Host time per call of `calls` calls enqueued back to back (no synchronization
    between them, so the GPU's queue is never waited for), in microseconds."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - t0
    sync(device)
    return elapsed / calls * 1e6


def _bench_instrumented(row, direction, fn, ctx: Context) -> float:
    """The fastest of `--trials` bench_ms medians, recording in row each trial's median
    (`<direction>_ms_trials`) and diagnostics for run-to-run outliers: how many
    cudaMalloc/cudaFree calls the caching allocator made while timing
    (`<direction>_cuda_mallocs`: timed calls should make none), the host's 1-minute load
    average (`<direction>_loadavg`) and, on CUDA where NVML answers, the SM clock, power,
    temperature and clock-event reasons sampled meanwhile (`<direction>_sm_mhz_min`, ...;
    benchmarks/gpu_monitor.py).

    Why trials: in the runs of sessions 6-7 a few whole medians came out 1.2-5x slow on
    shapes that timed normally in every other process, with the GPU at full clocks and
    drawing less power. The v13 run recorded why: there the backward's host time per call
    (`<direction>_host_us`, calls enqueued back to back right after the timing) rose to
    200-600 us against ~150 us of GPU time plus the L2 flush, and the GPU waited for the
    host. The timer now gives the host a head start (_cuda_bench_ms); the trials stay as a
    guard against what else may stall one of them, and every trial is kept in the JSON.
    """
    before = _cuda_mallocs(ctx.device)
    monitor = GpuMonitor(ctx.device.index or 0) if ctx.device.type == "cuda" else None
    with monitor if monitor is not None else contextlib.nullcontext():
        trials = [bench_ms(fn, ctx.device, ctx.args.warmup_ms, ctx.args.rep_ms)
                  for _ in range(max(1, ctx.args.trials))]
    after = _cuda_mallocs(ctx.device)
    if row is not None:
        row[f"{direction}_ms_trials"] = trials
        row[f"{direction}_host_us"] = _host_us_per_call(fn, ctx.device)
        if hasattr(os, "getloadavg"):
            row[f"{direction}_loadavg"] = os.getloadavg()[0]
        if before is not None and after is not None:
            row[f"{direction}_cuda_mallocs"] = after - before
        if monitor is not None:
            for key, value in monitor.summary().items():
                row[f"{direction}_{key}"] = value
    return min(trials)


def time_forward(fn, inp, ctx: Context, row=None) -> float:
    """The forward as training runs it (inputs requiring grad: what the backward reads is
    saved), or with --inference under torch.no_grad (nothing saved; fastlayernorm then
    stores no mean/rstd, torch.compile runs its inference graph)."""
    sets = Cycle(inp.xs)
    w, b = inp.w, inp.b
    if ctx.args.inference:
        def call():
            with torch.no_grad():
                return fn(sets.next(), w, b, EPS)
        return _bench_instrumented(row, "fwd", call, ctx)
    return _bench_instrumented(row, "fwd", lambda: fn(sets.next(), w, b, EPS), ctx)


def time_backward(row, fn, inp, ctx: Context) -> float:
    """autograd backward of a kept forward output (retain_graph, so the forward is not timed).
    If a provider cannot backward twice through one graph, time forward+backward and subtract
    the forward."""
    w, b, args = inp.w, inp.b, ctx.args
    try:
        graphs = Cycle([(fn(x, w, b, EPS), x, dy) for x, dy in zip(inp.xs, inp.dys)])

        def backward():
            y, x, dy = graphs.next()
            return torch.autograd.grad(y, [x, w, b], dy, retain_graph=True)

        ms = _bench_instrumented(row, "bwd", backward, ctx)
        row["bwd_method"] = "autograd.grad(retain_graph=True)"
        return ms
    except Exception as exc:  # noqa: BLE001
        if is_context_killer(exc):
            raise
        log(f"    backward with retain_graph failed ({short_error(exc)}); timing fwd+bwd - fwd")
    sets = Cycle(list(zip(inp.xs, inp.dys)))

    def forward_backward():
        x, dy = sets.next()
        return torch.autograd.grad(fn(x, w, b, EPS), [x, w, b], dy)

    total = bench_ms(forward_backward, ctx.device, args.warmup_ms, args.rep_ms)
    fwd = row["fwd_ms"] if row["fwd_ms"] is not None else time_forward(fn, inp, ctx)
    row["bwd_method"] = "fwd+bwd minus fwd"
    return max(total - fwd, 0.0)


def measure_latency(row, fn, inp, ctx: Context) -> None:
    """Few-row shapes: microseconds, by the timer (GPU time) and by eager wall clock."""
    x, dy, w, b = inp.xs[0], inp.dys[0], inp.w, inp.b
    iters = ctx.args.wall_iters
    if row["fwd_ms"] is not None:
        row["fwd_us"] = row["fwd_ms"] * 1e3
    row["fwd_wall_us"] = wall_clock_us(lambda: fn(x, w, b, EPS), ctx.device, iters)
    if ctx.need_bwd:
        if row["bwd_ms"] is not None:
            row["bwd_us"] = row["bwd_ms"] * 1e3
        y = fn(x, w, b, EPS)
        row["bwd_wall_us"] = wall_clock_us(
            lambda: torch.autograd.grad(y, [x, w, b], dy, retain_graph=True), ctx.device, iters)
        row["fwdbwd_wall_us"] = wall_clock_us(
            lambda: torch.autograd.grad(fn(x, w, b, EPS), [x, w, b], dy), ctx.device, iters)


def fill_bandwidth(row, copy_gbs: float) -> None:
    fwd_ms, bwd_ms = row["fwd_ms"], row["bwd_ms"]
    if fwd_ms is not None and bwd_ms is not None:
        row["fwdbwd_ms"] = fwd_ms + bwd_ms
    for mode, nbytes in (("fwd", row["fwd_bytes"]), ("bwd", row["bwd_bytes"]),
                         ("fwdbwd", row["fwd_bytes"] + row["bwd_bytes"])):
        ms = row[f"{mode}_ms"]
        if ms:
            row[f"{mode}_gbs"] = nbytes / (ms * 1e-3) / 1e9
            row[f"{mode}_frac"] = row[f"{mode}_gbs"] / copy_gbs


def is_context_killer(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(k in text for k in CONTEXT_KILLERS)


def run_provider(name: str, shape: Shape, inp: Inputs, ref, ctx: Context) -> Dict[str, object]:
    """Everything for one provider on one shape; failures are recorded in the row, never raised."""
    row = base_row(name, shape, len(inp.xs), ctx)
    try:
        fn = PROVIDERS[name](ctx.device)
        y, grads, row["first_call_s"] = first_call(fn, inp, ctx)
    except Exception as exc:  # noqa: BLE001
        row["status"], row["error"] = classify_failure(exc), short_error(exc)
        if name == FLN and row["error"] not in ctx.tracebacks_shown:  # where it failed, once
            ctx.tracebacks_shown.add(row["error"])
            log("".join(traceback.format_exception(exc)[-4:]).rstrip())
        note_context_killer(exc, ctx)
        return row
    phases = [("check", lambda: check_accuracy(row, y, grads, inp, ref)),
              ("determinism", lambda: check_determinism(row, y, grads, inp)),
              ("peak", lambda: measure_peak(row, fn, inp, ctx))]
    if ctx.need_fwd:
        phases.append(("fwd", lambda: row.__setitem__("fwd_ms", time_forward(fn, inp, ctx, row))))
    if ctx.need_bwd:
        phases.append(("bwd", lambda: row.__setitem__("bwd_ms", time_backward(row, fn, inp, ctx))))
    if shape.is_latency:
        phases.append(("latency", lambda: measure_latency(row, fn, inp, ctx)))
    for phase, action in phases:
        try:
            action()
        except Exception as exc:  # noqa: BLE001
            row["status"] = "partial"
            row["error"] = ((row["error"] + "; ") if row["error"] else "") + f"{phase}: {short_error(exc)}"
            if note_context_killer(exc, ctx):
                break
        if phase == "determinism":
            y = grads = None  # free the first outputs before timing
    fill_bandwidth(row, ctx.copy_gbs)
    return row


def note_context_killer(exc: BaseException, ctx: Context) -> bool:
    if ctx.device.type == "cuda" and is_context_killer(exc):
        ctx.broken = short_error(exc)
        log(f"!!! CUDA context is broken ({ctx.broken}); no further shapes will be started")
        return True
    return False


def format_row(row) -> str:
    def ms(key):
        return f"{row[key]:.4f}ms {100 * row[key.replace('_ms', '_frac')]:5.1f}%" if row[key] else "-"
    errs = " ".join(f"{k[4:]}={row[k]:.1e}" for k in ("err_y", "err_dx", "err_dw", "err_db")
                    if row[k] is not None)
    verdict = {True: "ok", False: "ERR>tol", None: ""}[row["err_ok"]]
    text = f"  {row['provider']:<13} fwd {ms('fwd_ms'):<18} bwd {ms('bwd_ms'):<18} {errs} {verdict}"
    if "fwd_wall_us" in row:
        text += f" wall fwd {row['fwd_wall_us']:.1f}us"
        if "bwd_wall_us" in row:
            text += f" bwd {row['bwd_wall_us']:.1f}us"
    if row["status"] != "ok":
        text += f"  [{row['status']}: {row['error']}]"
    return text


def run_job(shape: Shape, providers: Sequence[str], ctx: Context, seed: int) -> List[Dict[str, object]]:
    """Inputs and float64 reference for one shape, then each provider in turn."""
    rows = []
    try:
        inp = make_inputs(shape, ctx.device, seed)
        ref = reference(inp, ctx.need_bwd)
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory
        log(f"  could not prepare {shape.label()}: {short_error(exc)}")
        note_context_killer(exc, ctx)
        return rows
    for name in providers:
        row = run_provider(name, shape, inp, ref, ctx)
        rows.append(row)
        log(format_row(row))
        if name == FLN and (row["status"] != "ok" or row["err_ok"] is False):
            log(f"!!!!!!!! FASTLAYERNORM FAILED on {shape.label()}: status={row['status']} "
                f"err_ok={row['err_ok']} error={row['error']} "
                f"errs y={row['err_y']} dx={row['err_dx']} dw={row['err_dw']} db={row['err_db']}")
        if ctx.broken:
            break
    del inp, ref
    free_memory(ctx.device)
    return rows


# --------------------------------------------------------------------------- baseline and summary


def load_baseline(path: Optional[str]) -> Tuple[Optional[str], List[dict], Optional[str]]:
    """(path, rows, the card the baseline was measured on) of the peers' baseline file."""
    candidates = [Path(path)] if path else list(DEFAULT_BASELINES)
    for candidate in candidates:
        if candidate.is_file():
            try:
                base = json.loads(candidate.read_text())
                return str(candidate), base["rows"], base.get("device")
            except Exception as exc:  # noqa: BLE001
                log(f"baseline {candidate} unreadable: {short_error(exc)}")
                return None, [], None
    log(f"no baseline file found (looked at {', '.join(map(str, candidates))})")
    return None, [], None


def baseline_best(rows: List[dict], dtype: str, wdtype: str, M: int, N: int, tag: str) -> dict:
    """Best peer fraction from the baseline: same dtype, wdtype, M, N; else (not for few-row
    shapes) the same N at the baseline's own row count."""
    same = [r for r in rows if (r["dtype"], r["wdtype"], r["N"]) == (dtype, wdtype, N)]
    exact = [r for r in same if r["M"] == M]
    match = "exact" if exact else "same N"
    candidates = exact or ([] if tag == "smallm" else [r for r in same if r["tag"] != "smallm"])
    out: Dict[str, object] = {"baseline_match": match if candidates else None}
    for mode in ("fwd", "bwd"):
        scored = [r for r in candidates if r.get(f"{mode}_frac")]
        best = max(scored, key=lambda r: r[f"{mode}_frac"]) if scored else None
        out[f"baseline_best_{mode}_frac"] = best[f"{mode}_frac"] if best else None
        out[f"baseline_best_{mode}_provider"] = best["provider"] if best else None
        out[f"baseline_best_{mode}_ms"] = best[f"{mode}_ms"] if best else None
    return out


def summarize(rows: List[dict], baseline_rows: List[dict]) -> List[dict]:
    """One entry per shape: fastlayernorm's fractions, the best live peer, speed-ups, baseline."""
    groups: Dict[tuple, List[dict]] = {}
    for row in rows:
        groups.setdefault((row["dtype"], row["wdtype"], row["M"], row["N"], row["tag"]), []).append(row)
    summary = []
    for (dtype, wdtype, M, N, tag), group in groups.items():
        fln = next((r for r in group if r["provider"] == FLN), None)
        peers = [r for r in group if r["provider"] != FLN and r["status"] in ("ok", "partial")]
        entry: Dict[str, object] = {"dtype": dtype, "wdtype": wdtype, "M": M, "N": N, "tag": tag,
                                    "fln_status": fln["status"] if fln else "absent",
                                    "err_ok": fln["err_ok"] if fln else None}
        for mode in ("fwd", "bwd", "fwdbwd"):
            entry[f"fln_{mode}_ms"] = fln[f"{mode}_ms"] if fln else None
            entry[f"fln_{mode}_frac"] = fln[f"{mode}_frac"] if fln else None
            timed = [r for r in peers if r[f"{mode}_ms"]]
            best = min(timed, key=lambda r: r[f"{mode}_ms"]) if timed else None
            entry[f"best_peer_{mode}"] = best["provider"] if best else None
            entry[f"best_peer_{mode}_frac"] = best[f"{mode}_frac"] if best else None
            fln_ms = entry[f"fln_{mode}_ms"]
            entry[f"speedup_best_{mode}"] = best[f"{mode}_ms"] / fln_ms if best and fln_ms else None
        entry["speedup"] = {
            r["provider"]: {mode: (r[f"{mode}_ms"] / entry[f"fln_{mode}_ms"]
                                   if r[f"{mode}_ms"] and entry[f"fln_{mode}_ms"] else None)
                            for mode in ("fwd", "bwd", "fwdbwd")}
            for r in peers}
        entry["unsupported"] = sorted(r["provider"] for r in group if r["status"] == "unsupported")
        entry["errors"] = sorted(r["provider"] for r in group if r["status"] == "error")
        if tag == "smallm":
            entry["latency_us"] = {r["provider"]: {k: r.get(k) for k in (
                "fwd_us", "fwd_wall_us", "bwd_us", "bwd_wall_us", "fwdbwd_wall_us")}
                for r in group if r["status"] in ("ok", "partial")}
        entry.update(baseline_best(baseline_rows, dtype, wdtype, M, N, tag))
        summary.append(entry)
    return summary


def fwd_bwd_geomeans(summary: List[dict]) -> Dict[str, Dict[str, float]]:
    """Per dtype (short name) and peer: the geometric mean of the forward+backward speed-up
    (`speedup[peer]["fwdbwd"]`: the peer's fwd+bwd time over fastlayernorm's) over the
    shapes of the main sweep where both directions were timed for both, not the few-row or
    extra shapes (issue 4's 2x target against torch)."""
    ratios: Dict[str, Dict[str, List[float]]] = {}
    for e in summary:
        if e["tag"] in ("smallm", "extra"):
            continue
        dt = SHORT_DTYPE.get((e["dtype"], e["wdtype"]), e["dtype"])
        for peer, x in e["speedup"].items():
            if x.get("fwdbwd"):
                ratios.setdefault(dt, {}).setdefault(peer, []).append(x["fwdbwd"])
    return {dt: {peer: math.exp(sum(map(math.log, v)) / len(v)) for peer, v in by_peer.items()}
            for dt, by_peer in ratios.items()}


SHORT_DTYPE = {("bfloat16", "bfloat16"): "bf16", ("float16", "float16"): "fp16",
               ("float32", "float32"): "fp32", ("bfloat16", "float32"): "bf16w32"}


def _pct(value: Optional[float], width: int, digits: int = 1) -> str:
    return f"{100 * value:{width}.{digits}f}" if value is not None else " " * (width - 1) + "-"


def _x(value: Optional[float]) -> str:
    return f"{value:5.2f}" if value is not None else "    -"


def summary_text(data: dict) -> str:
    """The compact table printed last."""
    out = [f"==== fastlayernorm summary: {data['device']} | copy {data['copy_gbs']:.0f} GB/s | "
           f"{data['timer']} ====",
           "fastlayernorm % of copy | best live peer % (t torch, c compile, l liger, a apex) | "
           "x = best peer ms / fastlayernorm ms | base = best peer % in the baseline file "
           f"(same M, N; measured on {data.get('baseline_device') or 'an unrecorded card'})",
           f"{'dtype':<7}{'N':>7}{'M':>8}|{'fwd%':>6}{'bwd%':>6}|{'peerF%':>7}{'B%':>7}|"
           f"{'xF':>5}{'xB':>5}|{'baseF':>6}{'B':>4}|chk"]
    latency = []
    for e in data["summary"]:
        if e["tag"] == "smallm":
            latency.append(e)
        dt = SHORT_DTYPE.get((e["dtype"], e["wdtype"]), e["dtype"])
        pf = _pct(e["best_peer_fwd_frac"], 6) + PEER_LETTER.get(e["best_peer_fwd"], " ")
        pb = _pct(e["best_peer_bwd_frac"], 6) + PEER_LETTER.get(e["best_peer_bwd"], " ")
        chk = {True: "ok", False: "FAIL", None: "-"}[e["err_ok"]]
        if e["fln_status"] not in ("ok",):
            chk += f" {e['fln_status']}"
        exact = e["baseline_match"] == "exact"
        base_f = _pct(e["baseline_best_fwd_frac"] if exact else None, 6, 0)
        base_b = _pct(e["baseline_best_bwd_frac"] if exact else None, 4, 0)
        out.append(f"{dt:<7}{e['N']:>7}{e['M']:>8}|{_pct(e['fln_fwd_frac'], 6)}{_pct(e['fln_bwd_frac'], 6)}"
                   f"|{pf}{pb}|{_x(e['speedup_best_fwd'])}{_x(e['speedup_best_bwd'])}"
                   f"|{base_f}{base_b}|{chk}")
    if latency:
        out.append("few rows, N=4096 bf16, us: timer median / eager wall clock per call "
                   "(fastlayernorm | best peer by timer median)")
        for e in latency:
            lat = e.get("latency_us", {})
            mine = lat.get(FLN, {})
            text = f"  M={e['M']:<3} fln fwd {_us(mine, 'fwd')} bwd {_us(mine, 'bwd')} |"
            for mode in ("fwd", "bwd"):
                peers = {p: v for p, v in lat.items() if p != FLN and v.get(f"{mode}_us")}
                if peers:
                    p = min(peers, key=lambda k: peers[k][f"{mode}_us"])
                    text += f" {mode} {p} {_us(peers[p], mode)}"
            base = e.get("baseline_best_fwd_ms"), e.get("baseline_best_bwd_ms")
            if base[0]:
                text += f" | base {base[0] * 1e3:.1f}/{base[1] * 1e3:.1f}"
            out.append(text)
    geo = data.get("fwd_bwd_geomean") or {}
    if geo:
        out.append("forward+backward, peer time / fastlayernorm time, geometric mean over the "
                   "main sweep: " + "; ".join(
                       f"{dt} " + ", ".join(f"{p} {x:.2f}x" for p, x in sorted(v.items()))
                       for dt, v in geo.items()))
    if data.get("skipped"):
        out.append(f"NOT RUN ({data.get('stopped')}): {len(data['skipped'])} jobs, "
                   f"first {data['skipped'][0]}")
    if data.get("failures"):
        out.append(f"!!! fastlayernorm FAILED on {len(data['failures'])} shapes: "
                   + "; ".join(data["failures"][:6]))
    out.append(f"json: {data.get('json_path')}  png: {data.get('png_path')}  "
               f"elapsed {data['elapsed_s']:.0f} s")
    return "\n".join(out)


def _us(lat: dict, mode: str) -> str:
    a, b = lat.get(f"{mode}_us"), lat.get(f"{mode}_wall_us")
    return f"{a:.1f}/{b:.1f}" if a is not None and b is not None else "-"


# --------------------------------------------------------------------------- output


def device_tag(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100'; CPU -> 'cpu'."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device)
    for token in name.replace("NVIDIA", "").split():
        if re.search(r"[A-Za-z]", token) and re.search(r"\d", token):
            return token.lower()
    return re.sub(r"\W+", "-", name).strip("-").lower()


def device_name(device: torch.device) -> str:
    if device.type != "cuda":
        import platform
        return f"CPU ({platform.processor() or platform.machine()}, threads={torch.get_num_threads()})"
    props = torch.cuda.get_device_properties(device)
    return f"{props.name} ({props.multi_processor_count} SMs)"


def output_paths(args: argparse.Namespace, tag: str, date: str) -> Tuple[Path, Path]:
    """--out NAME -> <out-dir>/NAME-<tag>-<date>.json; a NAME ending in .json is used as is."""
    out_dir = Path(args.out_dir)
    if args.out.endswith(".json"):
        json_path = Path(args.out) if os.sep in args.out else out_dir / args.out
    else:
        json_path = out_dir / f"{args.out}-{tag}-{date}.json"
    return json_path, json_path.with_suffix(".png")


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def make_note(args: argparse.Namespace, timer: str) -> str:
    return (
        f"Main sweep: rows x N = 2^{args.elements_log2} elements (2^{args.fp32_elements_log2} for "
        f"float32), rows = elements // N; tag smallm: rows in {list(args.smallm_rows)} at N={SMALLM_N} "
        f"bf16; tag extra: (M, N) in {[list(s) for s in args.extra_shapes]} bf16. fwd_ms/bwd_ms: "
        f"{timer}; fwd = the op call on a requires-grad input (what eager training pays)"
        f"{' -- here (--inference) under torch.no_grad instead, nothing saved, the bytes still counting 8 B/row of stats' if args.inference else ''}; bwd = "
        "torch.autograd.grad(y, [x, w, b], dy, retain_graph=True) on a kept output, so the forward "
        "is not re-timed (bwd_method says when a provider needed fwd+bwd minus fwd instead); "
        "fwdbwd = fwd + bwd. Shapes whose x and dy fit twice in L2 rotate among input_sets sets. "
        "fwd bytes = read x + write y + weight, bias (N each, weight dtype) + 8 B/row stats; bwd "
        "bytes = read x, dy + write dx + 3 vectors of N (weight dtype) + 8 B/row; fwdbwd = sum. "
        "gbs = bytes / time / 1e9; frac = gbs / copy_gbs, copy_gbs = device-to-device copy of a "
        f"{args.copy_gib:g} GiB buffer in the same process (bytes read + written). Few-row shapes "
        f"also carry *_us (timer median in microseconds, GPU time) and *_wall_us: the eager wall clock per "
        f"call, {args.wall_iters} back-to-back calls between two torch.cuda.synchronize(), no CUDA "
        "graphs, median of 5 such loops (bwd: autograd.grad with retain_graph on one output; "
        "fwdbwd: forward then autograd.grad). fwd/bwd_cuda_mallocs (CUDA): cudaMalloc + cudaFree "
        "calls of the caching allocator while that timing ran (0 expected); fwd/bwd_sm_mhz_min, "
        "_sm_mhz_mean, _power_w_max, _temp_c_max, _clock_event_reasons (NVML bitmask), _samples: "
        "the GPU sampled every 10 ms through NVML while that timing ran (CUDA, where NVML "
        "answers). Inputs: x = randn + 0.5, dy = randn, weight = "
        "1 + 0.1*randn, bias = 0.1*randn, eps = 1e-5. err_* = relative L2 error against float64 "
        "over all rows of the first input set; err_ok = all err_* <= tolerance. deterministic = "
        "bitwise-identical dx, dw, db over 4 backward runs. peak_x = peak memory of forward+backward "
        "beyond its outputs (y, dx, dw, db), over one x. providers: torch = F.layer_norm; compile = "
        "torch.compile(F.layer_norm, dynamic=False), recompile limits raised; liger = "
        "LigerLayerNormFunction; apex = fused_layer_norm_cuda forward_affine/backward_affine. "
        "status: ok | partial (a later phase failed) | unsupported (refused, e.g. torch eager "
        "bf16 input + fp32 weight on CUDA) | error. Summary: best live peer = lowest ms among the "
        "peers of this run; speedup = peer ms / fastlayernorm ms; baseline_best_* = best peer "
        "fraction in the baseline file (same dtype, wdtype, M, N, else same N)."
    )


# --------------------------------------------------------------------------- CLI


def parse_list(text: str, allowed: Sequence[str], aliases: Optional[Dict[str, str]] = None) -> List[str]:
    aliases = aliases or {}
    items = [aliases.get(s.strip().lower(), s.strip()) for s in text.split(",") if s.strip()]
    unknown = [s for s in items if s not in allowed]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {list(allowed)}")
    return list(dict.fromkeys(items))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="few tiny shapes; a self-check that also runs on CPU")
    p.add_argument("--providers", default=",".join(PROVIDERS), help="comma list")
    p.add_argument("--dtypes", default=None, help="comma list of bf16, fp16, fp32, bf16-w32 "
                   "(default: all; quick: bf16,fp32,bf16-w32)")
    p.add_argument("--sizes", default=None,
                   help="comma list of N (rows = elements // N) or MxN; default: the full sweep")
    p.add_argument("--modes", default="fwd,bwd", help="comma list of fwd, bwd, fwdbwd (= both)")
    p.add_argument("--inference", action="store_true",
                   help="time the forward under torch.no_grad (with --modes fwd): no provider "
                        "saves what a backward would read")
    p.add_argument("--extras", action=argparse.BooleanOptionalAction, default=None,
                   help="the few-row and extra bf16 shapes (default: on unless --sizes is given)")
    p.add_argument("--no-compile", action="store_true", help="leave out torch.compile")
    p.add_argument("--compile-dtypes", default="bf16,fp32",
                   help="dtypes that torch.compile runs for (compilation is slow)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="start no new shape after this many seconds")
    p.add_argument("--warmup-ms", type=float, default=10.0, help="timer warmup (GPU ms)")
    p.add_argument("--rep-ms", type=float, default=50.0, help="timed calls (GPU ms)")
    p.add_argument("--trials", type=int, default=2,
                   help="timer medians per timing; the fastest is reported, all are kept")
    p.add_argument("--wall-iters", type=int, default=200, help="calls per wall-clock loop")
    p.add_argument("--elements-log2", type=int, default=None, help="main sweep: rows*N = 2^this (26)")
    p.add_argument("--fp32-elements-log2", type=int, default=None, help="the same for float32 (25)")
    p.add_argument("--copy-gib", type=float, default=None, help="copy buffer size (2; CPU 0.25)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--baseline", default=None,
                   help=f"peers' baseline JSON (default: benchmarks/baseline/{BASELINE_NAME}, "
                        f"else ../shared/baseline/{BASELINE_NAME})")
    p.add_argument("--out", default="layernorm",
                   help="result name: <out-dir>/NAME-<device>-<date>.json/.png (NAME.json: as is)")
    p.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--cpu-threads", type=int, default=1,
                   help="torch threads on CPU (1 avoids OpenMP wake-up stalls on a busy machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resummarize", metavar="JSON", default=None,
                   help="measure nothing: rebuild summary, plot and table from a result JSON")
    args = p.parse_args(argv)
    finish_args(args, p)
    return args


def finish_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Resolve defaults that depend on --quick and the device."""
    try:
        args.providers = parse_list(args.providers, list(PROVIDERS))
        args.dtypes = parse_list(args.dtypes, list(DTYPES), DTYPE_ALIASES) if args.dtypes else None
        args.compile_dtypes = parse_list(args.compile_dtypes, list(DTYPES), DTYPE_ALIASES)
        modes = parse_list(args.modes, ["fwd", "bwd", "fwdbwd"])
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if "fwdbwd" in modes:
        modes = ["fwd", "bwd"]
    if args.inference and modes != ["fwd"]:
        parser.error("--inference times the forward only: give --modes fwd")
    args.modes = modes
    if args.no_compile and "compile" in args.providers:
        args.providers.remove("compile")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = args.device.startswith("cuda")
    user_sizes = args.sizes is not None
    if args.extras is None:
        args.extras = not user_sizes
    if args.quick:
        args.dtypes = args.dtypes or ["bf16", "fp32", "bf16-w32"]
        args.sizes = args.sizes or ("1024,4099,8192" if on_gpu else "256,1000,4096")
        args.elements_log2 = args.elements_log2 or (22 if on_gpu else 16)
        args.fp32_elements_log2 = args.fp32_elements_log2 or args.elements_log2
        args.smallm_rows, args.extra_shapes = (1, 8), ()
        args.wall_iters = min(args.wall_iters, 20)
        if not on_gpu:
            args.warmup_ms, args.rep_ms = min(args.warmup_ms, 5), min(args.rep_ms, 20)
    else:
        args.smallm_rows, args.extra_shapes = SMALLM_ROWS, EXTRA_SHAPES
    args.dtypes = args.dtypes or list(DTYPES)
    args.sizes = parse_sizes(args.sizes) if args.sizes else [(None, n) for n in FULL_SIZES]
    args.elements_log2 = args.elements_log2 or 26
    args.fp32_elements_log2 = args.fp32_elements_log2 or 25
    args.copy_gib = args.copy_gib or (2.0 if on_gpu else 0.25)


def plan_jobs(shapes: List[Shape], providers: Sequence[str], compile_dtypes: Sequence[str]):
    """All shapes with the fast providers first; torch.compile (slow to compile) afterwards,
    so that the time budget is spent on fastlayernorm's coverage first."""
    fast = [p for p in providers if p != "compile"]
    jobs = [(s, fast) for s in shapes] if fast else []
    if "compile" in providers:
        jobs += [(s, ["compile"]) for s in shapes if s.dtype_key in compile_dtypes]
    return jobs


def environment(device: torch.device) -> Dict[str, object]:
    env = {"torch": torch.__version__, "python": sys.version.split()[0]}
    try:
        import triton
        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        env["triton"] = None
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        props = torch.cuda.get_device_properties(device)
        env["l2_bytes"] = props.L2_cache_size
        env["memory_peak_gbs"] = round(2 * props.memory_clock_rate * 1e3 * props.memory_bus_width / 8 / 1e9)
        # Which kernel tables fastlayernorm takes: by the card's memory bandwidth, unless
        # forced (csrc/cuda/launch.cuh, fast_memory_card).
        env["fast_memory_tables_forced"] = os.environ.get("FASTLAYERNORM_FAST_MEMORY_TABLES")
    return env


class Interrupted(BaseException):  # not an Exception: per-provider handlers must not swallow it
    """SIGTERM (e.g. from `timeout`): stop starting shapes, keep what was measured."""


def _raise_interrupted(signum, frame):
    raise Interrupted(f"signal {signum}")


def run_jobs(jobs, ctx: Context, data: dict, json_path: Path, start: float) -> None:
    """Runs jobs until done, out of budget, interrupted or the CUDA context breaks; the JSON is
    rewritten after every job so that a killed run still leaves its rows."""
    signal.signal(signal.SIGTERM, _raise_interrupted)
    budget = ctx.args.budget_s
    for i, (shape, names) in enumerate(jobs):
        elapsed = time.perf_counter() - start
        why = (f"CUDA context broken: {ctx.broken}" if ctx.broken
               else f"budget {budget:g} s" if elapsed > budget else None)
        if why is None:
            log(f"[{elapsed:6.1f}s] {i + 1}/{len(jobs)} {shape.label()} ({', '.join(names)})")
            try:
                rows = run_job(shape, names, ctx, ctx.args.seed + i)
            except (KeyboardInterrupt, Interrupted) as exc:
                why = f"interrupted ({type(exc).__name__} {exc})"
        if why is not None:
            data["skipped"] = [f"{s.label()} {'+'.join(n)}" for s, n in jobs[i:]]
            data["stopped"] = why
            log(f"stopping, {why}: {len(jobs) - i} of {len(jobs)} jobs not run")
            break
        data["rows"] += rows
        data["failures"] += [f"{shape.label()}: {r['status']} err_ok={r['err_ok']}" for r in rows
                             if r["provider"] == FLN and (r["status"] != "ok" or r["err_ok"] is False)]
        data["elapsed_s"] = time.perf_counter() - start
        write_json(json_path, data)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def finish(data: dict, baseline_rows: List[dict], png_path: Optional[Path], json_path: Path,
           start: Optional[float]) -> int:
    """Summary, plot, final JSON, and the summary table as the last thing printed."""
    data["summary"] = summarize(data["rows"], baseline_rows)
    data["fwd_bwd_geomean"] = fwd_bwd_geomeans(data["summary"])
    if start is not None:
        data["elapsed_s"] = time.perf_counter() - start
    if png_path is not None:
        data["png_path"] = str(png_path) if plot_results.plot(data, png_path) else None
    data["json_path"] = str(json_path)
    write_json(json_path, data)
    log(f"wrote {json_path}")
    log(summary_text(data))
    return 1 if data["failures"] else 0


def resummarize(path: str, args: argparse.Namespace) -> int:
    """--resummarize: summary, plot and table again from a (possibly cut-short) result JSON."""
    json_path = Path(path)
    data = json.loads(json_path.read_text())
    _, baseline_rows, data["baseline_device"] = load_baseline(args.baseline or data.get("baseline"))
    png_path = None if args.no_plot else json_path.with_suffix(".png")
    return finish(data, baseline_rows, png_path, json_path, None)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.resummarize:
        return resummarize(args.resummarize, args)
    start = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(args.cpu_threads)
    torch.manual_seed(args.seed)
    date = datetime.date.today().isoformat()
    tag = device_tag(device)
    json_path, png_path = output_paths(args, tag, date)
    timer = GPU_TIMER if device.type == "cuda" else "time.perf_counter median (CPU)"
    log(f"device: {device_name(device)} | torch {torch.__version__} | timer: {timer}")

    available, unavailable = probe_providers(args.providers, device)
    for name, reason in unavailable.items():
        log(f"provider {name}: unavailable ({reason})")
    if FLN in unavailable:
        log(f"!!!!!!!! FASTLAYERNORM UNAVAILABLE: {unavailable[FLN]} -- timing peers only")
    providers = [p for p in args.providers if p in available]

    baseline_path, baseline_rows, baseline_device = load_baseline(args.baseline)
    copy = measure_copy(device, int(args.copy_gib * (1 << 30)), args)
    log(f"copy ceiling: {copy['copy_gbs']:.0f} GB/s ({args.copy_gib:g} GiB buffer, read+write)")

    ctx = Context(args, device, copy["copy_gbs"], "fwd" in args.modes, "bwd" in args.modes)
    jobs = plan_jobs(build_shapes(args), providers, args.compile_dtypes)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
    data = {
        "device": device_name(device), "device_tag": tag, **environment(device), "date": date,
        "timer": timer, "note": make_note(args, timer), **copy, "config": config,
        "providers": {"available": list(available), "unavailable": unavailable},
        "baseline": baseline_path, "baseline_device": baseline_device,
        "json_path": str(json_path), "png_path": None,
        "rows": [], "summary": [], "skipped": [], "stopped": None, "failures": [], "elapsed_s": 0.0,
    }
    if FLN in unavailable:
        data["failures"].append(f"fastlayernorm unavailable: {unavailable[FLN]}")
    run_jobs(jobs, ctx, data, json_path, start)
    return finish(data, baseline_rows, None if args.no_plot else png_path, json_path, start)


if __name__ == "__main__":
    sys.exit(main())
