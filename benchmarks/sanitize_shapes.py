"""Runs the CUDA forward and backward kernels once over the test shapes, small
enough for compute-sanitizer (memcheck, racecheck, synccheck): every kernel
variant family (lane groups, whole-CTA rows, clusters, unaligned scalar rows,
fallback, float64) is touched, and results are checked against float64.
`--register-accumulators` runs only the backward entries of session 25,
`--fast-memory-forward` the forward entries of sessions 26-27 and
`--shared-accumulators` the backward entries of session 28, `--short-rows` the
forward's short-row kernel of session 29, `--unrecorded` the forward that stores no
statistics (session 29, below) and `--l2-prefetch` the entries that prefetch rows into L2
(session 31)."""
import sys

import torch

import fastlayernorm

ops = torch.ops.fastlayernorm


def rel(a, b):
    # N=1 gives x_hat = 0 exactly: dx and dweight are rounding noise around 0.
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-6)).item()


def reference(x, w, b, dy, n):
    """float64 CPU layer_norm of x and its gradients for dy: (y, dx, dweight, dbias)."""
    xd, wd, bd = (t.detach().double().cpu().requires_grad_(True) for t in (x, w, b))
    y = torch.nn.functional.layer_norm(xd, [n], wd, bd, 1e-5)
    y.backward(dy.double().cpu())
    return y.detach(), xd.grad, wd.grad, bd.grad


def check(rows, n, dtype, wdtype, offset=0):
    g = torch.Generator(device="cuda").manual_seed(rows * 7919 + n)
    base = torch.randn(rows * n + offset, device="cuda", dtype=dtype, generator=g)
    x = base[offset:].view(rows, n)
    w = (1 + 0.1 * torch.randn(n, device="cuda", generator=g)).to(wdtype)
    b = (0.1 * torch.randn(n, device="cuda", generator=g)).to(wdtype)
    dy = torch.randn(rows, n, device="cuda", dtype=dtype, generator=g)
    # The statistics as the autograd Functions save them: the columns of one
    # tensor of (mean, rstd) pairs, which the backward reads in place.
    y, pairs = ops._layer_norm_fwd_pairs(x, [n], w, b, 1e-5)
    mean, rstd = pairs[..., 0], pairs[..., 1]
    dx, dw, db = ops.layer_norm_bwd(dy, x, [n], mean, rstd, w, b, [True, True, True])
    ops.layer_norm_bwd_from_output(dy, y, [n], rstd, w, b, [True, True, True])
    ops.layer_norm_bwd(dy, x, [n], mean, rstd, None, None, [True, False, False])
    # layer_norm_fwd: mean and rstd as tensors of their own (copied from the pairs).
    y2, mean2, rstd2 = ops.layer_norm_fwd(x, [n], w, b, 1e-5)
    torch.cuda.synchronize()
    if not (torch.equal(y2, y) and torch.equal(mean2, mean) and torch.equal(rstd2, rstd)):
        print(f"FAIL rows={rows} n={n} {dtype}: layer_norm_fwd differs from _layer_norm_fwd_pairs",
              flush=True)
        return False
    tol = 1e-5 if dtype in (torch.float32, torch.float64) else 1e-2
    errs = [rel(a.cpu(), e) for a, e in zip((y, dx, dw, db), reference(x, w, b, dy, n))]
    status = "ok" if all(e <= tol for e in errs) else "FAIL"  # NaN fails
    print(f"{status} rows={rows} n={n} {dtype} w={wdtype} offset={offset} errs={['%.1e' % e for e in errs]}", flush=True)
    return status == "ok"


def check_shapes(shapes):
    """check() over (rows, n, dtype, wdtype) tuples, every one of them run: True if all
    pass."""
    results = [check(rows, n, dtype, wdtype) for rows, n, dtype, wdtype in shapes]
    return all(results)


