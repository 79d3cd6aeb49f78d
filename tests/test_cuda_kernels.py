"""CUDA kernels: every size range of the kernel tables and the fallback, alignment
(vector vs scalar paths), mixed parameter dtypes, large rows, many rows,
determinism, streams, CUDA graphs and tensors of more than 2^31 elements.

Every result is compared with the float64 reference (layer_norm and its gradients
in float64), as in test_ops.py. All tests carry the `cuda` marker: they are skipped
without a GPU.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastlayernorm
from conftest import (
    LOW_PRECISION,
    TOL,
    check_close,
    make_grad,
    make_input,
    make_params,
    reference,
    rel_err,
    torch_result,
)
from test_ops import check_against_reference, run_all_ops
from test_kernel_tables import KERNEL_CONFIG as _KERNEL_CONFIG, SHIFTED_FAST_MEMORY_NS

pytestmark = pytest.mark.cuda

ops = torch.ops.fastlayernorm
EPS = 1e-5
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ALL_TRUE = [True, True, True]

# Row sizes (bytes) where the kernel tables of csrc/cuda/kernel_config.h change
# entries (each entry's max_row_bytes, read from the header so a table change
# cannot leave its new edges untested), the last of them being the edge of the
# register kernels (beyond it: fallback kernels).
# An entry line: "{bytes, ...", or wrapped by its helpers ("with_part_groups({bytes,",
# "params_from_cache({bytes,", ...), whichever they are, or "row_in_smem_entry(bytes,";
# not the continuation lines of wrapped entries (a helper's trailing arguments).
_ROW_BYTES = sorted({int(m) for m in re.findall(
    r"^\s*(?:(?:[a-z_]+\()*\{|row_in_smem_entry\()(\d+),", _KERNEL_CONFIG.read_text(), re.M)})
assert len(_ROW_BYTES) >= 20 and _ROW_BYTES[-1] == 1048576, _ROW_BYTES


def _boundary_ns(dtype):
    size = torch.empty((), dtype=dtype).element_size()
    ns = set(range(1, 20))
    for b in _ROW_BYTES:
        n = b // size
        ns.update({n - 1, n, n + 1})
    return sorted(n for n in ns if n >= 1)


def _check_rows(rows, n, dtype, wdtype=None, x=None, **kwargs):
    """Fresh random rows x n (or the given x; weights of wdtype, else dtype) through the
    forward and both backward ops against the float64 reference; a failure names the
    shape."""
    wdtype = wdtype or dtype
    x = make_input((rows, n), dtype, "cuda") if x is None else x
    w, b = make_params([n], wdtype, "cuda")
    g = make_grad((rows, n), dtype, "cuda")
    try:
        check_against_reference(x, [n], w, b, g, autograd=False, **kwargs)
    except AssertionError as e:
        raise AssertionError(f"N={n}, rows={rows}, {dtype}, weights {wdtype}: {e}") from e


def test_cuda_build_present():
    """The extension in use was compiled with its CUDA kernels."""
    assert fastlayernorm.cuda_built(), "fastlayernorm was built without CUDA (FASTLAYERNORM_CUDA=0?)"


# test_every_size_range's sizes in this many interleaved parts: separate tests, so
# that pytest-xdist spreads them over its workers (one part is about 1/8 of the
# sizes, the long rows among them).
_SIZE_RANGE_PARTS = 8


@pytest.mark.parametrize("part", range(_SIZE_RANGE_PARTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_size_range(dtype, part):
    """Each table entry's edges (N = bytes/elem - 1, +0, +1) with few rows, forward
    and both backwards, against the float64 reference (every part-th size)."""
    for n in _boundary_ns(dtype)[part::_SIZE_RANGE_PARTS]:
        _check_rows(3 if n > 16384 else 5, n, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("fast_memory", ["0", "1"])
def test_tables_of_each_memory_class(fast_memory):
    """Both sets of kernel tables on this card (kernel_config.h: the H100's, and those of
    cards of faster memory, which launch.cuh picks by the card's memory bandwidth), forced
    by FASTLAYERNORM_FAST_MEMORY_TABLES in a fresh process: every size range and the row
    counts against the float64 reference."""
    env = dict(os.environ, FASTLAYERNORM_FAST_MEMORY_TABLES=fast_memory)
    here = Path(__file__).resolve().parent
    workers = min(8, max(1, (os.cpu_count() or 2) // 2))
    parallel = ["-n", str(workers)] if importlib.util.find_spec("xdist") and workers > 1 else []
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(here / "test_cuda_kernels.py"), "-q", "-x",
         "-p", "no:cacheprovider", *parallel, "-k",
         "test_every_size_range or test_row_counts or test_backward_tables_per_dtype_pair"
         " or test_forward_entries_of_fast_memory or test_shifted_entries_of_fast_memory"],
        env=env, cwd=here, capture_output=True, text=True, timeout=1800)
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, tail
    passed = re.search(r"(\d+) passed", tail)
    assert passed and int(passed.group(1)) >= 20 and "skipped" not in tail, tail


def test_tables_env_rejects_other_values():
    """FASTLAYERNORM_FAST_MEMORY_TABLES takes 0 or 1; anything else is a clear error on
    the first CUDA call, not a silent choice."""
    env = dict(os.environ, FASTLAYERNORM_FAST_MEMORY_TABLES="yes")
    code = ("import torch, fastlayernorm\n"
            "x = torch.randn(4, 256, device='cuda')\n"
            "fastlayernorm.layer_norm(x, (256,))\n"
            "torch.cuda.synchronize()\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0
    assert "expected FASTLAYERNORM_FAST_MEMORY_TABLES to be 0 or 1" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [64, 768, 1024, 1536, 2048, 3072, 4099, 5120, 6144, 8192])
def test_row_counts(dtype, n):
    """Row counts around the CTA / persistent-grid edges: the dweight/dbias partial
    sums per CTA group, the multi-row CTAs (N=1024: two or eight rows per CTA whose
    accumulators are added before its one partial row) and the CTAs that load their next
    row while finishing one (bfloat16 N=2048-8192, float32 N=2048; on cards of faster
    memory also bfloat16 N=1024 and 1536, float32 N=768-6144: the last row's next is
    past the end)."""
    for rows in [1, 2, 3, 4, 5, 31, 32, 33, 127, 128, 129, 263, 1000, 2049, 4097]:
        _check_rows(rows, n, dtype, torch_check=rows >= 128)


@pytest.mark.parametrize("dtype,wdtype", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                                          (torch.bfloat16, torch.float32), (torch.float16, torch.float32)],
                         ids=str)
@pytest.mark.parametrize("n", [1400, 1536, 1544, 1600, 1792, 2000, 2048, 4000, 4096, 4700, 5120,
                               6200, 8192, 8200, 10000, 12288, 12296, 16384, 20000, 32768, 40000,
                               65536, 131072])
def test_backward_tables_per_dtype_pair(dtype, wdtype, n):
    """The 16-bit backward entries of cards of faster memory (kernel_config.h), some per
    dtype pair: 3-3.5 KiB rows with 16-bit weights; the 32-byte threads holding their
    dweight/dbias accumulators in registers (2.5-3 KiB rows; two-row CTAs at 4-8 KiB rows,
    clusters of two at 9-10 and 12-32 KiB, of eight at 32-128 KiB with float32 weights,
    32-64 KiB with fp16 ones, of sixteen at 128-256 KiB with float32 weights), the weight
    in shared memory or registers by dtype pair; with 16-bit weights the 64-byte threads
    with accumulators in shared memory on clusters of two 192-thread CTAs at 16-24 KiB
    rows and, for bfloat16, of eight 128-thread CTAs at 32-64 KiB rows, the H100 entries
    at 64-256 KiB; at row counts around their persistent grids (more rows than the
    few-row backward takes at N <= 8192)."""
    if n < 4096:
        row_counts = [129, 263, 1000, 2049]
    elif n <= 8192:
        row_counts = [33, 131, 133, 263, 265, 397]
    elif n < 65536:
        row_counts = [1, 3, 131, 133, 263]
    else:
        row_counts = [1, 3, 9, 17, 33]
    for rows in row_counts:
        _check_rows(rows, n, dtype, wdtype, torch_check=rows >= 128)


@pytest.mark.parametrize("x_dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("n", [1536, 2048, 4096, 5120, 8192, 16384, 32768, 65536, 131072])
def test_autocast_backward_float32_grad(x_dtype, n):
    """Autocast's backward (16-bit rows, float32 weights and a float32 output gradient:
    the G = float instantiations) on the 16-bit backward entries of cards of faster
    memory that keep dweight/dbias in registers, against the float64 reference."""
    rows = 263 if n <= 32768 else 17
    x = make_input((rows, n), x_dtype, "cuda").requires_grad_(True)
    w, b = make_params([n], torch.float32, "cuda")
    w.requires_grad_(True)
    b.requires_grad_(True)
    with torch.autocast("cuda", dtype=x_dtype):
        out = fastlayernorm.layer_norm(x, [n], w, b, EPS)
    assert out.dtype == torch.float32
    g = make_grad((rows, n), torch.float32, "cuda")
    dx, dw, db = torch.autograd.grad(out, [x, w, b], g)
    ref = reference(x, [n], w, b, EPS, g)
    assert dx.dtype == x_dtype and dw.dtype == db.dtype == torch.float32
    check_close("dx", dx, ref["dx"], x_dtype, scale=ref["dx_scale"])
    check_close("dw", dw, ref["dw"], torch.float32, scale=ref["dw_scale"])
    check_close("db", db, ref["db"], torch.float32)


@pytest.mark.parametrize("dtype,wdtype", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                                          (torch.bfloat16, torch.float32), (torch.float32, torch.float32)],
                         ids=str)
@pytest.mark.parametrize("n", [4088, 4096, 5112, 5120, 8184, 8192, 12280, 12288, 16376, 16384,
                               32760, 32768, 65528, 65536])
def test_l2_prefetching_entries(dtype, wdtype, n):
    """The entries whose rows of exactly their mapping's size also prefetch the row two
    ahead into L2 on cards of faster memory (kernel_config.h with_l2_prefetch: the 16-bit
    forward with weights of the rows' dtype at N = 12288 / 16384 / 32768 / 65536, the
    16384 one on one 512-thread CTA per row, the 12288 one on clusters of two 192-thread
    CTAs for those rows alone (for_exact_rows_only); the float32 forward at N = 16384 on
    clusters of eight for those rows alone; the 16-bit backward at N = 4096 / 8192, fp16
    also 5120), and rows just below them (the entries of their ranges without
    it), at row counts where the row two ahead is past the end for some CTA groups and
    not for others (one to four rounds of the persistent grids), against the float64
    reference: forward, and the backward from the input and from the output."""
    for rows in [1, 3, 67, 131, 133, 199, 263, 265, 397, 529]:
        _check_rows(rows, n, dtype, wdtype, torch_check=rows >= 128)


@pytest.mark.parametrize("rows_of", ["short", "long"])
@pytest.mark.parametrize("dtype,wdtype", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                                          (torch.bfloat16, torch.float32), (torch.float32, torch.float32)],
                         ids=str)
def test_forward_entries_of_fast_memory(dtype, wdtype, rows_of):
    """The forward entries of cards of faster memory (kernel_config.h): 16-bit N = 33-64 on
    one-pass CTAs of 32 rows, N = 129-256 on CTAs of 8 rows at 1024 threads per SM;
    16-bit rows with weights of their dtype at N = 1537-2047 on a persistent grid, N =
    2048 on the exact kernel of the entry beside it; float32 N = 513-1023 and 1025-2047
    on new mappings, N = 1024 and 2048 on the exact kernels beside them (short rows);
    16-bit N = 8193-12288 and float32 4097-6144 on clusters loading their next row
    ahead, 16-bit N = 2049-3072 at 1024 threads per SM and N = 4097-6144 on the kernels
    for any N also for rows that fill them, 16-bit N = 131073-262144 and float32 N =
    16385-65536 on clusters of 128-byte threads (long rows). Sizes at and inside each
    range, row counts around the 32-row CTAs, the persistent grids and the resident
    clusters (on any card: elsewhere the H100's entries run them)."""
    if rows_of == "short":
        ns = ([516, 768, 1000, 1020, 1024, 1028, 1536, 1600, 2044, 2048] if dtype == torch.float32
              else [40, 56, 64, 160, 200, 256, 1544, 1600, 1792, 2040, 2048])
        row_counts = [1, 31, 33, 263, 4097]
    else:
        ns = ([4100, 4500, 5000, 5120, 5124, 6000, 6144, 20000, 32768, 50000, 65536]
              if dtype == torch.float32
              else [2056, 2944, 3072, 4104, 5000, 5120, 5128, 6144, 8200, 10000, 12288, 200000,
                    262144])
        row_counts = [1, 3, 301]
    for n in ns:
        for rows in row_counts:
            _check_rows(rows, n, dtype, wdtype, torch_check=rows >= 128)


@pytest.mark.parametrize("dtype,wdtype", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                                          (torch.bfloat16, torch.float32), (torch.float16, torch.float32),
                                          (torch.float32, torch.float32)],
                         ids=str)
