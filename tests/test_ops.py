"""Every fastlayernorm operator against a float64 reference.

For each case the forward op (``layer_norm_fwd``), both backward ops
(``layer_norm_bwd`` and ``layer_norm_bwd_from_output``) and the differentiable
``layer_norm`` (plain and memory-efficient) are compared with layer_norm and its
gradients written out in float64 (conftest.reference) on the very values of the
inputs, on their device. The
relative L2 error must be <= 1e-5 for float32 and <= 1e-2 for float16/bfloat16, and
for float16/bfloat16 no worse than torch's own F.layer_norm in that dtype (1.5x plus
a small slack).
"""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import fastlayernorm
from conftest import (
    DEVICES,
    LOW_PRECISION,
    TOL,
    check_close,
    make_grad,
    make_input,
    make_params,
    reference,
    reference_from_output,
    rel_err,
    torch_result,
)

ops = torch.ops.fastlayernorm

NS = [1, 7, 127, 1000, 4099, 8192, 65537]
ROWS = [0, 1, 3, 1024]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
EPS = 1e-5
ALL_TRUE = [True, True, True]

# The CPU kernels and the float64 reference run on 2 cores in CI: cap the elements of
# one CPU case (the full rows x N grid runs on CUDA).
CPU_MAX_ELEMENTS = 2**22


def _rows_for(device: str, rows: int, n: int) -> int:
    if device == "cpu" and rows * n > CPU_MAX_ELEMENTS:
        return max(3, CPU_MAX_ELEMENTS // n)
    return rows


def _stats_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def run_all_ops(x, normalized_shape, w, b, g, eps=EPS, mask=ALL_TRUE):
    """Calls every op on one set of arguments; returns a dict of results."""
    shape = list(normalized_shape)
    y, mean, rstd = ops.layer_norm_fwd(x, shape, w, b, eps)
    dx, dw, db = ops.layer_norm_bwd(g, x, shape, mean, rstd, w, b, mask)
    dx_o, dw_o, db_o = ops.layer_norm_bwd_from_output(g, y, shape, rstd, w, b, mask)
    return dict(y=y, mean=mean, rstd=rstd, dx=dx, dw=dw, db=db, dx_o=dx_o, dw_o=dw_o, db_o=db_o)


def autograd_result(x, normalized_shape, w, b, g, eps=EPS, memory_efficient=False, fn=None):
    """Forward + backward through the differentiable op (C++ autograd)."""
    # detach() (no copy): the leaves keep the arguments' strides and storage offsets.
    leaves = [t.detach().requires_grad_(True) if t is not None else None for t in (x, w, b)]
    xl, wl, bl = leaves
    if fn is None:
        y = ops.layer_norm(xl, list(normalized_shape), wl, bl, eps, memory_efficient)
    else:
        y = fn(xl, normalized_shape, wl, bl, eps, memory_efficient)
    y.backward(g)
    return dict(y=y.detach(), dx=xl.grad, dw=wl.grad if wl is not None else None,
                db=bl.grad if bl is not None else None)


def check_against_reference(x, normalized_shape, w, b, g, eps=EPS, mask=ALL_TRUE,
                            autograd=True, torch_check=True):
    dtype = x.dtype
    ref = reference(x, normalized_shape, w, b, eps, g)
    base = torch_result(x, normalized_shape, w, b, eps, g) if (torch_check and dtype in LOW_PRECISION) else None
    tb = (lambda k: base[k]) if base is not None else (lambda k: None)
    pdt = w.dtype if w is not None else (b.dtype if b is not None else dtype)

    res = run_all_ops(x, normalized_shape, w, b, g, eps, mask)
    # Forward: output, then the saved statistics.
    assert res["y"].dtype == dtype and res["y"].shape == x.shape and res["y"].is_contiguous()
    assert res["y"].device == x.device
    stat_shape = tuple(x.shape[: x.dim() - len(normalized_shape)]) + (1,) * len(normalized_shape)
    for k in ("mean", "rstd"):
        assert res[k].dtype == _stats_dtype(dtype), k
        assert tuple(res[k].shape) == stat_shape, (k, res[k].shape, stat_shape)
    check_close("y", res["y"], ref["y"], dtype, tb("y"))
    stat_tol = 1e-10 if dtype == torch.float64 else 1e-5
    check_close("mean", res["mean"], ref["mean"], dtype, tol=stat_tol)
    if x.shape[-1] != 0:
        check_close("rstd", res["rstd"], ref["rstd"], dtype, tol=stat_tol)

    # Backward from the saved input and from the output; the output-based one against
    # float64 math on the output it is given (reference_from_output).
    want = dict(dx=mask[0], dw=mask[1] and w is not None, db=mask[2] and b is not None)
    ref_o = reference_from_output(res["y"], normalized_shape, w, b, ref["rstd"], g)
    for suffix, label in (("", "layer_norm_bwd"), ("_o", "layer_norm_bwd_from_output")):
        expected = ref if suffix == "" else ref_o
        for k in ("dx", "dw", "db"):
            got = res[k + suffix]
            if not want[k]:
                assert got is None, f"{label}: {k} should be None"
                continue
            assert got is not None, f"{label}: {k} missing"
            assert got.dtype == (dtype if k == "dx" else pdt), (label, k, got.dtype)
            assert got.device == x.device
            # torch's error is the baseline of the input-based backward; the
            # output-based one is held to the dtype's bound only.
            check_close(f"{label}.{k}", got, expected[k], dtype, tb(k) if suffix == "" else None,
                        scale=ref.get(k + "_scale"))

    if autograd:
        for memory_efficient in (False, True):
            r = autograd_result(x, normalized_shape, w, b, g, eps, memory_efficient)
            label = f"layer_norm(memory_efficient={memory_efficient})"
            # Same kernels as the ops called directly: identical results.
            torch.testing.assert_close(r["y"], res["y"], rtol=0, atol=0, msg=f"{label}: y")
            for k in ("dx", "dw", "db"):
                if ref[k] is None:
                    assert r[k] is None
                    continue
                exp = res[k + ("_o" if memory_efficient else "")]
                if exp is None:  # masked out above: compare with the reference
                    check_close(f"{label}.{k}", r[k], ref[k], dtype,
                                scale=ref.get(k + "_scale"))
                else:
                    torch.testing.assert_close(r[k], exp, rtol=0, atol=0, msg=f"{label}: {k}")
    return res, ref


# --------------------------------------------------------------------------------------
# The grid: N x rows x dtype x device
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("n", NS)
def test_grid(device, dtype, rows, n):
    rows = _rows_for(device, rows, n)
    x = make_input((rows, n), dtype, device)
    w, b = make_params([n], dtype, device)
    g = make_grad((rows, n), dtype, device)
    check_against_reference(x, [n], w, b, g)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [1, 7, 1000, 4099])