def main():
    ok = True
    for n in (1, 7, 64, 127, 768, 1000, 1024, 1536, 2048, 3072, 4096, 4099, 5120, 6144, 6147,
              8192, 12288, 16384, 65537, 131072, 262144, 600000):
        rows = 3 if n > 8192 else 17
        ok &= check(rows, n, torch.bfloat16, torch.bfloat16)
        if n <= 8192:
            ok &= check(rows, n, torch.float32, torch.float32)
            ok &= check(rows, n, torch.float16, torch.float32, offset=1)
            ok &= check(rows, n, torch.float64, torch.float64)
    # Backward entries whose CTA groups add their partials in clusters: more
    # rows than resident CTA groups (aligned rows; shifted rows on the same
    # entries run without partial groups, N=6147 above).
    ok &= check(600, 5000, torch.bfloat16, torch.bfloat16)
    ok &= check(600, 8192, torch.float16, torch.float16)
    ok &= check(280, 12288, torch.bfloat16, torch.bfloat16)
    ok &= check(200, 16384, torch.float16, torch.float32)
    # Backward entries that load the next row while finishing one
    # (prefetch_row): more rows than resident CTAs, and the last row's
    # "next" past the end.
    ok &= check(600, 2048, torch.bfloat16, torch.bfloat16)
    ok &= check(600, 2048, torch.float32, torch.float32)
    ok &= check(601, 3072, torch.float16, torch.float16)
    ok &= check(600, 5000, torch.float16, torch.float32)
    ok &= check(599, 6144, torch.bfloat16, torch.float32)
    ok &= check(5, 16384, torch.float32, torch.float32)
    ok &= check(5, 32768, torch.float32, torch.float32)
    ok &= check(3, 65536, torch.float32, torch.float32)
    # ... with the weight in shared memory (long rows, clusters): more rows
    # than resident clusters.
    ok &= check(70, 32768, torch.bfloat16, torch.bfloat16)
    ok &= check(20, 65536, torch.float16, torch.float32)
    ok &= check(20, 65536, torch.float32, torch.float32)
    ok &= check(10, 131072, torch.bfloat16, torch.bfloat16)
    # Forward entries that load the next row while finishing one, on clusters
    # (statistics merged through mbarriers): more rows than resident
    # clusters, shifted rows too.
    ok &= check(140, 16383, torch.bfloat16, torch.bfloat16)
    ok &= check(40, 24575, torch.float32, torch.float32)
    # Entries that fit their row exactly (48-byte threads, float32 128-byte
    # threads) and shifted rows of one-row entries, which run on persistent
    # grids (more rows than CTA groups: the loop).
    for n, dtype in ((767, torch.bfloat16), (1535, torch.bfloat16), (3071, torch.bfloat16),
                     (3071, torch.float32), (6143, torch.float32), (12288, torch.float32),
                     (12287, torch.float32), (14335, torch.float32)):
        ok &= check(40, n, dtype, dtype)
    # Shifted rows whose weight/bias chunks are funnel-shifted from the
    # aligned words (16- and 32-byte packs) and whose partial chunks are read
    # whole from the aligned grid: register kernels, the row-in-shared-memory
    # one-pass and cluster kernels. With PYTORCH_NO_CUDA_MEMORY_CACHING=1 each
    # tensor is its own allocation, so memcheck sees any read past its end.
    for n, dtype, wdtype in ((767, torch.bfloat16, torch.float32), (4099, torch.bfloat16, torch.float32),
                             (5001, torch.float16, torch.float16), (8191, torch.bfloat16, torch.bfloat16),
                             (12287, torch.bfloat16, torch.float32), (32767, torch.float32, torch.float32),
                             (65535, torch.bfloat16, torch.float32)):
        ok &= check(40 if n <= 16384 else 3, n, dtype, wdtype)
    # The forward entries of cards of faster memory (kernel_config.h): 16-bit
    # N = 33-64 on one-pass CTAs of 32 rows (a partial last CTA), 16-bit rows
    # of N = 1537-2047 on a persistent grid (more rows than one round of it),
    # N = 2048 on the exact kernel beside it; float32 N = 513-1023 and
    # 1025-2047 beside the exact kernels of N = 1024 and 2048.
    for n, dtype, wdtype in ((40, torch.bfloat16, torch.bfloat16), (64, torch.float16, torch.float32),
                             (64, torch.bfloat16, torch.bfloat16), (768, torch.float32, torch.float32),
                             (1000, torch.float32, torch.float32), (1024, torch.float32, torch.float32),
                             (1600, torch.float32, torch.float32), (2048, torch.float32, torch.float32),
                             (2048, torch.bfloat16, torch.bfloat16)):
        ok &= check(45, n, dtype, wdtype)
    ok &= check(2200, 1544, torch.bfloat16, torch.bfloat16)
    ok &= check(2200, 2040, torch.float16, torch.float16)
    # 16-bit kernels for any N without a branch per chunk (forward.cuh
    # kBranchFree: predicated loads, chunks past the row end computed and not
    # stored), and the 24 KiB forward entries of cards of faster memory
    # (16-bit N = 8193-12288, float32 5121-6144: clusters loading their next
    # row ahead; more rows than resident clusters).
    ok &= check_shapes(((45, 1000, torch.bfloat16, torch.bfloat16),
                        (45, 1600, torch.float16, torch.float16),
                        (45, 2560, torch.float16, torch.float32),
                        (45, 5000, torch.bfloat16, torch.bfloat16),
                        (300, 8200, torch.bfloat16, torch.bfloat16),
                        (300, 10000, torch.bfloat16, torch.float32),
                        (300, 12288, torch.float16, torch.float16),
                        (300, 5124, torch.float32, torch.float32),
                        (300, 6144, torch.float32, torch.float32)))
    # The shifted-row entries of cards of faster memory (kernel_config.h
    # k*ShiftedChanges*FastMemory): persistent grids staging a row or loading
    # the next one ahead, more rows than one round of CTAs.
    for n, dtype, wdtype in ((767, torch.bfloat16, torch.bfloat16), (2047, torch.float16, torch.float32),
                             (3071, torch.bfloat16, torch.bfloat16), (4099, torch.bfloat16, torch.float32),
                             (6143, torch.float16, torch.float16), (8191, torch.bfloat16, torch.bfloat16),
                             (10001, torch.bfloat16, torch.bfloat16), (12287, torch.float16, torch.float32),
                             (767, torch.float32, torch.float32), (1535, torch.float32, torch.float32),
                             (3071, torch.float32, torch.float32), (4099, torch.float32, torch.float32),
                             (4157, torch.float32, torch.float32), (5119, torch.float32, torch.float32),
                             (6143, torch.float32, torch.float32), (8191, torch.float32, torch.float32),
                             (12287, torch.float32, torch.float32)):
        ok &= check(600, n, dtype, wdtype)
    # 16-bit rows with float32 weights on the row-in-shared-memory kernels.
    ok &= check(3, 16384, torch.bfloat16, torch.float32)
    ok &= check(3, 131072, torch.bfloat16, torch.float32)
    # Clusters of 16 CTAs (512 KiB-1 MiB rows; a shifted 16-bit row among
    # them) and the float32 backward's 64-byte long-row entries.
    for n, dtype in ((32768, torch.float32), (131072, torch.float32), (262144, torch.float32),
                     (200001, torch.bfloat16), (524288, torch.bfloat16)):
        ok &= check(3, n, dtype, dtype)
    ok &= check_register_accumulator_entries()
    ok &= check_forward_fast_memory_entries()
    ok &= check_shared_accumulator_entries()
    ok &= check_short_row_entries()
    ok &= check_unrecorded_forward()
    ok &= check_l2_prefetching_entries()
    print("ALL OK" if ok else "SOME FAILED", flush=True)