@pytest.mark.parametrize("params", ["both", "weight only", "none"])
def test_forward_short_rows(dtype, wdtype, params):
    """Short rows, where the fast-memory tables take the short-row kernel
    (forward_short_rows.cuh: a row within a warp, weight/bias in registers for all of a
    CTA's rows; persistent with one or two rows loading ahead, or one pass) for the rows
    that fill its mapping (16-bit N = 768; float32 N = 64 until session 30, now with 128
    on exact-row one-pass entries), and the sizes and the other entries beside them (N =
    56-1032); row counts from one row to several rounds of the persistent grids with a
    partial last round, with and without weight and bias."""
    for n in (56, 64, 72, 120, 128, 136, 248, 256, 264, 504, 512, 520, 760, 768, 776, 1016, 1024,
              1032):
        for rows in (1, 5, 33, 20001):
            x = make_input((rows, n), dtype, "cuda")
            w, b = make_params([n], wdtype, "cuda")
            w, b = {"both": (w, b), "weight only": (w, None), "none": (None, None)}[params]
            g = make_grad((rows, n), dtype, "cuda")
            try:
                check_against_reference(x, [n], w, b, g, autograd=False, torch_check=rows >= 128)
            except AssertionError as e:
                raise AssertionError(f"N={n}, rows={rows}, {dtype}, weights {wdtype}, "
                                     f"{params}: {e}") from e


