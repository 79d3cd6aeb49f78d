"""Bad input raises RuntimeError or ValueError whose message names the argument and
what was expected and given -- from every entry point and on every device (the Meta
kernels, used by torch.compile / torch.export, check the same)."""
from __future__ import annotations

import re

import pytest
import torch

import fastlayernorm

ops = torch.ops.fastlayernorm

# "meta" runs the same checks through the Meta (fake-tensor) kernels.
DEVICES = ["cpu", "meta", pytest.param("cuda", marks=pytest.mark.cuda)]


def _other_device(device):
    """A device different from `device`, for the device-mismatch checks."""
    return "meta" if device == "cpu" else "cpu"


def forward_entry_points():
    """Each callable takes (x, normalized_shape, weight, bias, eps)."""
    return {
        "layer_norm_fwd": lambda x, s, w, b, e: ops.layer_norm_fwd(x, s, w, b, e),
        "_layer_norm_fwd_pairs": lambda x, s, w, b, e: ops._layer_norm_fwd_pairs(x, s, w, b, e),
        "layer_norm": lambda x, s, w, b, e: ops.layer_norm(x, s, w, b, e, False),
        "layer_norm_mem_eff": lambda x, s, w, b, e: ops.layer_norm(x, s, w, b, e, True),
        "functional": lambda x, s, w, b, e: fastlayernorm.layer_norm(x, s, w, b, e),
    }


ENTRY = list(forward_entry_points())


def _call(entry, *args):
    return forward_entry_points()[entry](*args)


def _raises(exc, *words):
    """pytest.raises whose message must contain every word (literally)."""
    return pytest.raises(exc, match="(?s)" + "".join(f"(?=.*{re.escape(w)})" for w in words))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("entry", ENTRY)