def check_unrecorded_forward():
    """The forward of a call no graph records (session 29: under torch.no_grad the op
    runs below autograd and its CUDA kernels store no mean/rstd, null pointers) over
    each kernel family: bitwise the output of layer_norm_fwd, which stores them."""
    ok = True
    for rows, n, dtype, wdtype in ((300, 64, torch.float32, torch.float32),
                                   (301, 768, torch.bfloat16, torch.bfloat16),
                                   (300, 768, torch.float16, torch.float32),
                                   (45, 1000, torch.bfloat16, torch.bfloat16),
                                   (40, 4099, torch.bfloat16, torch.float32),
                                   (300, 12288, torch.float16, torch.float16),
                                   (10, 131072, torch.bfloat16, torch.bfloat16),
                                   (3, 600000, torch.bfloat16, torch.bfloat16),
                                   (17, 1000, torch.float64, torch.float64)):
        g = torch.Generator(device="cuda").manual_seed(rows * 31 + n)
        x = torch.randn(rows, n, device="cuda", dtype=dtype, generator=g)
        w = (1 + 0.1 * torch.randn(n, device="cuda", generator=g)).to(wdtype)
        b = (0.1 * torch.randn(n, device="cuda", generator=g)).to(wdtype)
        with torch.no_grad():
            y = fastlayernorm.layer_norm(x, [n], w, b, 1e-5)
        y_ref = ops.layer_norm_fwd(x, [n], w, b, 1e-5)[0]
        torch.cuda.synchronize()
        good = torch.equal(y, y_ref)
        print(f"{'ok' if good else 'FAIL'} unrecorded rows={rows} n={n} {dtype} w={wdtype}", flush=True)
        ok &= good
    return ok


