"""Operator registration and autograd: torch.library.opcheck, float64 gradcheck,
the memory-efficient backward, saved tensors and double backward."""
from __future__ import annotations

import pytest
import torch

import fastlayernorm
from conftest import DEVICES, make_grad, make_input, make_params, ref_stats, rel_err

ops = torch.ops.fastlayernorm
EPS = 1e-5

# (input shape, normalized_shape)
SHAPES = [((4, 16), [16]), ((2, 3, 5, 7), [5, 7]), ((0, 8), [8]), ((3, 1), [1])]


def _args(shape, normalized_shape, dtype, device, weight=True, bias=True, requires_grad=False):
    x = make_input(shape, dtype, device)
    w, b = make_params(normalized_shape, dtype, device, weight=weight, bias=bias)
    if requires_grad:
        x.requires_grad_(True)
        for t in (w, b):
            if t is not None:
                t.requires_grad_(True)
    return x, w, b


# --------------------------------------------------------------------------------------
# opcheck
# --------------------------------------------------------------------------------------

OPCHECK_DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", OPCHECK_DTYPES, ids=str)
@pytest.mark.parametrize("shape,normalized_shape", SHAPES, ids=str)
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("affine", ["wb", "w", "b", "none"])
def test_opcheck_layer_norm(device, dtype, shape, normalized_shape, requires_grad, affine):
    x, w, b = _args(shape, normalized_shape, dtype, device, "w" in affine, "b" in affine, requires_grad)
    for memory_efficient in (False, True):
        torch.library.opcheck(ops.layer_norm.default, (x, normalized_shape, w, b, EPS, memory_efficient))
    # Defaults of the schema.
    torch.library.opcheck(ops.layer_norm.default, (x, normalized_shape))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", OPCHECK_DTYPES, ids=str)
@pytest.mark.parametrize("shape,normalized_shape", SHAPES, ids=str)
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("affine", ["wb", "none"])
def test_opcheck_layer_norm_fwd(device, dtype, shape, normalized_shape, requires_grad, affine):
    x, w, b = _args(shape, normalized_shape, dtype, device, "w" in affine, "b" in affine, requires_grad)
    torch.library.opcheck(ops.layer_norm_fwd.default, (x, normalized_shape, w, b, EPS))
    if not requires_grad:  # internal, not differentiable: its error is checked below
        torch.library.opcheck(ops._layer_norm_fwd_pairs.default, (x, normalized_shape, w, b, EPS))


@pytest.mark.parametrize("device", DEVICES)
def test_fwd_pairs_not_differentiable(device):
    """_layer_norm_fwd_pairs (internal: what the autograd Functions call below autograd)
    has no derivative: a clear error, never a silent zero gradient."""
    x, w, b = _args((4, 16), [16], torch.float32, device, True, True, True)
    y, pairs = ops._layer_norm_fwd_pairs(x, [16], w, b, EPS)
    with pytest.raises(RuntimeError, match="derivative for fastlayernorm::_layer_norm_fwd_pairs"):
        y.sum().backward()


def _bwd_args(shape, normalized_shape, dtype, device, weight, bias):
    x, w, b = _args(shape, normalized_shape, dtype, device, weight, bias)
    y, mean, rstd = ops.layer_norm_fwd(x, normalized_shape, w, b, EPS)
    g = make_grad(shape, dtype, device)
    return x, w, b, y, mean, rstd, g