def test_float64(device, n):
    x = make_input((5, n), torch.float64, device)
    w, b = make_params([n], torch.float64, device)
    g = make_grad((5, n), torch.float64, device)
    check_against_reference(x, [n], w, b, g)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape,normalized_shape",
    [
        ((2, 3, 4, 5), (4, 5)),
        ((2, 3, 4, 5), (3, 4, 5)),
        ((2, 3, 4, 5), (2, 3, 4, 5)),
        ((6, 7, 33), (7, 33)),
        ((4, 1, 64, 16), (1, 64, 16)),
        ((3, 17, 2, 129), (2, 129)),
        ((2, 8, 32, 32), (32, 32)),
        ((513,), (513,)),
    ],
    ids=str,
)
def test_multidim_normalized_shape(device, dtype, shape, normalized_shape):
    x = make_input(shape, dtype, device)
    w, b = make_params(normalized_shape, dtype, device)
    g = make_grad(shape, dtype, device)
    res, _ = check_against_reference(x, normalized_shape, w, b, g)
    # The same numbers as flattening the normalized dims into one.
    n = 1
    for d in normalized_shape:
        n *= d
    lead = shape[: len(shape) - len(normalized_shape)]
    flat = run_all_ops(x.reshape(*lead, n), [n], w.reshape(n), b.reshape(n), g.reshape(*lead, n))
    torch.testing.assert_close(res["y"].reshape(*lead, n), flat["y"], rtol=0, atol=0)
    torch.testing.assert_close(res["dx"].reshape(*lead, n), flat["dx"], rtol=0, atol=0)
    torch.testing.assert_close(res["dw"].reshape(n), flat["dw"], rtol=0, atol=0)
    torch.testing.assert_close(res["db"].reshape(n), flat["db"], rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("has_w,has_b", [(True, False), (False, True), (False, False)])
@pytest.mark.parametrize("n", [1, 127, 1024, 3072, 4099, 12288])
def test_weight_bias_absent(device, dtype, has_w, has_b, n):
    x = make_input((37, n), dtype, device)
    w, b = make_params([n], dtype, device, weight=has_w, bias=has_b)
    g = make_grad((37, n), dtype, device)
    res, _ = check_against_reference(x, [n], w, b, g)
    if not has_w:
        assert res["dw"] is None and res["dw_o"] is None
    if not has_b:
        assert res["db"] is None and res["db_o"] is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask", list(itertools.product([False, True], repeat=3)), ids=str)
def test_output_mask(device, mask):
    n = 257
    x = make_input((9, n), torch.float32, device)
    w, b = make_params([n], torch.float32, device)
    g = make_grad((9, n), torch.float32, device)
    check_against_reference(x, [n], w, b, g, mask=list(mask), autograd=False)
    # Masked results are the same numbers as the full ones.
    full = run_all_ops(x, [n], w, b, g)
    part = run_all_ops(x, [n], w, b, g, mask=list(mask))
    for k, on in zip(("dx", "dw", "db"), mask):
        for s in ("", "_o"):
            if on:
                torch.testing.assert_close(part[k + s], full[k + s], rtol=0, atol=0)
            else:
                assert part[k + s] is None


def _noncontiguous_cases(device, dtype):
    """(x, normalized_shape, w, b, g) with non-contiguous x, grad_out and parameters."""
    cases = []
    # Transposed: the normalized dim has stride != 1.
    base = make_input((300, 24), dtype, device)
    x = base.t()
    w, b = make_params([300], dtype, device)
    cases.append(("transposed", x, [300], w, b, make_grad((300, 24), dtype, device).t()))
    # Every other column, every other row.
    base = make_input((40, 2 * 129), dtype, device)
    x = base[::2, ::2]
    wb = make_params([2 * 129], dtype, device)
    cases.append(("strided", x, [129], wb[0][::2], wb[1][::2], make_grad((20, 258), dtype, device)[:, 1::2]))
    # A permuted 4-d tensor normalized over its two trailing (non-contiguous) dims.
    base = make_input((4, 6, 8, 10), dtype, device)
    x = base.permute(0, 2, 3, 1)  # (4, 8, 10, 6)
    w, b = make_params([10, 6], dtype, device)
    cases.append(("permuted", x, [10, 6], w, b, make_grad((4, 8, 10, 6), dtype, device)))
    # Expanded (stride 0) rows.
    row = make_input((1, 1000), dtype, device)
    x = row.expand(16, 1000)
    w, b = make_params([1000], dtype, device)
    cases.append(("expanded", x, [1000], w, b, make_grad((16, 1000), dtype, device)))
    # A sliced view with a storage offset (leading rows dropped), contiguous rows.
    base = make_input((65, 4099), dtype, device)
    w, b = make_params([4099], dtype, device)
    cases.append(("offset", base[1:], [4099], w, b, make_grad((64, 4099), dtype, device)))
    return cases


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_noncontiguous(device, dtype):
    for name, x, shape, w, b, g in _noncontiguous_cases(device, dtype):
        assert not (x.is_contiguous() and g.is_contiguous() and w.is_contiguous()) or name == "offset", name
        res, _ = check_against_reference(x, shape, w, b, g)
        # Same numbers as on contiguous copies.
        c = run_all_ops(x.contiguous(), shape, w.contiguous(), b.contiguous(), g.contiguous())
        for k in ("y", "mean", "rstd", "dx", "dw", "db", "dx_o", "dw_o", "db_o"):
            torch.testing.assert_close(res[k], c[k], rtol=0, atol=0, msg=f"{name}: {k}")
            if k in ("y", "dx", "dx_o"):
                assert res[k].is_contiguous(), (name, k)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("n", [7, 1000, 8192])
def test_low_precision_input_float32_params(device, dtype, n):
    """float16/bfloat16 input with float32 weight and bias (as under mixed precision)."""
    x = make_input((33, n), dtype, device)
    w, b = make_params([n], torch.float32, device)
    g = make_grad((33, n), dtype, device)
    res, _ = check_against_reference(x, [n], w, b, g)
    assert res["y"].dtype == dtype
    assert res["dw"].dtype == torch.float32 and res["db"].dtype == torch.float32
    # Matches torch's own mixed-dtype layer_norm output dtype.
    tb = torch_result(x, [n], w, b, EPS, g)
    if tb is not None:
        assert tb["y"].dtype == res["y"].dtype and tb["dw"].dtype == res["dw"].dtype


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
def test_stats_match_native_layer_norm(device, dtype):
    """mean/rstd have aten::native_layer_norm's shapes and dtypes (and values)."""
    x = make_input((3, 5, 2, 64), dtype, device)
    w, b = make_params([2, 64], dtype, device)
    y, mean, rstd = ops.layer_norm_fwd(x, [2, 64], w, b, EPS)
    ty, tmean, trstd = torch.native_layer_norm(x, [2, 64], w, b, EPS)
    assert y.shape == ty.shape and y.dtype == ty.dtype
    assert mean.shape == tmean.shape and rstd.shape == trstd.shape
    # float32 statistics for every input but float64 (aten's CPU kernel keeps them in
    # the input's dtype for float16/bfloat16; its CUDA kernel uses float32 like ours).
    assert mean.dtype == rstd.dtype == _stats_dtype(dtype)
    tol = {torch.float64: 1e-10, torch.float32: 1e-5}.get(tmean.dtype, 1e-2)
    assert rel_err(mean, tmean) <= tol and rel_err(rstd, trstd) <= tol


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
def test_stats_pairs(device, dtype):
    """_layer_norm_fwd_pairs (what the autograd Functions save): the statistics as one
    tensor of (mean, rstd) pairs, a row's two values adjacent (the CUDA kernels store
    them with one 8-byte store), bitwise layer_norm_fwd's, whose mean and rstd are
    tensors of their own (contiguous, as aten::native_layer_norm's); the Meta kernels
    give the same shapes and strides (torch.compile)."""
    x = make_input((3, 5, 2, 64), dtype, device)
    w, b = make_params([2, 64], dtype, device)
    y, mean, rstd = ops.layer_norm_fwd(x, [2, 64], w, b, EPS)
    y2, pairs = ops._layer_norm_fwd_pairs(x, [2, 64], w, b, EPS)
    assert pairs.shape == (3, 5, 1, 1, 2) and pairs.is_contiguous()
    assert pairs.dtype == mean.dtype == _stats_dtype(dtype)
    assert mean.is_contiguous() and rstd.is_contiguous()
    assert mean.untyped_storage().data_ptr() != rstd.untyped_storage().data_ptr()
    assert torch.equal(y2, y)
    assert torch.equal(pairs[..., 0], mean) and torch.equal(pairs[..., 1], rstd)
    meta = [t.to("meta") for t in (x, w, b)]
    fake_y, fake_pairs = ops._layer_norm_fwd_pairs(meta[0], [2, 64], meta[1], meta[2], EPS)
    assert fake_pairs.shape == pairs.shape and fake_pairs.stride() == pairs.stride()
    _, fake_mean, fake_rstd = ops.layer_norm_fwd(meta[0], [2, 64], meta[1], meta[2], EPS)
    assert fake_mean.stride() == mean.stride() and fake_rstd.stride() == rstd.stride()


def _uneven_rows(t, a, b):
    """t's values (a * b of them) in a tensor whose rows are not evenly spaced."""
    base = torch.full((a, b + 1), float("nan"), dtype=t.dtype, device=t.device)
    base[:, :b] = t.reshape(a, b)
    return base[:, :b]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("a,b,n", [(2, 3, 64), (4, 9, 1000), (2, 4, 4099), (10, 30, 768),
                                   (1, 2, 65537), (16, 64, 256)])
def test_backward_reads_stats_of_any_layout(device, dtype, a, b, n):
    """layer_norm_bwd (and its from-output form) read mean/rstd in place at their row
    stride (the forward's pairs: 2, contiguous: 1, here also 3) and from contiguous
    copies where the rows are unevenly spaced or the two differ: the same bits."""
    rows = a * b
    x = make_input((rows, n), dtype, device)
    w, b_ = make_params([n], dtype, device)
    g = make_grad((rows, n), dtype, device)
    y, pairs = ops._layer_norm_fwd_pairs(x, [n], w, b_, EPS)
    mean, rstd = pairs[..., 0], pairs[..., 1]  # what the autograd Functions save
    assert mean.stride() == rstd.stride() == (2, 2)
    want = ops.layer_norm_bwd(g, x, [n], mean, rstd, w, b_, ALL_TRUE)
    want_o = ops.layer_norm_bwd_from_output(g, y, [n], rstd, w, b_, ALL_TRUE)

    def stride3(t):
        base = torch.full((rows, 3), float("nan"), dtype=t.dtype, device=device)
        base[:, 1] = t.reshape(rows)
        return base[:, 1]

    layouts = {
        "contiguous": (mean.contiguous(), rstd.contiguous()),
        "stride 3": (stride3(mean), stride3(rstd)),
        "uneven": (_uneven_rows(mean, a, b), _uneven_rows(rstd, a, b)),
        "mixed": (mean.contiguous(), rstd),
    }
    for name, (m, r) in layouts.items():
        got = ops.layer_norm_bwd(g, x, [n], m, r, w, b_, ALL_TRUE)
        for k, u, v in zip(("dx", "dw", "db"), got, want):
            assert torch.equal(u, v), f"{name}: {k}"
        got_o = ops.layer_norm_bwd_from_output(g, y, [n], r, w, b_, ALL_TRUE)
        for k, u, v in zip(("dx", "dw", "db"), got_o, want_o):
            assert torch.equal(u, v), f"{name} (from output): {k}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("eps", [0.0, 1e-6, 1e-3, 0.5])
def test_eps(device, dtype, eps):
    x = make_input((17, 300), dtype, device)
    w, b = make_params([300], dtype, device)
    g = make_grad((17, 300), dtype, device)
    check_against_reference(x, [300], w, b, g, eps=eps)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [7, 768, 1000, 1536, 3072, 8192, 65536])
