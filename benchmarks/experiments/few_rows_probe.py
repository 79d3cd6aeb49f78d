"""Few rows (rows 1/8/64 at N=4096, bf16): where the time of a call goes.

For each provider (fastlayernorm, torch, Liger when importable):
  - triton.testing.do_bench of the forward (requires-grad input) and of the
    autograd backward (retain_graph), the baseline's method
    (../shared/baseline: fwd_ms / bwd_ms);
  - the benchmark's timer (benchmarks.bench_layernorm._cuda_bench_ms: the
    GPU held back while the host enqueues);
  - the kernels one call launches and their GPU durations (torch.profiler).

    python -m benchmarks.experiments.few_rows_probe > probe.txt
"""
import statistics

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from triton.testing import do_bench

import fastlayernorm
from benchmarks.bench_layernorm import _cuda_bench_ms


def providers():
    out = {"fastlayernorm": fastlayernorm.layer_norm, "torch": F.layer_norm}
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
    torch.manual_seed(0)
    n = 4096
    dev = "cuda"
    for rows in (1, 8, 64):
        x = torch.randn(rows, n, device=dev, dtype=torch.bfloat16, requires_grad=True)
        w = (1 + 0.1 * torch.randn(n, device=dev)).to(torch.bfloat16).requires_grad_()
        b = (0.1 * torch.randn(n, device=dev)).to(torch.bfloat16).requires_grad_()
        dy = torch.randn(rows, n, device=dev, dtype=torch.bfloat16)
        for name, f in providers().items():
            fwd = lambda: f(x, (n,), w, b, 1e-5)  # noqa: E731
            y = fwd()
            bwd = lambda: torch.autograd.grad(y, [x, w, b], dy, retain_graph=True)  # noqa: E731
            fwd_db = [do_bench(fwd, return_mode="median") * 1e3 for _ in range(3)]
            bwd_db = [do_bench(bwd, return_mode="median") * 1e3 for _ in range(3)]
            fwd_t = _cuda_bench_ms(fwd, 25, 100) * 1e3
            bwd_t = _cuda_bench_ms(bwd, 25, 100) * 1e3
            print(f"rows={rows:3d} {name:14s} do_bench fwd {statistics.median(fwd_db):7.1f} us "
                  f"bwd {statistics.median(bwd_db):7.1f} us | timer fwd {fwd_t:7.1f} bwd {bwd_t:7.1f}")
            for label, fn in (("fwd", fwd), ("bwd", bwd)):
                ks = kernels(fn)
                total = sum(t for _, t in ks)
                print(f"    {label} kernels ({total:.1f} us): "
                      + "; ".join(f"{k} {t:.1f}" for k, t in ks))


if __name__ == "__main__":
    main()