MASKS = [[True, True, True], [True, False, False], [False, True, True], [False, False, True]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", OPCHECK_DTYPES, ids=str)
@pytest.mark.parametrize("shape,normalized_shape", SHAPES, ids=str)
@pytest.mark.parametrize("mask", MASKS, ids=str)
@pytest.mark.parametrize("affine", ["wb", "w", "none"])
def test_opcheck_backward_ops(device, dtype, shape, normalized_shape, mask, affine):
    x, w, b, y, mean, rstd, g = _bwd_args(shape, normalized_shape, dtype, device, "w" in affine, "b" in affine)
    torch.library.opcheck(ops.layer_norm_bwd.default, (g, x, normalized_shape, mean, rstd, w, b, mask))
    torch.library.opcheck(ops.layer_norm_bwd_from_output.default, (g, y, normalized_shape, rstd, w, b, mask))


# --------------------------------------------------------------------------------------
# gradcheck (float64)
# --------------------------------------------------------------------------------------


def _unpack(ts, w, b):
    """(x, weight, bias) from gradcheck's inputs, which leave out absent parameters."""
    it = iter(ts)
    x = next(it)
    ww = next(it) if w is not None else None
    bb = next(it) if b is not None else None
    return x, ww, bb


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,normalized_shape", [((3, 7), [7]), ((2, 3, 4, 5), [4, 5]), ((5, 1), [1])], ids=str)
@pytest.mark.parametrize("affine", ["wb", "w", "b", "none"])
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_gradcheck_layer_norm(device, shape, normalized_shape, affine, memory_efficient):
    if memory_efficient and normalized_shape == [1] and "w" not in affine:
        pytest.skip("N == 1 without weight: x_hat == 0, nothing to rebuild")
    x, w, b = _args(shape, normalized_shape, torch.float64, device, "w" in affine, "b" in affine, True)
    inputs = tuple(t for t in (x, w, b) if t is not None)

    def fn(*ts):
        xx, ww, bb = _unpack(ts, w, b)
        return fastlayernorm.layer_norm(xx, normalized_shape, ww, bb, 1e-3, memory_efficient=memory_efficient)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,normalized_shape", [((3, 7), [7]), ((2, 3, 4, 5), [4, 5])], ids=str)
@pytest.mark.parametrize("affine", ["wb", "none"])
def test_gradcheck_layer_norm_fwd(device, shape, normalized_shape, affine):
    """layer_norm_fwd is differentiable in all three outputs (output, mean, rstd)."""
    x, w, b = _args(shape, normalized_shape, torch.float64, device, "w" in affine, "b" in affine, True)
    inputs = tuple(t for t in (x, w, b) if t is not None)

    def fn(*ts):
        xx, ww, bb = _unpack(ts, w, b)
        return ops.layer_norm_fwd(xx, normalized_shape, ww, bb, 1e-3)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)

    # Gradients through mean/rstd match those of the explicit float64 formulas
    # (aten's native_layer_norm does not differentiate its mean/rstd outputs).
    def explicit(*ts):
        it = iter(ts)
        xx = next(it)
        ww = next(it) if w is not None else None
        bb = next(it) if b is not None else None
        mean, rstd = ref_stats(xx, len(normalized_shape), 1e-3)
        y = torch.nn.functional.layer_norm(xx, normalized_shape, ww, bb, 1e-3)
        return y, mean, rstd

    gm = torch.randn_like(ops.layer_norm_fwd(x, normalized_shape, w, b, 1e-3)[1])
    gr = torch.randn_like(gm)
    for select in (lambda o: (o[1] * gm).sum(), lambda o: (o[2] * gr).sum(),
                   lambda o: (o[0] ** 2).sum() + (o[1] * gm).sum() + (o[2] * gr).sum()):
        ours = torch.autograd.grad(select(fn(*inputs)), inputs, allow_unused=True)
        theirs = torch.autograd.grad(select(explicit(*inputs)), inputs, allow_unused=True)
        for a, e in zip(ours, theirs):
            if e is None:
                assert a is None or (a == 0).all()
                continue
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------------------
# memory-efficient backward, saved tensors, double backward
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rows,n", [(1, 7), (64, 1000), (16, 4099), (4, 8192), (333, 127)])
@pytest.mark.parametrize("affine", ["wb", "w", "b", "none"])
def test_memory_efficient_matches_normal_backward(device, dtype, rows, n, affine):
    x, w, b = _args((rows, n), [n], dtype, device, "w" in affine, "b" in affine)
    g = make_grad((rows, n), dtype, device)
    results = []
    for memory_efficient in (False, True):
        leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (x, w, b)]
        y = fastlayernorm.layer_norm(leaves[0], [n], leaves[1], leaves[2], EPS, memory_efficient=memory_efficient)
        y.backward(g)
        results.append((y.detach(), *[t.grad if t is not None else None for t in leaves]))
    (y0, dx0, dw0, db0), (y1, dx1, dw1, db1) = results
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)
    tol = 2e-6 if dtype == torch.float32 else 1e-2
    for name, a, e in (("dx", dx1, dx0), ("dw", dw1, dw0), ("db", db1, db0)):
        if e is None:
            assert a is None
            continue
        assert rel_err(a, e) <= tol, f"{name}: {rel_err(a, e):.3e}"


