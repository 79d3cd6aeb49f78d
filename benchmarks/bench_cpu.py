"""CPU speed check: fastlayernorm's CPU kernels against torch's own CPU LayerNorm.

Run from the repository root (after building the extension)::

    python benchmarks/bench_cpu.py                    # 8192x4096, float32 and bfloat16
    python benchmarks/bench_cpu.py --rows 1024 --cols 1000 --dtypes fp32 --threads 1

For each dtype it times, in the same process and with the same thread count
(``torch.get_num_threads()``, or ``--threads``):

* forward: ``torch.ops.fastlayernorm._layer_norm_fwd_pairs`` (the forward the
  autograd path runs: ``layer_norm_fwd`` with mean/rstd as (mean, rstd) pairs) against
  ``torch.nn.functional.layer_norm``, both called under ``torch.no_grad()``;
* backward: ``torch.ops.fastlayernorm.layer_norm_bwd`` against
  ``torch.ops.aten.native_layer_norm_backward``, both direct op calls with the
  same grad_out / input / weight / bias, all three gradients (each with the
  mean / rstd its own forward saved: torch keeps them in bf16/fp16 for bf16/fp16
  input, fastlayernorm in float32).

Each number is the median of ``--reps`` timed calls after ``--warmup`` calls,
the two sides alternating call by call (fair under a changing machine load);
the ratio is fastlayernorm / torch (the issue asks for <= 1.5).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `fastlayernorm` importable from python/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

import torch
import torch.nn.functional as F

import fastlayernorm  # noqa: F401  (registers torch.ops.fastlayernorm)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
EPS = 1e-5


def median_times(fns, warmup: int, reps: int):
    """Median wall time in seconds of each fn() in fns. The calls alternate
    (fn0, fn1, fn0, fn1, ...) so that a change in the machine's load during the
    measurement hits all of them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def bench(rows: int, cols: int, dtype: torch.dtype, warmup: int, reps: int):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, cols, generator=gen).to(dtype)
    w = (1 + 0.1 * torch.randn(cols, generator=gen)).to(dtype)
    b = (0.1 * torch.randn(cols, generator=gen)).to(dtype)
    dy = torch.randn(rows, cols, generator=gen).to(dtype)
    shape = [cols]
    fln = torch.ops.fastlayernorm
    with torch.no_grad():
        t_fwd_fln, t_fwd_ref = median_times(
            [lambda: fln._layer_norm_fwd_pairs(x, shape, w, b, EPS), lambda: F.layer_norm(x, shape, w, b, EPS)],
            warmup, reps)
        # Each backward gets the statistics its own forward saved: the same values,
        # but torch's CPU kernel keeps them in the input dtype for bf16/fp16
        # while fastlayernorm keeps them in float32.
        _, pairs = fln._layer_norm_fwd_pairs(x, shape, w, b, EPS)  # as autograd saves them
        mean, rstd = pairs[..., 0], pairs[..., 1]
        _, mean_ref, rstd_ref = torch.ops.aten.native_layer_norm(x, shape, w, b, EPS)
        mask = [True, True, True]
        t_bwd_fln, t_bwd_ref = median_times(
            [lambda: fln.layer_norm_bwd(dy, x, shape, mean, rstd, w, b, mask),
             lambda: torch.ops.aten.native_layer_norm_backward(
                 dy, x, shape, mean_ref, rstd_ref, w, b, mask)],
            warmup, reps)
    return t_fwd_fln, t_fwd_ref, t_bwd_fln, t_bwd_ref


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8192)
    p.add_argument("--cols", type=int, default=4096)
    p.add_argument("--dtypes", default="fp32,bf16", help="comma list of " + ",".join(DTYPES))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as set)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"{args.rows}x{args.cols}, threads={torch.get_num_threads()}, "
          f"torch {torch.__version__} (cpu capability {torch.backends.cpu.get_cpu_capability()})")
    print(f"{'dtype':<6} {'fwd fln ms':>10} {'fwd torch':>10} {'ratio':>6}   "
          f"{'bwd fln ms':>10} {'bwd torch':>10} {'ratio':>6}")
    for key in args.dtypes.split(","):
        ff, fr, bf, br = bench(args.rows, args.cols, DTYPES[key.strip()], args.warmup, args.reps)
        print(f"{key:<6} {ff * 1e3:10.2f} {fr * 1e3:10.2f} {ff / fr:6.2f}   "
              f"{bf * 1e3:10.2f} {br * 1e3:10.2f} {bf / br:6.2f}")


if __name__ == "__main__":
    main()