def check_short_row_entries():
    """The forward's short-row kernel (session 29, forward_short_rows.cuh: rows within a
    warp, weight/bias in registers) at each of its entries: 16-bit N = 768 with float32
    weights (persistent, two rows ahead) and with weights of their dtype (one pass);
    more rows than one round of the persistent grids and a partial last round, one row,
    and row counts that leave CTAs or row slots without rows. Also float32 N = 64 and
    128, exact-row entries of one-pass 64-byte threads since session 30 (v36 took the
    short-row kernel for N = 64)."""
    return check_shapes(((20001, 64, torch.float32, torch.float32),
                         (1, 64, torch.float32, torch.float32),
                         (20003, 128, torch.float32, torch.float32),
                         (3, 128, torch.float32, torch.float32),
                         (5001, 768, torch.bfloat16, torch.float32),
                         (4003, 768, torch.float16, torch.float32),
                         (2, 768, torch.bfloat16, torch.float32),
                         (3001, 768, torch.bfloat16, torch.bfloat16),
                         (3, 768, torch.float16, torch.float16)))


def check_register_accumulator_entries():
    """The 16-bit backward entries of cards of faster memory whose 32-byte threads keep
    dweight/dbias in registers while loading the next row (session 25): one-row CTAs (3
    KiB rows), two-row CTAs (4-8 KiB), clusters of two (10 and 12-32 KiB), eight (32-128
    KiB) and sixteen (256 KiB), the weight in registers or shared memory; more rows than
    one round of CTAs (clusters), an odd number of them; and autocast's float32 output
    gradient (G = float)."""
    ok = check_shapes(((700, 1536, torch.float16, torch.float16),
                       (701, 1400, torch.bfloat16, torch.float32),
                       (600, 2000, torch.bfloat16, torch.bfloat16),
                       (601, 2048, torch.float16, torch.float32),
                       (600, 4096, torch.bfloat16, torch.bfloat16),
                       (601, 3500, torch.float16, torch.float32),
                       (301, 5000, torch.float16, torch.float16),
                       (300, 5120, torch.bfloat16, torch.bfloat16),
                       (301, 8192, torch.bfloat16, torch.bfloat16),
                       (300, 7000, torch.float16, torch.float32),
                       (151, 16384, torch.float16, torch.float16),
                       (150, 16000, torch.bfloat16, torch.float32),
                       (41, 32768, torch.float16, torch.float16),
                       (40, 30000, torch.bfloat16, torch.float32),
                       (41, 65536, torch.bfloat16, torch.float32),
                       (17, 131072, torch.bfloat16, torch.float32)))
    for rows, n, dtype in ((301, 8192, torch.bfloat16), (41, 32768, torch.float16)):
        g = torch.Generator(device="cuda").manual_seed(rows + n)
        x = torch.randn(rows, n, device="cuda", generator=g).to(dtype).requires_grad_(True)
        w = (1 + 0.1 * torch.randn(n, device="cuda", generator=g)).requires_grad_(True)
        b = (0.1 * torch.randn(n, device="cuda", generator=g)).requires_grad_(True)
        with torch.autocast("cuda", dtype=dtype):
            y = fastlayernorm.layer_norm(x, [n], w, b, 1e-5)
        dy = torch.randn(rows, n, device="cuda", generator=g)
        dx, dw, db = torch.autograd.grad(y, [x, w, b], dy)
        torch.cuda.synchronize()
        errs = [rel(a.cpu(), e) for a, e in zip((dx, dw, db), reference(x, w, b, dy, n)[1:])]
        good = errs[0] <= 1e-2 and errs[1] <= 1e-5 and errs[2] <= 1e-5
        print(f"{'ok' if good else 'FAIL'} autocast rows={rows} n={n} {dtype} errs={['%.1e' % e for e in errs]}",
              flush=True)
        ok &= good
    return ok


