"""Forward (and optionally backward) kernels of fastlayernorm and its peers,
one call each inside a cudaProfilerStart/Stop range, for Nsight Compute:

    ncu --profile-from-start off --section SpeedOfLight --section Occupancy \\
        python3 benchmarks/ncu_compare.py --sizes 1024,4096 [--bwd]

Everything is compiled and warmed up before the range, so only the timed
kernels are profiled (torch.compile's on an input without grad: one kernel).
With --train the inputs require grad and only the forward runs: the kernels
of a training step's forward, which store mean/rstd for the backward
(torch.compile's training graph saves them too).
"""
import argparse

import torch
import torch.nn.functional as F

import fastlayernorm

ap = argparse.ArgumentParser()
ap.add_argument("--sizes", default="1024,4096")
ap.add_argument("--dtype", default="bfloat16")
ap.add_argument("--elements-log2", type=int, default=26)
ap.add_argument("--bwd", action="store_true")
ap.add_argument("--train", action="store_true",
                help="inputs requiring grad, forward only (the forward of a training step)")
args = ap.parse_args()

providers = {"fastlayernorm": fastlayernorm.layer_norm}
try:
    from liger_kernel.ops.layer_norm import LigerLayerNormFunction

    providers["liger"] = lambda x, shape, w, b, eps: LigerLayerNormFunction.apply(x, w, b, eps)
except Exception as exc:  # noqa: BLE001
    print("liger not importable:", exc)
compiled = torch.compile(F.layer_norm, dynamic=False)
providers["compile"] = compiled

dtype = getattr(torch, args.dtype)
calls = []
for n in (int(s) for s in args.sizes.split(",")):
    rows = 2**args.elements_log2 // n
    grad = args.bwd or args.train
    x = torch.randn(rows, n, device="cuda", dtype=dtype, requires_grad=grad)
    w = (1 + 0.1 * torch.randn(n, device="cuda")).to(dtype).requires_grad_(grad)
    b = (0.1 * torch.randn(n, device="cuda")).to(dtype).requires_grad_(grad)
    dy = torch.randn(rows, n, device="cuda", dtype=dtype)
    for name, fn in providers.items():
        def call(fn=fn, x=x, w=w, b=b, dy=dy, n=n):
            y = fn(x, (n,), w, b, 1e-5)
            if args.bwd:
                torch.autograd.grad(y, (x, w, b), dy)
        for _ in range(3):
            call()
        calls.append((name, n, call))
torch.cuda.synchronize()

torch.cuda.cudart().cudaProfilerStart()
for name, n, call in calls:
    torch.cuda.nvtx.range_push(f"{name} N={n}")
    call()
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_pop()
torch.cuda.cudart().cudaProfilerStop()
print("profiled:", [(name, n) for name, n, _ in calls])