def test_constant_rows(device, dtype, n):
    """Rows of equal values (zero variance): y is exactly the bias (x_hat = 0). (768, 1536
    and 3072 fill their CUDA mappings exactly: the kernels compiled for one N, 1/N inexact.)"""
    vals = torch.randn(6, 1) * 3
    x = vals.expand(6, n).contiguous().to(device=device, dtype=dtype)
    w, b = make_params([n], dtype, device)
    g = make_grad((6, n), dtype, device)
    res, ref = check_against_reference(x, [n], w, b, g, eps=1e-5, autograd=False, torch_check=False)
    # torch gives exactly the bias here (its statistics see zero variance); float32
    # must be within 1e-5 of it (float16/bfloat16 were held to their bound above).
    if dtype == torch.float32:
        torch.testing.assert_close(res["y"], b.expand(6, n), rtol=0, atol=1e-5)
    torch.testing.assert_close(res["mean"].to(torch.float64), ref["mean"], rtol=1e-6, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("offset", [10.0, 30.0, 300.0])
@pytest.mark.parametrize("n", [768, 1000, 8192, 32768, 65537])
def test_large_mean_float32(device, offset, n):
    """A large common offset (mean >> std): the statistics must not lose the variance
    to cancellation. The float32 error is no worse than torch's own float32
    layer_norm on the same input, and within 1e-5 where float32 allows it (at offset
    300 rounding x - mean alone costs ~ulp(300)/std ~ 1e-5, for torch too)."""
    # Enough rows that the per-row rounding of the mean averages out in the error
    # (it dominates at offset 300, for torch too).
    rows = 64 if n <= 8192 else 32
    x = (torch.randn(rows, n) + offset).to(device)
    w, b = make_params([n], torch.float32, device)
    g = make_grad((rows, n), torch.float32, device)
    ref = reference(x, [n], w, b, EPS, g)
    base = torch_result(x, [n], w, b, EPS, g)
    res = run_all_ops(x, [n], w, b, g)
    for k in ("y", "dx", "dw", "db"):
        for suffix in (("",) if k == "y" else ("", "_o")):
            sc = ref.get(k + "_scale")
            err, terr = rel_err(res[k + suffix], ref[k], sc), rel_err(base[k], ref[k], sc)
            assert err <= 1.5 * terr + 1e-6, f"{k}{suffix}: error {err:.3e} vs torch's {terr:.3e}"
            if offset <= 30:
                assert err <= TOL[torch.float32], f"{k}{suffix}: error {err:.3e}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_size_normalized_dim(device, dtype):
    """normalized_shape with a 0 dim: as aten, empty output, mean 0 and rstd NaN."""
    x = torch.randn(4, 0, device=device, dtype=dtype)
    w = torch.randn(0, device=device, dtype=dtype)
    b = torch.randn(0, device=device, dtype=dtype)
    y, mean, rstd = ops.layer_norm_fwd(x, [0], w, b, EPS)
    ty, tmean, trstd = torch.native_layer_norm(x, [0], w, b, EPS)
    assert y.shape == ty.shape and mean.shape == tmean.shape and rstd.shape == trstd.shape
    assert (mean == 0).all() and torch.isnan(rstd).all()
    dx, dw, db = ops.layer_norm_bwd(torch.randn_like(x), x, [0], mean, rstd, w, b, ALL_TRUE)
    assert dx.shape == x.shape and dw.shape == (0,) and db.shape == (0,)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_rows_param_grads_are_zero(device, dtype):
    x = torch.randn(0, 3, 64, device=device, dtype=dtype)
    w, b = make_params([64], dtype, device)
    g = torch.randn(0, 3, 64, device=device, dtype=dtype)
    res = run_all_ops(x, [64], w, b, g)
    assert res["y"].shape == x.shape and res["mean"].shape == (0, 3, 1)
    for k in ("dw", "db", "dw_o", "db_o"):
        assert res[k].shape == (64,) and (res[k] == 0).all(), k
    assert res["dx"].shape == x.shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,n", [(1, 1), (3, 7), (129, 1000), (5, 4099), (2, 65537), (1024, 127)])
def test_every_output_element_written(device, dtype, rows, n, poison_uninitialized):
    """Outputs are fresh tensors: with uninitialized memory filled with NaN, every
    element of every output must be finite and match the reference."""
    x = make_input((rows, n), dtype, device)
    w, b = make_params([n], dtype, device)
    g = make_grad((rows, n), dtype, device)
    # Sanity: the poisoning is active for this allocation path.
    probe = torch.empty(16, device=device, dtype=dtype)
    assert torch.isnan(probe).all()
    res = run_all_ops(x, [n], w, b, g)
    for k, v in res.items():
        assert v is not None and torch.isfinite(v).all(), f"{k}: unwritten (NaN) or non-finite elements"
    out = fastlayernorm.layer_norm(x, [n], w, b, EPS)
    assert torch.isfinite(out).all()
    ref = reference(x, [n], w, b, EPS, g)
    for k in ("y", "dx", "dw", "db"):
        check_close(k, res[k], ref[k], dtype, scale=ref.get(k + "_scale"))


@pytest.mark.parametrize("device", DEVICES)
def test_functional_matches_op(device):
    """fastlayernorm.layer_norm: F.layer_norm's signature (int or tuple shapes)."""
    x = make_input((4, 6, 10), torch.float32, device)
    w, b = make_params([10], torch.float32, device)
    y = ops.layer_norm(x, [10], w, b, EPS, False)
    torch.testing.assert_close(fastlayernorm.layer_norm(x, 10, w, b), y, rtol=0, atol=0)
    torch.testing.assert_close(fastlayernorm.layer_norm(x, (10,), w, b, 1e-5), y, rtol=0, atol=0)
    torch.testing.assert_close(fastlayernorm.layer_norm(x, torch.Size([10]), weight=w, bias=b), y,
                               rtol=0, atol=0)
    torch.testing.assert_close(fastlayernorm.layer_norm(x, [10], w, b, memory_efficient=True), y,
                               rtol=0, atol=0)
    torch.testing.assert_close(fastlayernorm.layer_norm(x, [10]), F.layer_norm(x, [10]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_inference_and_no_grad(device):
    x = make_input((8, 100), torch.float32, device)
    w, b = make_params([100], torch.float32, device)
    w.requires_grad_(True)
    b.requires_grad_(True)
    expected = ops.layer_norm_fwd(x, [100], w.detach(), b.detach(), EPS)[0]
    with torch.no_grad():
        y = fastlayernorm.layer_norm(x, [100], w, b)
    assert not y.requires_grad
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    with torch.inference_mode():
        y = fastlayernorm.layer_norm(x, [100], w, b, memory_efficient=True)
        assert y.is_inference()
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_inputs_not_modified(device, dtype):
    x = make_input((12, 333), dtype, device)
    w, b = make_params([333], dtype, device)
    g = make_grad((12, 333), dtype, device)
    copies = [t.clone() for t in (x, w, b, g)]
    res = run_all_ops(x, [333], w, b, g)
    mean, rstd, y = res["mean"].clone(), res["rstd"].clone(), res["y"].clone()
    ops.layer_norm_bwd(g, x, [333], res["mean"], res["rstd"], w, b, ALL_TRUE)
    ops.layer_norm_bwd_from_output(g, res["y"], [333], res["rstd"], w, b, ALL_TRUE)
    for t, c in zip((x, w, b, g), copies):
        torch.testing.assert_close(t, c, rtol=0, atol=0)
    torch.testing.assert_close(res["mean"], mean, rtol=0, atol=0)
    torch.testing.assert_close(res["rstd"], rstd, rtol=0, atol=0)
    torch.testing.assert_close(res["y"], y, rtol=0, atol=0)