@pytest.mark.parametrize(
    "shape,normalized_shape",
    [((4, 8), [16]), ((4, 8), [4, 4]), ((8,), [2, 8]), ((2, 3, 8), [2, 8]), ((4, 8), [8, 1])],
    ids=str,
)
def test_normalized_shape_mismatch(device, entry, shape, normalized_shape):
    x = torch.randn(*shape, device=device)
    with _raises(RuntimeError, "normalized_shape", str(list(normalized_shape)), str(list(shape))):
        _call(entry, x, normalized_shape, None, None, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("entry", ENTRY)
@pytest.mark.parametrize("which", ["weight", "bias"])
def test_param_wrong_shape(device, entry, which):
    x = torch.randn(4, 8, device=device)
    bad = torch.randn(16, device=device)
    good = torch.randn(8, device=device)
    w, b = (bad, good) if which == "weight" else (good, bad)
    with _raises(RuntimeError, which, "shape", "[8]", "[16]"):
        _call(entry, x, [8], w, b, 1e-5)
    # A parameter with the right numel but the wrong shape.
    x = torch.randn(4, 2, 4, device=device)
    bad = torch.randn(8, device=device)
    good = torch.randn(2, 4, device=device)
    w, b = (bad, good) if which == "weight" else (good, bad)
    with _raises(RuntimeError, which, "[2, 4]", "[8]"):
        _call(entry, x, [2, 4], w, b, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("entry", ENTRY)
@pytest.mark.parametrize("which", ["weight", "bias"])
@pytest.mark.parametrize(
    "x_dtype,p_dtype",
    [
        (torch.float32, torch.float64),
        (torch.float32, torch.float16),
        (torch.float32, torch.bfloat16),
        (torch.float64, torch.float32),
        (torch.bfloat16, torch.float16),
        (torch.float16, torch.bfloat16),
        (torch.bfloat16, torch.float64),
        (torch.float32, torch.int64),
    ],
    ids=str,
)
def test_param_wrong_dtype(device, entry, which, x_dtype, p_dtype):
    x = torch.randn(4, 8, device=device, dtype=x_dtype)
    bad = torch.ones(8, device=device, dtype=p_dtype)
    w, b = (bad, None) if which == "weight" else (None, bad)
    name = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half",
            torch.bfloat16: "BFloat16", torch.int64: "Long"}
    with _raises(RuntimeError, which, "dtype", name[x_dtype], name[p_dtype]):
        _call(entry, x, [8], w, b, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("entry", ENTRY)
def test_weight_and_bias_dtypes_differ(device, entry):
    x = torch.randn(4, 8, device=device, dtype=torch.bfloat16)
    w = torch.ones(8, device=device, dtype=torch.float32)
    b = torch.zeros(8, device=device, dtype=torch.bfloat16)
    with _raises(RuntimeError, "weight", "bias", "dtype"):
        _call(entry, x, [8], w, b, 1e-5)
    with _raises(RuntimeError, "weight", "bias", "dtype"):
        _call(entry, x, [8], b, w, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("entry", ENTRY)
@pytest.mark.parametrize("which", ["weight", "bias"])
def test_param_wrong_device(device, entry, which):
    other = _other_device(device)
    x = torch.randn(4, 8, device=device)
    bad = torch.ones(8, device=other)
    w, b = (bad, None) if which == "weight" else (None, bad)
    with _raises(RuntimeError, which, "device", other):
        _call(entry, x, [8], w, b, 1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("entry", ENTRY)
def test_cpu_input_cuda_weight(entry):
    x = torch.randn(4, 8)
    w = torch.ones(8, device="cuda")
    with _raises(RuntimeError, "weight", "device", "cuda"):
        _call(entry, x, [8], w, None, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("entry", ENTRY)
@pytest.mark.parametrize(
    "dtype,name",
    [(torch.int64, "Long"), (torch.int32, "Int"), (torch.int16, "Short"), (torch.uint8, "Byte"),
     (torch.int8, "Char"), (torch.bool, "Bool"), (torch.complex64, "ComplexFloat"),
     (torch.complex128, "ComplexDouble")],
    ids=str,
)
def test_unsupported_input_dtype(device, entry, dtype, name):
    x = torch.ones(4, 8, device=device, dtype=dtype)
    with _raises(RuntimeError, "input", "dtype", name):
        _call(entry, x, [8], None, None, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("entry", ENTRY)
@pytest.mark.parametrize("eps", [-1e-5, -1.0, float("nan"), float("-inf"), float("inf")])
def test_bad_eps(device, entry, eps):
    x = torch.randn(4, 8, device=device)
    with _raises(ValueError, "eps"):
        _call(entry, x, [8], None, None, eps)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("entry", ENTRY)
def test_empty_normalized_shape(device, entry):
    x = torch.randn(4, 8, device=device)
    with _raises(ValueError, "normalized_shape"):
        _call(entry, x, [], None, None, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("entry", ENTRY)
def test_negative_normalized_shape(device, entry):
    x = torch.randn(4, 8, device=device)
    with pytest.raises((ValueError, RuntimeError), match="normalized_shape"):
        _call(entry, x, [-8], None, None, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_module_errors(device):
    m = fastlayernorm.LayerNorm(8, device=device)
    with _raises(RuntimeError, "normalized_shape", "[8]", "[4, 16]"):
        m(torch.randn(4, 16, device=device))
    with _raises(RuntimeError, "input", "dtype", "Long"):
        m(torch.ones(4, 8, dtype=torch.long, device=device))
    with _raises(RuntimeError, "weight", "dtype", "Double"):
        m.double()(torch.randn(4, 8, device=device))
    m.float()
    m.eps = -1.0
    with _raises(ValueError, "eps"):
        m(torch.randn(4, 8, device=device))


def test_module_bad_construction_like_torch():
    """Constructor arguments are torch's: the same errors as nn.LayerNorm."""
    for args in [((),), ((0.5,),)]:
        try:
            torch.nn.LayerNorm(*args)
        except Exception as e:  # noqa: BLE001
            with pytest.raises(type(e)):
                fastlayernorm.LayerNorm(*args)


# --------------------------------------------------------------------------------------
# backward ops
# --------------------------------------------------------------------------------------


def _bwd_setup(device, dtype=torch.float32):
    x = torch.randn(4, 8, device=device, dtype=dtype)
    w = torch.rand(8, device=device, dtype=dtype) + 0.5
    b = torch.randn(8, device=device, dtype=dtype)
    y, mean, rstd = ops.layer_norm_fwd(x, [8], w, b, 1e-5)
    g = torch.randn(4, 8, device=device, dtype=dtype)
    return x, w, b, y, mean, rstd, g


M = [True, True, True]


@pytest.mark.parametrize("device", DEVICES)
def test_backward_bad_grad_out(device):
    x, w, b, y, mean, rstd, g = _bwd_setup(device)
    bad_shape = torch.randn(4, 9, device=device)
    with _raises(RuntimeError, "grad_out", "shape", "[4, 8]", "[4, 9]"):
        ops.layer_norm_bwd(bad_shape, x, [8], mean, rstd, w, b, M)
    with _raises(RuntimeError, "grad_out", "shape"):
        ops.layer_norm_bwd_from_output(bad_shape, y, [8], rstd, w, b, M)
    bad_dtype = g.double()
    with _raises(RuntimeError, "grad_out", "dtype", "Double"):
        ops.layer_norm_bwd(bad_dtype, x, [8], mean, rstd, w, b, M)
    with _raises(RuntimeError, "grad_out", "dtype", "Double"):
        ops.layer_norm_bwd_from_output(bad_dtype, y, [8], rstd, w, b, M)
    bad_device = torch.randn(4, 8, device=_other_device(device))
    with _raises(RuntimeError, "grad_out", "device"):
        ops.layer_norm_bwd(bad_device, x, [8], mean, rstd, w, b, M)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_bad_stats(device):
    x, w, b, y, mean, rstd, g = _bwd_setup(device)
    with _raises(RuntimeError, "rstd", "dtype", "Double"):
        ops.layer_norm_bwd(g, x, [8], mean, rstd.double(), w, b, M)
    with _raises(RuntimeError, "mean", "dtype", "Half"):
        ops.layer_norm_bwd(g, x, [8], mean.half(), rstd, w, b, M)
    with _raises(RuntimeError, "rstd", "4", "3"):
        ops.layer_norm_bwd(g, x, [8], mean, rstd[:3], w, b, M)
    with _raises(RuntimeError, "mean", "4", "5"):
        ops.layer_norm_bwd(g, x, [8], torch.zeros(5, 1, device=device), rstd, w, b, M)
    with _raises(RuntimeError, "rstd", "dtype"):
        ops.layer_norm_bwd_from_output(g, y, [8], rstd.double(), w, b, M)
    with _raises(RuntimeError, "rstd", "device"):
        ops.layer_norm_bwd_from_output(g, y, [8], torch.ones(4, 1, device=_other_device(device)), w, b, M)
    # bfloat16 input keeps float32 statistics: bfloat16 ones are rejected.
    x, w, b, y, mean, rstd, g = _bwd_setup(device, torch.bfloat16)
    with _raises(RuntimeError, "rstd", "dtype", "Float", "BFloat16"):
        ops.layer_norm_bwd(g, x, [8], mean, rstd.bfloat16(), w, b, M)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_bad_input_and_params(device):
    x, w, b, y, mean, rstd, g = _bwd_setup(device)
    with _raises(RuntimeError, "normalized_shape", "[4]", "[4, 8]"):
        ops.layer_norm_bwd(g, x, [4], mean, rstd, None, None, M)
    with _raises(RuntimeError, "weight", "shape"):
        ops.layer_norm_bwd(g, x, [8], mean, rstd, w[:4], b, M)
    with _raises(RuntimeError, "bias", "dtype", "Double"):
        ops.layer_norm_bwd_from_output(g, y, [8], rstd, w, b.double(), M)
    with _raises(ValueError, "normalized_shape"):
        ops.layer_norm_bwd(g, x, [], mean, rstd, None, None, M)
    xi = torch.ones(4, 8, dtype=torch.long, device=device)
    with _raises(RuntimeError, "input", "dtype", "Long"):
        ops.layer_norm_bwd(xi, xi, [8], mean, rstd, None, None, M)


def test_output_mask_must_have_three_entries():
    x, w, b, y, mean, rstd, g = _bwd_setup("cpu")
    with pytest.raises(RuntimeError):
        ops.layer_norm_bwd(g, x, [8], mean, rstd, w, b, [True, True])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_errors_do_not_leave_state(device):
    """After an error, the op still works (nothing left half-initialized)."""
    x = torch.randn(4, 8, device=device)
    with pytest.raises(RuntimeError):
        ops.layer_norm_fwd(x, [16], None, None, 1e-5)
    y = ops.layer_norm_fwd(x, [8], None, None, 1e-5)[0]
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(x, [8]), rtol=1e-5, atol=1e-5)