@pytest.mark.parametrize("dtype,wdtype", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                                          (torch.bfloat16, torch.float32), (torch.float32, torch.float32)],
                         ids=str)
def test_shifted_entries_of_fast_memory(dtype, wdtype):
    """The shifted-row entries of cards of faster memory at the edges of their ranges, at
    row counts below, around and beyond their persistent grids (several rounds: the rows
    staged or loaded ahead, the last one's next past the end), forward and both backwards
    against the float64 reference (on any card: elsewhere the H100's entries run them)."""
    size = torch.empty((), dtype=dtype).element_size()
    vec = 16 // size
    for n in SHIFTED_FAST_MEMORY_NS[size]:
        assert n % vec != 0, n
        for rows in [1, 3, 263, 1201]:
            _check_rows(rows, n, dtype, wdtype, torch_check=rows >= 128)


# The few-row backward (csrc/cuda/backward_few_rows.cuh): one cluster of 8 CTAs of 16 warps;
# a thread owns 1, 2 or 4 16-byte chunks of every row (ITEMS), a warp holds up to 2 rows
# and 8 / ITEMS (4 / ITEMS with float32 weight or dy, or rebuilding from the output). Beyond
# those rows, or 4 chunks, the tables take them.
FEW_ROWS_CLUSTER_THREADS = 8 * 32
FEW_ROWS_WARPS = 16


