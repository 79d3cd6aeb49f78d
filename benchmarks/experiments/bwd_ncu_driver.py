"""One backward call per shape and output mask inside cudaProfilerStart/Stop,
for Nsight Compute: bf16 rows x N = 2^26, all three gradients, then dx only.

    ncu --profile-from-start off -k regex:ln_bwd_kernel --set full -o bwd \
        python3 benchmarks/experiments/bwd_ncu_driver.py 12288,16384,32768
"""
import sys
import torch
import fastlayernorm  # noqa: F401

ops = torch.ops.fastlayernorm
shapes = [int(s) for s in sys.argv[1].split(",")] if len(sys.argv) > 1 else [16384]
calls = []
for n in shapes:
    rows = 2**26 // n
    x = torch.randn(rows, n, device="cuda", dtype=torch.bfloat16)
    w = (1 + 0.1 * torch.randn(n, device="cuda")).bfloat16()
    b = (0.1 * torch.randn(n, device="cuda")).bfloat16()
    dy = torch.randn_like(x)
    _, pairs = ops._layer_norm_fwd_pairs(x, [n], w, b, 1e-5)  # as autograd saves them
    mean, rstd = pairs[..., 0], pairs[..., 1]
    for mask in ([True, True, True], [True, False, False]):
        calls.append(lambda dy=dy, x=x, n=n, mean=mean, rstd=rstd, w=w, b=b, mask=mask:
                     ops.layer_norm_bwd(dy, x, [n], mean, rstd, w, b, mask))
for c in calls:
    for _ in range(3):
        c()
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStart()
for c in calls:
    c()
torch.cuda.synchronize()
torch.cuda.cudart().cudaProfilerStop()
