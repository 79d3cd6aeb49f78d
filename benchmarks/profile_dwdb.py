"""Where the backward's dweight/dbias time goes, per shape: the kernel timeline
(torch.profiler, i.e. CUPTI) of the backward op with all three gradients and
with dx only.

    python benchmarks/profile_dwdb.py OUT.json            # GPU needed

For each shape (rows x N = 2^26 elements, 2^25 for float32), median of 10
calls, L2 flushed before each:
  bwd_us                     the backward kernel with its dweight/dbias
                             accumulators and partial rows
  bwd_dx_only_us             the same kernel without them (output mask
                             [True, False, False]: no partial rows, no finalize)
  finalize_us                the finalize kernel's duration; it is a
                             programmatic dependent launch, so it starts before
                             the backward kernel ends and waits in the kernel
  finalize_end_after_bwd_us  how long after the backward kernel's end the
                             finalize kernel ends: its cost on the critical path
"""
import json
import os
import statistics
import sys
import tempfile

import torch

import fastlayernorm  # noqa: F401

SHAPES = [("bf16", 1024), ("bf16", 4096), ("bf16", 8192), ("bf16", 12288), ("bf16", 16384),
          ("bf16", 32768), ("bf16", 65536), ("bf16", 131072), ("fp32", 4096), ("fp32", 12288),
          ("fp32", 65536)]
CALLS = 10


def kernel_events(prof) -> list:
    """The CUDA kernel events of a finished profile, in start order."""
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = [e for e in json.load(f)["traceEvents"] if e.get("cat") == "kernel"]
    finally:
        os.remove(path)
    return sorted(events, key=lambda e: e["ts"])


def profile_shape(dtype_name: str, n: int, flush: torch.Tensor) -> dict:
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    rows = (2**26 if dtype_name == "bf16" else 2**25) // n
    ops = torch.ops.fastlayernorm
    x = torch.randn(rows, n, device="cuda", dtype=dtype)
    w = 1 + 0.1 * torch.randn(n, device="cuda", dtype=dtype)
    b = 0.1 * torch.randn(n, device="cuda", dtype=dtype)
    dy = torch.randn_like(x)
    _, pairs = ops._layer_norm_fwd_pairs(x, [n], w, b, 1e-5)  # as autograd saves them
    mean, rstd = pairs[..., 0], pairs[..., 1]

    def call(mask):
        return ops.layer_norm_bwd(dy, x, [n], mean, rstd, w, b, mask)

    for _ in range(3):
        call([True, True, True])
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for mask in ([True, True, True], [True, False, False]):
            for _ in range(CALLS):
                flush.zero_()
                call(mask)
            torch.cuda.synchronize()
    events = kernel_events(prof)
    bwd, fin, after, dx_only = [], [], [], []
    for i, e in enumerate(events):
        if "ln_bwd_kernel" not in e["name"]:
            continue
        nxt = events[i + 1] if i + 1 < len(events) else None
        if nxt is not None and "finalize" in nxt["name"]:
            bwd.append(e["dur"])
            fin.append(nxt["dur"])
            after.append(nxt["ts"] + nxt["dur"] - (e["ts"] + e["dur"]))
        else:
            dx_only.append(e["dur"])

    def med(v):
        return round(statistics.median(v), 2) if v else None

    return dict(dtype=dtype_name, N=n, rows=rows, bwd_us=med(bwd), finalize_us=med(fin),
                finalize_end_after_bwd_us=med(after), bwd_dx_only_us=med(dx_only),
                bwd_name=next((e["name"][:200] for e in events if "ln_bwd" in e["name"]), None))


def main(out_path: str) -> None:
    flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    results = []
    for dtype_name, n in SHAPES:
        r = profile_shape(dtype_name, n, flush)
        print(json.dumps(r), flush=True)
        results.append(r)
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