def _saved(fn):
    """Tensors saved for backward while running fn()."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


def _same_storage(a, b):
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


@pytest.mark.parametrize("device", DEVICES)
def test_memory_efficient_does_not_save_input(device):
    x, w, b = _args((8, 64), [64], torch.float32, device, requires_grad=True)
    y, saved = _saved(lambda: fastlayernorm.layer_norm(x, [64], w, b, memory_efficient=True))
    assert not any(_same_storage(t, x) for t in saved), "memory_efficient saved the input"
    assert any(_same_storage(t, y) for t in saved), "memory_efficient did not save the output"
    y, saved = _saved(lambda: fastlayernorm.layer_norm(x, [64], w, b))
    assert any(_same_storage(t, x) for t in saved), "the default backward should keep the input"
    assert not any(_same_storage(t, y) for t in saved)
    # The input may be modified in place after a memory-efficient forward.
    x2 = x.detach().clone().requires_grad_(True)
    h = x2 * 1.0
    y = fastlayernorm.layer_norm(h, [64], w, b, memory_efficient=True)
    h.mul_(3.0)
    y.sum().backward()
    assert torch.isfinite(x2.grad).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_module_memory_efficient_attribute(device, memory_efficient):
    m = fastlayernorm.LayerNorm(64, device=device)
    with torch.no_grad():
        m.weight.copy_(make_params([64], torch.float32, device)[0])
        m.bias.normal_()
    m.memory_efficient = memory_efficient
    x = make_input((8, 64), torch.float32, device).requires_grad_(True)
    y, saved = _saved(lambda: m(x))
    assert any(_same_storage(t, x) for t in saved) != memory_efficient
    ref = torch.nn.functional.layer_norm(x, [64], m.weight, m.bias, m.eps)
    g = torch.randn_like(y)
    ours = torch.autograd.grad(y, (x, m.weight, m.bias), g)
    theirs = torch.autograd.grad(ref, (x, m.weight, m.bias), g)
    for a, e in zip(ours, theirs):
        assert rel_err(a, e) <= 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_double_backward_raises(device, memory_efficient):
    """Double backward is not implemented: a clear error, not a silent zero."""
    x, w, b = _args((4, 16), [16], torch.float64, device, requires_grad=True)
    y = fastlayernorm.layer_norm(x, [16], w, b, memory_efficient=memory_efficient)
    (gx,) = torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        gx.sum().backward()


@pytest.mark.parametrize("device", DEVICES)
def test_partial_requires_grad(device):
    """Only the leaves that require grad get one; absent grads are not computed."""
    x, w, b = _args((5, 33), [33], torch.float32, device)
    for rx, rw, rb in [(True, False, False), (False, True, False), (False, False, True), (False, True, True)]:
        xx, ww, bb = (t.detach().clone().requires_grad_(r) for t, r in ((x, rx), (w, rw), (b, rb)))
        y = fastlayernorm.layer_norm(xx, [33], ww, bb)
        y.sum().backward()
        assert (xx.grad is not None) == rx and (ww.grad is not None) == rw and (bb.grad is not None) == rb
        ref = [t.detach().clone().requires_grad_(r) for t, r in ((x, rx), (w, rw), (b, rb))]
        torch.nn.functional.layer_norm(ref[0], [33], ref[1], ref[2]).sum().backward()
        for ours, theirs in zip((xx, ww, bb), ref):
            if theirs.grad is not None:
                assert rel_err(ours.grad, theirs.grad) <= 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_backward_twice_with_retain_graph(device):
    x, w, b = _args((6, 50), [50], torch.float32, device, requires_grad=True)
    for memory_efficient in (False, True):
        y = fastlayernorm.layer_norm(x, [50], w, b, memory_efficient=memory_efficient)
        g = torch.randn_like(y)
        first = torch.autograd.grad(y, (x, w, b), g, retain_graph=True)
        second = torch.autograd.grad(y, (x, w, b), g)
        for a, e in zip(first, second):
            torch.testing.assert_close(a, e, rtol=0, atol=0)


# --------------------------------------------------------------------------------------
# Calls no graph records (inference): the op below autograd, no statistics stored
# --------------------------------------------------------------------------------------

# (rows, N, input dtype, parameter dtype): the CUDA kernels' families (the short-row
# kernel at float32 N = 64 and 16-bit N = 768, one-pass and persistent register kernels,
# shifted rows, clusters, the fallback beyond the tables) and float64.
UNRECORDED_CASES = [(5, 64, torch.float32, torch.float32), (33, 768, torch.bfloat16, torch.bfloat16),
                    (33, 768, torch.float16, torch.float32), (17, 256, torch.bfloat16, torch.bfloat16),
                    (9, 1000, torch.float16, torch.float16), (3, 4099, torch.bfloat16, torch.float32),
                    (2, 65536, torch.float32, torch.float32), (3, 100, torch.float64, torch.float64),
                    (0, 16, torch.float32, torch.float32), (4, 0, torch.float32, torch.float32)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows,n,dtype,wdtype", UNRECORDED_CASES, ids=str)
@pytest.mark.parametrize("context", ["no_grad", "inference_mode", "no_requires_grad"])
def test_unrecorded_call_matches_recorded(device, rows, n, dtype, wdtype, context):
    """A call no graph records (grad mode off, inference mode, or no input requiring
    grad) runs the op below autograd, whose CUDA kernel stores no mean/rstd: its output
    is bitwise the recorded call's, which does store them for the backward."""
    if device == "cpu" and n > 4096:
        pytest.skip("the CPU path is the same composite either way; long rows cost CI time")
    x = make_input((rows, n), dtype, device)
    w, b = make_params([n], wdtype, device)
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, w, b)]
    recorded = fastlayernorm.layer_norm(leaves[0], [n], leaves[1], leaves[2], EPS)
    assert recorded.requires_grad
    if context == "no_grad":
        with torch.no_grad():
            out = fastlayernorm.layer_norm(leaves[0], [n], leaves[1], leaves[2], EPS)
    elif context == "inference_mode":
        with torch.inference_mode():
            out = fastlayernorm.layer_norm(x, [n], w, b, EPS)
    else:
        out = fastlayernorm.layer_norm(x, [n], w, b, EPS)
    assert not out.requires_grad and out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, recorded.detach())