def check_forward_fast_memory_entries():
    """The forward entries of cards of faster memory of sessions 26-27: 16-bit N = 2049-3072
    one-pass at 1024 threads per SM, 16-bit N = 4097-6144 on the kernels for any N also
    where a row fills the mapping (branch-free: chunks past the row end loaded as zeros
    and not stored), float32 N = 4097-5120 on clusters of four loading their next row
    ahead (more rows than resident clusters); 16-bit N = 131073-262144 and float32
    16385-65536 on clusters of 128-byte threads, 16-bit N = 8192 on the kernel for any N
    (N = 768 until session 29, since on the short-row kernel), 16-bit N = 129-256 on CTAs
    of 8 rows."""
    return check_shapes(((300, 2056, torch.bfloat16, torch.bfloat16),
                         (301, 2944, torch.float16, torch.float32),
                         (300, 3072, torch.bfloat16, torch.bfloat16),
                         (300, 4104, torch.float16, torch.float16),
                         (301, 5120, torch.bfloat16, torch.bfloat16),
                         (300, 5128, torch.bfloat16, torch.float32),
                         (301, 6144, torch.float16, torch.float16),
                         (600, 4100, torch.float32, torch.float32),
                         (601, 5000, torch.float32, torch.float32),
                         (600, 5120, torch.float32, torch.float32),
                         # session 27: 16-bit rows of 256-512 KiB and float32
                         # rows of 64-256 KiB on clusters of 128-byte threads
                         # (more rows than resident clusters), the kernel for
                         # any N at exact 16-bit N = 8192 (and at 768 until
                         # session 29; since, its one-pass short-row kernel)
                         (40, 262144, torch.bfloat16, torch.bfloat16),
                         (17, 200000, torch.float16, torch.float32),
                         (130, 32768, torch.float32, torch.float32),
                         (37, 65536, torch.float32, torch.float32),
                         (301, 768, torch.float16, torch.float16),
                         (131, 8192, torch.bfloat16, torch.bfloat16),
                         # 16-bit N = 129-256 on CTAs of 8 rows
                         (1001, 200, torch.bfloat16, torch.float32),
                         (999, 256, torch.float16, torch.float16)))


def check_shared_accumulator_entries():
    """The backward entries of cards of faster memory of session 28 (16-bit weights):
    accumulators in shared memory on clusters of two 192-thread CTAs, two per SM (N =
    8193-12288), and for bfloat16 on clusters of eight 128-thread CTAs, three per SM (N =
    16385-32768); more rows than resident clusters."""
    return check_shapes(((300, 12288, torch.bfloat16, torch.bfloat16),
                         (265, 10000, torch.float16, torch.float16),
                         (100, 32768, torch.bfloat16, torch.bfloat16),
                         (60, 20000, torch.bfloat16, torch.bfloat16)))


def check_l2_prefetching_entries():
    """The entries whose rows of exactly their mapping's size also prefetch the row two
    ahead into L2 on cards of faster memory (sessions 31-32: the 16-bit forward with weights
    of the rows' dtype at N = 12288 / 16384 / 32768 / 65536, the 12288 one for those rows
    alone, the float32 forward at N = 16384 for those rows alone, the 16-bit backward at
    N = 4096 / 8192, fp16 also 5120):
    more rows than two rounds of the persistent grids, so the prefetched row is in the
    tensor for some CTA groups and past its end for others."""
    return check_shapes(((600, 4096, torch.bfloat16, torch.bfloat16),
                         (601, 4096, torch.float16, torch.float32),
                         (600, 8192, torch.float16, torch.float16),
                         (599, 8192, torch.bfloat16, torch.float32),
                         (600, 5120, torch.float16, torch.float16),
                         (300, 12288, torch.bfloat16, torch.bfloat16),
                         (301, 12288, torch.float16, torch.float16),
                         (301, 16384, torch.float16, torch.float16),
                         (200, 16384, torch.float32, torch.float32),
                         (150, 32768, torch.bfloat16, torch.bfloat16),
                         (80, 65536, torch.float16, torch.float16)))


SUBSETS = {"--register-accumulators": check_register_accumulator_entries,
           "--fast-memory-forward": check_forward_fast_memory_entries,
           "--shared-accumulators": check_shared_accumulator_entries,
           "--short-rows": check_short_row_entries,
           "--unrecorded": check_unrecorded_forward,
           "--l2-prefetch": check_l2_prefetching_entries}

if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] in SUBSETS:
        sys.exit(0 if SUBSETS[sys.argv[1]]() else 1)
    main()
