"""Autocast parity: under torch.autocast, fastlayernorm gives the output dtype (and
gradient dtypes) of F.layer_norm, with matching values.

On CUDA layer_norm is on autocast's float32 list: the output is float32 whatever the
input dtype. On the CPU autocast leaves layer_norm alone: it runs in its inputs' dtypes.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastlayernorm
from conftest import make_input, rel_err

FastLN = fastlayernorm.LayerNorm

CASES = [
    # (device, autocast dtype)
    pytest.param("cuda", torch.float16, marks=pytest.mark.cuda, id="cuda-float16"),
    pytest.param("cuda", torch.bfloat16, marks=pytest.mark.cuda, id="cuda-bfloat16"),
    pytest.param("cpu", torch.bfloat16, id="cpu-bfloat16"),
    pytest.param("cpu", torch.float16, id="cpu-float16"),
]


def _tol(dtype):
    return 1e-5 if dtype == torch.float32 else 1e-2


def _leaves(*ts):
    return [None if t is None else t.detach().clone().requires_grad_(True) for t in ts]


@pytest.mark.parametrize("device,amp_dtype", CASES)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("p_dtype", [torch.float32, "same", None], ids=str)
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_functional_parity(device, amp_dtype, x_dtype, p_dtype, memory_efficient):
    n = 256
    x = make_input((6, n), x_dtype, device)
    if p_dtype is None:
        w = b = None
    else:
        pd = x_dtype if p_dtype == "same" else p_dtype
        w = (torch.rand(n) + 0.5).to(device=device, dtype=pd)
        b = torch.randn(n).to(device=device, dtype=pd)
    xo, wo, bo = _leaves(x, w, b)
    xt, wt, bt = _leaves(x, w, b)
    with torch.autocast(device, dtype=amp_dtype):
        try:
            ref = F.layer_norm(xt, [n], wt, bt, 1e-5)
        except RuntimeError as e:  # a combination torch itself rejects: so must we
            with pytest.raises(RuntimeError):
                fastlayernorm.layer_norm(xo, [n], wo, bo, 1e-5, memory_efficient=memory_efficient)
            pytest.skip(f"torch rejects it too: {e}")
        out = fastlayernorm.layer_norm(xo, [n], wo, bo, 1e-5, memory_efficient=memory_efficient)
    assert out.dtype == ref.dtype, (out.dtype, ref.dtype)
    assert out.device == ref.device and out.shape == ref.shape
    assert rel_err(out, ref) <= _tol(out.dtype)
    if device == "cuda":
        assert out.dtype == torch.float32  # autocast's float32 list
    g = torch.randn(out.shape, device=device).to(out.dtype)
    out.backward(g)
    ref.backward(g)
    for name, a, e in (("x", xo, xt), ("weight", wo, wt), ("bias", bo, bt)):
        if e is None:
            continue
        assert a.grad.dtype == e.grad.dtype == a.dtype, name
        all_fp32 = all(t is None or t.dtype == torch.float32 for t in (x, w, b))
        assert rel_err(a.grad, e.grad) <= (1e-5 if all_fp32 else 1e-2), name


def _model(ln_cls, device):
    torch.manual_seed(1234)
    m = nn.Sequential(nn.Linear(64, 128), ln_cls(128), nn.GELU(), nn.Linear(128, 64), ln_cls(64)).to(device)
    with torch.no_grad():
        for mod in m:
            if isinstance(mod, nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_()
    return m


@pytest.mark.parametrize("device,amp_dtype", CASES)
def test_model_parity(device, amp_dtype):
    """A Linear -> LayerNorm model under autocast: the same output dtype, values and
    parameter-gradient dtypes as with nn.LayerNorm."""
    ours, ref = _model(FastLN, device), _model(nn.LayerNorm, device)
    x = torch.randn(16, 64, device=device)
    with torch.autocast(device, dtype=amp_dtype):
        y, y_ref = ours(x), ref(x)
        h, h_ref = ours[:2](x), ref[:2](x)
    assert y.dtype == y_ref.dtype and h.dtype == h_ref.dtype
    # The rounding of the autocast Linear feeds both layer norms identically.
    assert rel_err(h, h_ref) <= _tol(h.dtype)
    assert rel_err(y, y_ref) <= 3e-2
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    for (n, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        assert p.grad.dtype == q.grad.dtype == torch.float32, n
        assert rel_err(p.grad, q.grad) <= 5e-2, (n, rel_err(p.grad, q.grad))


@pytest.mark.parametrize("device,amp_dtype", CASES)
def test_raw_ops_are_not_cast(device, amp_dtype):
    """Only the differentiable layer_norm takes part in autocast; the raw forward op
    keeps its inputs' dtypes (as aten::native_layer_norm does)."""
    x = make_input((4, 32), torch.float32, device)
    with torch.autocast(device, dtype=amp_dtype):
        y, mean, rstd = torch.ops.fastlayernorm.layer_norm_fwd(x, [32], None, None, 1e-5)
    assert y.dtype == torch.float32 and mean.dtype == torch.float32


