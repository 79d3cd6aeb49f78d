"""A few forward/backward calls for Nsight Compute (`ncu -k regex:ln_`):
one shape per kernel family, bf16, 2^26 elements."""
import sys

import torch

import fastlayernorm  # noqa: F401

ops = torch.ops.fastlayernorm
for n in [int(a) for a in sys.argv[1:]] or [4096, 16384]:
    rows = 2**26 // n
    x = torch.randn(rows, n, device="cuda", dtype=torch.bfloat16)
    w = 1 + 0.1 * torch.randn(n, device="cuda", dtype=torch.bfloat16)
    b = 0.1 * torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn_like(x)
    y, pairs = ops._layer_norm_fwd_pairs(x, [n], w, b, 1e-5)  # as autograd saves them
    mean, rstd = pairs[..., 0], pairs[..., 1]
    ops.layer_norm_bwd(dy, x, [n], mean, rstd, w, b, [True, True, True])
    torch.cuda.synchronize()