@pytest.mark.parametrize("dtype,wdtype", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                                          (torch.bfloat16, torch.float32), (torch.float16, torch.float32),
                                          (torch.float32, torch.float32)], ids=str)
def test_few_rows_backward(dtype, wdtype):
    """Every chunk count of the few-row backward at its edges (N a chunk short of, at and a
    chunk past each class's capacity) and the row counts around each kernel's capacity and
    its warps, against the float64 reference: both backward ops, every output mask."""
    vec = 16 // torch.empty((), dtype=dtype).element_size()
    for items in (1, 2, 4):
        cap = items * FEW_ROWS_CLUSTER_THREADS * vec
        caps = {FEW_ROWS_WARPS * min(2, slots // items) for slots in (4, 8) if slots >= items}
        row_counts = sorted({1, 2, 15, 16, 17} | {c + d for c in caps for d in (-1, 0, 1)})
        for n in (cap - vec, cap, cap + vec):
            for rows in row_counts:
                _check_rows(rows, n, dtype, wdtype, torch_check=False)
    n = 2 * FEW_ROWS_CLUSTER_THREADS * vec
    for rows in (1, 7, 33):
        x = make_input((rows, n), dtype, "cuda")
        w, b = make_params([n], wdtype, "cuda")
        g = make_grad((rows, n), dtype, "cuda")
        for mask in ([True, False, False], [False, True, False], [False, False, True],
                     [False, True, True], [True, True, False]):
            check_against_reference(x, [n], w, b, g, mask=mask, autograd=False, torch_check=False)
        check_against_reference(x, [n], None, None, g, autograd=False, torch_check=False)
        check_against_reference(x, [n], w, None, g, autograd=False, torch_check=False)


@pytest.mark.parametrize("dtype,wdtype", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32),
                                          (torch.float32, torch.float32)], ids=str)