@pytest.mark.cuda
@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16], ids=str)
def test_autocast_compiled(amp_dtype, dynamo_reset):
    """Under autocast, the compiled model's output dtype and values match eager."""
    m = _model(FastLN, "cuda")
    x = torch.randn(16, 64, device="cuda")
    cm = torch.compile(m, fullgraph=True, backend="aot_eager")
    with torch.autocast("cuda", dtype=amp_dtype):
        y = m(x)
        yc = cm(x)
    assert yc.dtype == y.dtype == torch.float32
    assert rel_err(yc, y) <= 1e-5


@pytest.mark.cuda
def test_autocast_disabled_region_and_scripted():
    m = _model(FastLN, "cuda")
    x = torch.randn(8, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        with torch.autocast("cuda", enabled=False):
            y = m(x)
    assert y.dtype == torch.float32
    assert rel_err(y, m(x)) == 0.0


# ---- the float32-output path without a cast pass (fastlayernorm._layer_norm_upcast) --

UPCAST_DEVICES = [pytest.param("cuda", marks=pytest.mark.cuda, id="cuda"),
                  pytest.param("cpu", id="cpu")]


@pytest.mark.parametrize("device", UPCAST_DEVICES)
@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("n", [8, 256, 1000, 4096, 4099, 8192])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("rows", [5, 29, 37])
def test_upcast_op_matches_widened_layer_norm(device, x_dtype, n, affine, rows):
    """_layer_norm_upcast(x) == F.layer_norm(x.float()) in value and dtype; its
    gradient reaches x in x's dtype, as through the cast's backward. (On CUDA, 5 rows
    take the few-row backward up to N=8192, 29 rows up to N=4096, 37 rows the tables.)"""
    x = make_input((rows, n), x_dtype, device)
    w = (torch.rand(n) + 0.5).to(device) if affine else None
    b = torch.randn(n).to(device) if affine else None
    xo, wo, bo = _leaves(x, w, b)
    xt, wt, bt = _leaves(x, w, b)
    out = torch.ops.fastlayernorm._layer_norm_upcast(xo, [n], wo, bo, 1e-5)
    ref = F.layer_norm(xt.float(), [n], wt, bt, 1e-5)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert rel_err(out, ref) <= 1e-5
    g = torch.randn(out.shape, device=device)
    out.backward(g)
    ref.backward(g)
    assert xo.grad.dtype == x_dtype
    assert rel_err(xo.grad, xt.grad) <= 1e-2
    if affine:
        assert wo.grad.dtype == bo.grad.dtype == torch.float32
        assert rel_err(wo.grad, wt.grad) <= 1e-4 and rel_err(bo.grad, bt.grad) <= 1e-4


@pytest.mark.parametrize("device", UPCAST_DEVICES)
def test_upcast_op_rejects_other_dtypes(device):
    x = make_input((4, 16), torch.float32, device)
    with pytest.raises(RuntimeError, match="float16 or bfloat16 input"):
        torch.ops.fastlayernorm._layer_norm_upcast(x, [16], None, None, 1e-5)
    xb = x.to(torch.bfloat16)
    wb = torch.ones(16, device=device, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="float32 weight"):
        torch.ops.fastlayernorm._layer_norm_upcast(xb, [16], wb, None, 1e-5)


def _aten_ops(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events()}


@pytest.mark.cuda
@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16], ids=str)
def test_autocast_does_not_cast_the_input(amp_dtype):
    """Under autocast, a low-precision input with float32 parameters is read as it is:
    no cast pass (aten::_to_copy) in the forward or the backward, while F.layer_norm
    casts (which shows the profiler sees the casts)."""
    n = 1024
    x = make_input((64, n), amp_dtype, "cuda").requires_grad_(True)
    w = (torch.rand(n, device="cuda") + 0.5).requires_grad_(True)
    b = torch.randn(n, device="cuda").requires_grad_(True)

    def run(fn):
        with torch.autocast("cuda", dtype=amp_dtype):
            y = fn(x, [n], w, b, 1e-5)
        y.backward(torch.ones_like(y))
        return y

    ours = _aten_ops(lambda: run(fastlayernorm.layer_norm))
    theirs = _aten_ops(lambda: run(F.layer_norm))
    assert "aten::_to_copy" in theirs
    assert "aten::_to_copy" not in ours, sorted(ours)
    assert "fastlayernorm::_layer_norm_fwd_upcast" in ours
    assert "fastlayernorm::_layer_norm_bwd_upcast" in ours