@pytest.mark.parametrize("device", DEVICES)
def test_unrecorded_autocast_call_matches_recorded(device):
    """The autocast path (half/bfloat16 input, float32 parameters, float32 output) below
    autograd: bitwise the recorded call's output."""
    if device == "cpu":
        pytest.skip("CPU autocast leaves layer_norm alone")
    for n in (768, 1000, 4096):
        x = make_input((7, n), torch.bfloat16, device)
        w, b = make_params([n], torch.float32, device)
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, w, b)]
        with torch.autocast(device, dtype=torch.bfloat16):
            recorded = fastlayernorm.layer_norm(leaves[0], [n], leaves[1], leaves[2], EPS)
            with torch.no_grad():
                out = fastlayernorm.layer_norm(x, [n], w, b, EPS)
        assert recorded.dtype == out.dtype == torch.float32
        assert torch.equal(out, recorded.detach())


@pytest.mark.parametrize("device", DEVICES)
def test_forward_ad_still_raises(device):
    """Forward-mode AD is not implemented: an input with a tangent (and none requiring
    grad) takes the recorded path and its clear error, not the unrecorded one, which
    would drop the tangent."""
    import torch.autograd.forward_ad as fwAD

    x = make_input((3, 8), torch.float32, device)
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, torch.randn_like(x))
        assert not dual.requires_grad
        with pytest.raises(RuntimeError, match="jvp"):
            fastlayernorm.layer_norm(dual, [8])
