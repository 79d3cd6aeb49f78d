"""Few rows (rows 1/8/64 at N=4096, bf16, or --rows / --ns / --dtype): where the time of a
call goes.

For each provider (fastlayernorm, torch, torch.compile unless --no-compile, Liger when
importable; --providers picks some):
  - triton.testing.do_bench of the forward (requires-grad input) and of the
    autograd backward (retain_graph), the baseline's method
    (../shared/baseline: fwd_ms / bwd_ms);
  - the benchmark's timer (benchmarks.bench_layernorm._cuda_bench_ms: the
    GPU held back while the host enqueues);
  - the kernels one call launches and their GPU durations (torch.profiler).

    python -m benchmarks.experiments.few_rows_probe > probe.txt
    python -m benchmarks.experiments.few_rows_probe --providers fastlayernorm \
        --rows 1,8,64,128 --ns 1024,4096,8192 --no-do-bench
"""
import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from triton.testing import do_bench

import fastlayernorm
from benchmarks.bench_layernorm import _compile, _cuda_bench_ms


def providers(with_compile: bool):
    out = {"fastlayernorm": fastlayernorm.layer_norm, "torch": F.layer_norm}
    if with_compile:
        compiled = _compile(torch.device("cuda"))
        out["compile"] = lambda x, shape, w, b, eps: compiled(x, w, b, eps)
    try:
        from liger_kernel.ops.layer_norm import LigerLayerNormFunction

        out["liger"] = lambda x, shape, w, b, eps: LigerLayerNormFunction.apply(x, w, b, eps)
    except Exception as exc:  # noqa: BLE001
        print(f"liger: not importable ({type(exc).__name__})")
    return out


def kernels(fn):
    """(name, GPU microseconds) of the kernels one call of fn launches."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [(e.name[:70], e.device_time) for e in prof.events()
            if e.device_time > 0 and e.device_type == torch.autograd.DeviceType.CUDA]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,8,64")
    ap.add_argument("--ns", default="4096")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--providers", default="", help="comma-separated subset (default: all)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-do-bench", action="store_true", help="the benchmark's timer only")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = "cuda"
    dtype = getattr(torch, args.dtype)
    provs = providers(not args.no_compile)
    if args.providers:
        keep = args.providers.split(",")
        provs = {k: v for k, v in provs.items() if k in keep}
    print(f"# {torch.cuda.get_device_name()}, fastlayernorm from {fastlayernorm.__file__}, {args.dtype}")
    for n in (int(v) for v in args.ns.split(",")):
        for rows in (int(v) for v in args.rows.split(",")):
            x = torch.randn(rows, n, device=dev, dtype=dtype, requires_grad=True)
            w = (1 + 0.1 * torch.randn(n, device=dev)).to(dtype).requires_grad_()
            b = (0.1 * torch.randn(n, device=dev)).to(dtype).requires_grad_()
            dy = torch.randn(rows, n, device=dev, dtype=dtype)
            for name, f in provs.items():
                fwd = lambda: f(x, (n,), w, b, 1e-5)  # noqa: E731
                y = fwd()
                bwd = lambda: torch.autograd.grad(y, [x, w, b], dy, retain_graph=True)  # noqa: E731
                line = f"N={n:5d} rows={rows:4d} {name:14s} "
                if not args.no_do_bench:
                    fwd_db = [do_bench(fwd, return_mode="median") * 1e3 for _ in range(3)]
                    bwd_db = [do_bench(bwd, return_mode="median") * 1e3 for _ in range(3)]
                    line += (f"do_bench fwd {statistics.median(fwd_db):7.1f} us "
                             f"bwd {statistics.median(bwd_db):7.1f} us | ")
                fwd_t = _cuda_bench_ms(fwd, 25, 100) * 1e3
                bwd_t = _cuda_bench_ms(bwd, 25, 100) * 1e3
                print(line + f"timer fwd {fwd_t:7.1f} bwd {bwd_t:7.1f}")
                for label, fn in (("fwd", fwd), ("bwd", bwd)):
                    ks = kernels(fn)
                    total = sum(t for _, t in ks)
                    print(f"    {label} kernels ({total:.1f} us): "
                          + "; ".join(f"{k} {t:.1f}" for k, t in ks))


if __name__ == "__main__":
    main()