@pytest.mark.parametrize("n", [32768, 65536, 131072])
def test_long_row_counts(dtype, wdtype, n):
    """Long rows (a cluster of 2-16 CTAs per row) with row counts around the resident
    clusters (8, 16, 33 or 66 on an H100's 132 SMs), on the entries whose CTAs load their
    next row while finishing one, weight in shared memory: the loop, and the last row's
    next past the end; both backwards (the memory-saving one keeps bias in shared memory
    too)."""
    for rows in [2, 7, 8, 9, 15, 16, 17, 32, 33, 34, 65, 66, 67, 133]:
        _check_rows(rows, n, dtype, wdtype)


@pytest.mark.parametrize("dtype,wdtype,n", [(torch.bfloat16, torch.bfloat16, 32768),
                                            (torch.float16, torch.float32, 65536),
                                            (torch.bfloat16, torch.bfloat16, 131072),
                                            (torch.float32, torch.float32, 12288),
                                            (torch.float32, torch.float32, 65536)], ids=str)
def test_long_rows_many_per_cluster(dtype, wdtype, n):
    """2^24 elements of long rows: 8-21 rows per cluster (on an H100's 132 SMs) of the
    prefetching backward kernels, whose CTAs exchange their row sums through a pair of
    mbarriers in shared memory, each completing a phase every second row (its parity
    flipping again and again); both backwards against the float64 reference."""
    _check_rows(2**24 // n, n, dtype, wdtype)


@pytest.mark.parametrize("dtype,n", [(torch.bfloat16, 16384), (torch.float16, 32768),
                                     (torch.bfloat16, 65536), (torch.float16, 131072),
                                     (torch.bfloat16, 262144), (torch.bfloat16, 65531),
                                     (torch.float32, 12288), (torch.float32, 16384),
                                     (torch.float32, 65536), (torch.float32, 131072)], ids=str)
@pytest.mark.parametrize("rows_of", ["ramp", "steps"])
def test_cluster_rows_uneven_parts(dtype, n, rows_of):
    """Rows split over a cluster whose CTAs each merge the mean and squared deviations of
    their own columns in one exchange: rows whose parts have very different means (a ramp
    from -8 to 8 with noise, on an offset of 20; a CTA's columns are blocks spread over the
    row), and rows of eight constant stretches of different values (no noise: all variance
    from the steps, each CTA's part spanning a few of them). Statistics, output and both
    backwards against the float64 reference."""
    rows = 40
    col = torch.arange(n, dtype=torch.float64) / n
    if rows_of == "ramp":
        x = 20 + 16 * (col - 0.5) + 0.5 * torch.randn(rows, n, dtype=torch.float64)
    else:
        x = (torch.randn(rows, 8, dtype=torch.float64) * 3).repeat_interleave(-(-n // 8), dim=1)[:, :n]
    _check_rows(rows, n, dtype, x=x.to(device="cuda", dtype=dtype))


@pytest.mark.parametrize("dtype,wdtype", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                                          (torch.bfloat16, torch.float32), (torch.float32, torch.float32)],
                         ids=str)
@pytest.mark.parametrize("n", [255, 767, 1535, 3071, 6143, 12287, 32767])
def test_shifted_rows_many(dtype, wdtype, n):
    """Rows off 16-byte boundaries (N not a multiple of the vector) with more rows than
    resident CTA groups: the persistent grids and staged rows that shifted rows run on
    (shifted_forward_config / shifted_backward_config), whole partial chunks, weight/bias
    funnel-shifted from their aligned words, and the tensor's last chunk."""
    rows = 4_000_000 // n + 100  # several rows per CTA group of a persistent grid
    _check_rows(rows, n, dtype, wdtype, torch_check=wdtype == dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1024, 4099, 1000, 127, 8, 8192, 65536])
@pytest.mark.parametrize("which", ["input", "grad", "params", "all"])
def test_odd_alignment(dtype, n, which):
    """Views with storage offset 1 (not 16-byte aligned): the scalar paths."""
    rows = 33 if n <= 8192 else 3

    def shifted(t):
        base = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
        v = base[1:].view(t.shape)
        v.copy_(t)
        assert v.storage_offset() == 1 and v.is_contiguous()
        return v

    x = make_input((rows, n), dtype, "cuda")
    w, b = make_params([n], dtype, "cuda")
    g = make_grad((rows, n), dtype, "cuda")
    if which in ("input", "all"):
        x = shifted(x)
    if which in ("grad", "all"):
        g = shifted(g)
    if which in ("params", "all"):
        w, b = shifted(w), shifted(b)
    aligned = run_all_ops(x.clone(), [n], w.clone(), b.clone(), g.clone())
    res, ref = check_against_reference(x, [n], w, b, g)
    # The scalar and the vector paths agree to rounding.
    for k in ("y", "dx", "dw", "db"):
        assert rel_err(res[k], aligned[k]) <= 2 * TOL[dtype], k


@pytest.mark.parametrize("x_dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("n", [1, 8, 127, 1024, 4099, 8192, 32768, 65536, 131072, 262144 + 8])
def test_low_precision_input_float32_params(x_dtype, n):
    rows = 16 if n <= 8192 else 2
    x = make_input((rows, n), x_dtype, "cuda")
    w, b = make_params([n], torch.float32, "cuda")
    g = make_grad((rows, n), x_dtype, "cuda")
    res, _ = check_against_reference(x, [n], w, b, g)
    assert res["y"].dtype == x_dtype and res["dx"].dtype == x_dtype
    assert res["dw"].dtype == res["db"].dtype == torch.float32


@pytest.mark.parametrize("x_dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("rows", [1, 33, 20001])
def test_autocast_float32_output_short_rows(x_dtype, rows):
    """Autocast's float32 output from 16-bit rows with float32 parameters on the short-row
    kernel (16-bit N = 768 on the fast-memory tables: two rows ahead, a persistent grid)
    and beside it (N = 760, 776), against the float64 reference."""
    for n in (760, 768, 776):
        x = make_input((rows, n), x_dtype, "cuda")
        w, b = make_params([n], torch.float32, "cuda")
        with torch.autocast("cuda", dtype=x_dtype):
            out = fastlayernorm.layer_norm(x, [n], w, b, EPS)
        ref = torch.nn.functional.layer_norm(x.double().cpu(), [n], w.double().cpu(),
                                             b.double().cpu(), EPS)
        assert out.dtype == torch.float32
        assert rel_err(out, ref) <= TOL[torch.float32], (n, rows)


@pytest.mark.parametrize("x_dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("n", [6144, 16384, 131072])
def test_autocast_float32_output_row_in_smem(x_dtype, n):
    """Autocast's float32 output from 16-bit rows with float32 parameters (the O = float
    instantiations) on the row-in-shared-memory entries: the register kernel at their
    mapping where one CTA holds the row (6144, 16384), the row-in-shared-memory cluster
    kernel (131072)."""
    x = make_input((3, n), x_dtype, "cuda")
    w, b = make_params([n], torch.float32, "cuda")
    with torch.autocast("cuda", dtype=x_dtype):
        out = fastlayernorm.layer_norm(x, [n], w, b, EPS)
    ref = torch.nn.functional.layer_norm(x.double().cpu(), [n], w.double().cpu(), b.double().cpu(), EPS)
    assert out.dtype == torch.float32
    assert rel_err(out, ref) <= TOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [65536, 131072, 262144, 2**20])
def test_large_rows(dtype, n):
    """Large normalized sizes with few rows (cluster kernels and fallback)."""
    for rows in (1, 3):
        x = make_input((rows, n), dtype, "cuda")
        w, b = make_params([n], dtype, "cuda")
        g = make_grad((rows, n), dtype, "cuda")
        check_against_reference(x, [n], w, b, g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [1000, 4099, 16384])
def test_param_grads_over_partial_row_counts(dtype, n):
    """dweight/dbias for row counts that give the finalize kernel 1 to a few hundred partial
    rows: fewer slices than 32, a last batch of loads partly past the last partial row, and
    (16384) its 16-byte loads."""
    for rows in (1, 2, 5, 13, 33, 67, 131, 257, 600):
        x = make_input((rows, n), dtype, "cuda")
        w, b = make_params([n], dtype, "cuda")
        g = make_grad((rows, n), dtype, "cuda")
        check_against_reference(x, [n], w, b, g)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,n", [(2**17, 64), (2**16 + 3, 64), (100_003, 8), (2**15, 4)])
def test_many_small_rows(dtype, rows, n):
    x = make_input((rows, n), dtype, "cuda")
    w, b = make_params([n], dtype, "cuda")
    g = make_grad((rows, n), dtype, "cuda")
    check_against_reference(x, [n], w, b, g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rows,n", [(4096, 1024), (4096, 2048), (64, 8192), (2000, 5120), (1000, 4099),
                                    (1500, 6144), (400, 12288), (8, 65536), (150, 32768), (40, 65536),
                                    (1, 4096), (32, 4096), (17, 1000), (64, 4096)])
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_deterministic(dtype, rows, n, memory_efficient):
    """The same inputs give bitwise identical y, dx, dweight and dbias over 20 runs."""
    x = make_input((rows, n), dtype, "cuda")
    w, b = make_params([n], dtype, "cuda")
    g = make_grad((rows, n), dtype, "cuda")
    first = None
    for _ in range(20):
        xl, wl, bl = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
        y = fastlayernorm.layer_norm(xl, [n], wl, bl, EPS, memory_efficient=memory_efficient)
        y.backward(g)
        out = (y.detach(), xl.grad, wl.grad, bl.grad)
        if first is None:
            first = out
            continue
        for name, a, e in zip(("y", "dx", "dw", "db"), out, first):
            assert torch.equal(a, e), f"{name} differs between runs"
    # The raw ops too, with a busy GPU in between (other work on the stream).
    y, mean, rstd = ops.layer_norm_fwd(x, [n], w, b, EPS)
    ref = ops.layer_norm_bwd(g, x, [n], mean, rstd, w, b, ALL_TRUE)
    for _ in range(5):
        torch.randn(4096, 4096, device="cuda").matmul(torch.randn(4096, 4096, device="cuda"))
        again = ops.layer_norm_bwd(g, x, [n], mean, rstd, w, b, ALL_TRUE)
        for a, e in zip(again, ref):
            assert torch.equal(a, e)


def test_matches_cpu_kernels():
    """The CUDA and CPU kernels agree with each other (both against float64 too)."""
    for dtype in DTYPES:
        for n in (7, 1000, 4099):
            x = make_input((50, n), dtype, "cpu")
            w, b = make_params([n], dtype, "cpu")
            g = make_grad((50, n), dtype, "cpu")
            cpu = run_all_ops(x, [n], w, b, g)
            gpu = run_all_ops(x.cuda(), [n], w.cuda(), b.cuda(), g.cuda())
            for k in cpu:
                assert gpu[k].device.type == "cuda"
                assert rel_err(gpu[k], cpu[k]) <= 2 * TOL[dtype], (dtype, n, k)


def test_side_stream_and_device_guard():
    """Kernels run on the current stream (a side stream here) and under the input's
    device, whatever the current device is."""
    n = 4096
    x = make_input((64, n), torch.float32, "cuda")
    w, b = make_params([n], torch.float32, "cuda")
    g = make_grad((64, n), torch.float32, "cuda")
    expected = run_all_ops(x, [n], w, b, g)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            got = run_all_ops(x, [n], w, b, g)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    for k in expected:
        assert torch.equal(got[k], expected[k]), k


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_second_device():
    n = 1024
    x = make_input((32, n), torch.float32, "cuda:1")
    w, b = make_params([n], torch.float32, "cuda:1")
    g = make_grad((32, n), torch.float32, "cuda:1")
    with torch.cuda.device(0):
        res, _ = check_against_reference(x, [n], w, b, g)
    assert res["y"].device == torch.device("cuda:1")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [1024, 4099, 65536])
def test_cuda_graph_capture(dtype, n):
    """Forward and backward can be captured in a CUDA graph and replayed (what
    torch.compile(mode='reduce-overhead') does)."""
    rows = 64 if n < 65536 else 4
    x = make_input((rows, n), dtype, "cuda")
    w, b = make_params([n], dtype, "cuda")
    g = make_grad((rows, n), dtype, "cuda")
    static = [t.clone() for t in (x, w, b, g)]
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up (kernel selection, occupancy caches)
        run_all_ops(static[0], [n], static[1], static[2], static[3])
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run_all_ops(static[0], [n], static[1], static[2], static[3])
    # New inputs, copied into the captured buffers, then replayed.
    x2 = make_input((rows, n), dtype, "cuda")
    g2 = make_grad((rows, n), dtype, "cuda")
    static[0].copy_(x2)
    static[3].copy_(g2)
    graph.replay()
    torch.cuda.synchronize()
    eager = run_all_ops(x2, [n], w, b, g2)
    for k in eager:
        assert torch.equal(out[k], eager[k]), k


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_output_element_written_large(dtype, poison_uninitialized):
    """NaN-poisoned fresh outputs (and workspaces), large and odd shapes."""
    for rows, n in [(3, 2**20), (5, 131073), (4097, 1024), (7, 65537)]:
        x = make_input((rows, n), dtype, "cuda")
        w, b = make_params([n], dtype, "cuda")
        g = make_grad((rows, n), dtype, "cuda")
        res = run_all_ops(x, [n], w, b, g)
        for k, v in res.items():
            assert torch.isfinite(v).all(), (rows, n, k)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_noncontiguous_cuda_inputs(dtype):
    n = 2048
    base = make_input((n, 48), dtype, "cuda")
    x = base.t()  # (48, 2048), column-major
    w, b = make_params([n], dtype, "cuda")
    g = make_grad((48, n), dtype, "cuda")
    check_against_reference(x, [n], w, b, g)


# --------------------------------------------------------------------------------------
# > 2^31 elements
# --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_more_than_2_pow_31_elements(memory_efficient):
    """rows = 2^16 + 1, N = 2^15 bfloat16: 2^31 + 2^15 elements (~4.3 GB a tensor).
    Rows on both sides of element 2^31 are checked against the float64 reference
    on those rows; dweight/dbias (sums over all rows) against float64 computed on the
    GPU in chunks."""
    rows, n = 2**16 + 1, 2**15
    dtype = torch.bfloat16
    free, _ = torch.cuda.mem_get_info()
    if free < 30 * 2**30:
        pytest.skip(f"needs ~30 GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.empty(rows, n, dtype=dtype, device="cuda")
    g = torch.empty(rows, n, dtype=dtype, device="cuda")
    for i in range(0, rows, 4096):  # chunked, to keep the float32 temporaries small
        x[i:i + 4096] = (torch.randn(min(4096, rows - i), n, device="cuda", generator=gen) * 2 + 1).to(dtype)
        g[i:i + 4096] = torch.randn(min(4096, rows - i), n, device="cuda", generator=gen).to(dtype)
    assert x.numel() > 2**31
    w, b = make_params([n], dtype, "cuda")

    xl = x.requires_grad_(True)
    wl, bl = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    y = fastlayernorm.layer_norm(xl, [n], wl, bl, EPS, memory_efficient=memory_efficient)
    y.backward(g)
    dx, dw, db = xl.grad, wl.grad, bl.grad
    torch.cuda.synchronize()

    # Rows around element 2^31 (row 2^16) and at both ends, against the float64 reference.
    check_rows = [0, 1, 2**15, 2**16 - 1, 2**16]
    idx = torch.tensor(check_rows, device="cuda")
    ref = reference(x.detach()[idx], [n], w, b, EPS, g[idx])
    check_close("y", y.detach()[idx], ref["y"], dtype)
    check_close("dx", dx[idx], ref["dx"], dtype, scale=ref["dx_scale"])

    # Every row's y and the full dweight/dbias, in float64 on the GPU, chunk by chunk.
    w64, b64 = w.double(), b.double()
    dw64 = torch.zeros(n, dtype=torch.float64, device="cuda")
    db64 = torch.zeros_like(dw64)
    num = den = 0.0
    for i in range(0, rows, 2048):
        xc = x.detach()[i:i + 2048].double()
        gc = g[i:i + 2048].double()
        mean = xc.mean(-1, keepdim=True)
        xhat = (xc - mean) * torch.rsqrt(((xc - mean) ** 2).mean(-1, keepdim=True) + EPS)
        yc = xhat * w64 + b64
        num += (y.detach()[i:i + 2048].double() - yc).square().sum().item()
        den += yc.square().sum().item()
        dw64 += (gc * xhat).sum(0)
        db64 += gc.sum(0)
        assert torch.isfinite(y.detach()[i:i + 2048]).all() and torch.isfinite(dx[i:i + 2048]).all()
    assert (num / den) ** 0.5 <= TOL[dtype], f"y over all rows: {(num / den) ** 0.5:.3e}"
    check_close("dw", dw, dw64, dtype)
    check_close("db", db, db64, dtype)
