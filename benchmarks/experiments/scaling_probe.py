"""Fixed cost per call against streaming rate: times the shipped kernels and a
device-to-device copy of the same bytes at 2^25-2^28 elements.

For each (direction: fwd, bwd, or bwdx = the backward without dweight/dbias;
dtype, N) and total size, the median time of a call
(L2 flushed before each, CUDA events around it, as the benchmark times) and
of `y.copy_(x)` over a tensor of the same bytes as the call moves; a line
t = a + bytes / rate fitted over the sizes gives the fixed cost a per call and
the streaming rate. Printed as a table, written as JSON to --out.

    python benchmarks/experiments/scaling_probe.py --out probe.json
"""
import argparse
import json
import statistics

import torch

import fastlayernorm

ap = argparse.ArgumentParser()
ap.add_argument("--cases", default="fwd:bf16:4096,fwd:bf16:12288,fwd:bf16:16384,"
                "fwd:bf16:32768,fwd:bf16:65536,fwd:bf16:131072,fwd:fp32:12288,"
                "fwd:fp32:32768,bwd:bf16:16384,bwd:bf16:65536")
ap.add_argument("--log2", default="25,26,27,28")
ap.add_argument("--reps", type=int, default=40)
ap.add_argument("--out", default="")
args = ap.parse_args()

DT = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
flush_buf = torch.empty(256 << 20, dtype=torch.int8, device="cuda")


def median_ms(fn, reps):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        flush_buf.zero_()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


results = []
for case in args.cases.split(","):
    direction, dname, n = case.split(":")
    n, dtype = int(n), DT[dname]
    pts = []
    for lg in (int(v) for v in args.log2.split(",")):
        rows = (1 << lg) // n
        g = torch.Generator(device="cuda").manual_seed(lg)
        x = torch.randn(rows, n, device="cuda", dtype=dtype, generator=g)
        w = (1 + 0.1 * torch.randn(n, device="cuda", generator=g)).to(dtype)
        b = (0.1 * torch.randn(n, device="cuda", generator=g)).to(dtype)
        elem = x.element_size()
        if direction == "fwd":
            fn = lambda: torch.ops.fastlayernorm._layer_norm_fwd_pairs(x, [n], w, b, 1e-5)  # noqa: E731
            nbytes = 2 * x.numel() * elem + 2 * n * elem + rows * 8
            copy_elems = 2 * x.numel()  # read + write, as src/dst of half each
        else:  # bwd: dx, dweight, dbias; bwdx: dx only (no partial rows, no finalize)
            y, pairs = torch.ops.fastlayernorm._layer_norm_fwd_pairs(x, [n], w, b, 1e-5)
            mean, rstd = pairs[..., 0], pairs[..., 1]
            dy = torch.randn_like(x)
            mask = [True, direction == "bwd", direction == "bwd"]
            fn = lambda: torch.ops.fastlayernorm.layer_norm_bwd(  # noqa: E731
                dy, x, [n], mean, rstd, w, b, mask)
            nbytes = 3 * x.numel() * elem + 3 * n * elem + rows * 8
            copy_elems = 3 * x.numel()
        src = torch.empty(copy_elems // 2, dtype=dtype, device="cuda").normal_()
        dst = torch.empty_like(src)
        t = median_ms(fn, args.reps)
        tc = median_ms(lambda: dst.copy_(src), args.reps)
        pts.append({"log2": lg, "rows": rows, "bytes": nbytes, "ms": t, "copy_ms": tc,
                    "copy_bytes": 2 * src.numel() * elem})
        del x, w, b, src, dst
        torch.cuda.empty_cache()
    # Least squares t = a + bytes * c over the sizes (each timing over the bytes it moves).
    for key, bkey in (("ms", "bytes"), ("copy_ms", "copy_bytes")):
        xs = [p[bkey] for p in pts]
        ys = [p[key] for p in pts]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        c = sum((xi - mx) * (yi - my) for xi, yi in zip(xs, ys)) / sum((xi - mx) ** 2 for xi in xs)
        a = my - c * mx
        pts_fit = {"fixed_us": a * 1e3, "rate_GBps": 1e-6 / c}
        results.append({"case": case, "what": key, **pts_fit, "points": pts})
        print(f"{case:18s} {key:8s} fixed {a * 1e3:6.2f} us  rate {1e-6 / c:7.1f} GB/s  "
              + "  ".join(f"2^{p['log2']}: {p[bkey] / p[key] * 1e-6:6.1f}" for p in pts),
              flush=True)
    for p in pts:
        print(f"   2^{p['log2']}: call / same-bytes copy = {p['copy_ms'] / p['ms'] * 100:5.1f}%")

if args.out:
    with open(args.out, "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "results": results}, f, indent=1)
