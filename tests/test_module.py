"""fastlayernorm.LayerNorm against torch.nn.LayerNorm: a drop-in subclass."""
from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import fastlayernorm
from conftest import DEVICES, make_input, rel_err

FastLN = fastlayernorm.LayerNorm

CONFIGS = [
    dict(normalized_shape=64),
    dict(normalized_shape=(8, 16), eps=1e-6),
    dict(normalized_shape=[33], elementwise_affine=False),
    dict(normalized_shape=1000, bias=False),
    dict(normalized_shape=7, eps=0.1),
]


def _randomize(m: nn.Module):
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.rand_like(p) + 0.5)


def _input_for(m: nn.LayerNorm, device, dtype=torch.float32, rows=(3, 5)):
    return make_input((*rows, *m.normalized_shape), dtype, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_matches_nn_layernorm(device, cfg):
    ref = nn.LayerNorm(**cfg, device=device)
    _randomize(ref)
    ours = FastLN(**cfg, device=device)
    ours.load_state_dict(ref.state_dict())
    x = _input_for(ref, device).requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y_ref = ours(x), ref(x2)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    assert rel_err(y, y_ref) <= 1e-5
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    assert rel_err(x.grad, x2.grad) <= 1e-5
    for (name, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        assert rel_err(p.grad, q.grad) <= 1e-5, name


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_attributes_repr_isinstance(cfg):
    ref, ours = nn.LayerNorm(**cfg), FastLN(**cfg)
    assert isinstance(ours, nn.LayerNorm) and isinstance(ours, nn.Module)
    assert issubclass(FastLN, nn.LayerNorm)
    assert repr(ours) == repr(ref)
    assert ours.extra_repr() == ref.extra_repr()
    for attr in ("normalized_shape", "eps", "elementwise_affine"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert (ours.weight is None) == (ref.weight is None)
    assert (ours.bias is None) == (ref.bias is None)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert list(ours.state_dict().keys()) == list(ref.state_dict().keys())
    assert FastLN.memory_efficient is False and ours.memory_efficient is False


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_state_dict_round_trip_both_ways(cfg):
    ref = nn.LayerNorm(**cfg)
    _randomize(ref)
    ours = FastLN(**cfg)
    ours.load_state_dict(ref.state_dict(), strict=True)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=0, atol=0)
    # ... and back: fastlayernorm -> torch, through a serialized file.
    _randomize(ours)
    buf = io.BytesIO()
    torch.save(ours.state_dict(), buf)
    buf.seek(0)
    back = nn.LayerNorm(**cfg)
    back.load_state_dict(torch.load(buf), strict=True)
    for k, v in ours.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v, rtol=0, atol=0)
    x = _input_for(ref, "cpu")
    assert rel_err(ours(x), back(x)) <= 1e-5


def test_state_dict_inside_a_model():
    """A model using nn.LayerNorm loads into the same model using fastlayernorm."""
    def model(ln):
        return nn.Sequential(nn.Linear(16, 32), ln(32), nn.GELU(), nn.Linear(32, 8), ln(8, eps=1e-6))

    ref = model(nn.LayerNorm)
    _randomize(ref)
    ours = model(FastLN)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 16)
    assert rel_err(ours(x), ref(x)) <= 1e-5
    back = model(nn.LayerNorm)
    back.load_state_dict(ours.state_dict())
    assert rel_err(back(x), ref(x)) <= 1e-5


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_reset_parameters(cfg):
    ours, ref = FastLN(**cfg), nn.LayerNorm(**cfg)
    _randomize(ours)
    ours.reset_parameters()
    for (n, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    if ours.weight is not None:
        assert (ours.weight == 1).all()
    if ours.bias is not None:
        assert (ours.bias == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_meta_device_init_then_to_empty(device, cfg):
    m = FastLN(**cfg, device="meta")
    for p in m.parameters():
        assert p.is_meta
    # Shape propagation on the meta device: the ops have Meta kernels.
    x_meta = torch.empty(2, 3, *m.normalized_shape, device="meta")
    y_meta = m(x_meta)
    assert y_meta.is_meta and y_meta.shape == x_meta.shape
    m = m.to_empty(device=device)
    m.reset_parameters()
    ref = nn.LayerNorm(**cfg, device=device)
    for (n, p), (_, q) in zip(m.named_parameters(), ref.named_parameters()):
        assert p.device.type == device
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    x = _input_for(m, device)
    assert rel_err(m(x), ref(x)) <= 1e-5
    assert isinstance(m, FastLN)


@pytest.mark.parametrize("device", DEVICES)
def test_switch_class_of_existing_instance(device):
    """module.__class__ = fastlayernorm.LayerNorm keeps parameters (the same objects),
    buffers, hooks and training state, and changes only the forward computation."""
    m = nn.LayerNorm((4, 16), eps=1e-6, device=device)
    _randomize(m)
    m.eval()
    params_before = {n: p for n, p in m.named_parameters()}
    calls = []
    h1 = m.register_forward_pre_hook(lambda mod, args: calls.append("pre"))
    h2 = m.register_forward_hook(lambda mod, args, out: calls.append("fwd"))
    h3 = m.register_full_backward_hook(lambda mod, gi, go: calls.append("bwd"))
    m.weight.register_hook(lambda g: calls.append("param") or None)
    x = make_input((3, 4, 16), torch.float32, device).requires_grad_(True)
    y_ref = m(x)
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    ref_grads = (x.grad.clone(), m.weight.grad.clone(), m.bias.grad.clone())
    assert sorted(calls) == sorted(["pre", "fwd", "param", "bwd"])
    x.grad = None
    m.zero_grad(set_to_none=True)
    calls.clear()

    m.__class__ = FastLN
    assert isinstance(m, FastLN) and isinstance(m, nn.LayerNorm)
    assert m.memory_efficient is False  # the class attribute
    assert {n: p for n, p in m.named_parameters()} == params_before
    for n, p in m.named_parameters():
        assert p is params_before[n]
    assert not m.training and m.eps == 1e-6 and m.normalized_shape == (4, 16)

    y = m(x)
    assert sorted(calls) == ["fwd", "pre"]
    assert rel_err(y, y_ref) <= 1e-5
    y.backward(g)
    assert sorted(calls) == sorted(["pre", "fwd", "param", "bwd"])
    for a, e in zip((x.grad, m.weight.grad, m.bias.grad), ref_grads):
        assert rel_err(a, e) <= 1e-5
    # Removing hooks still works after the switch.
    for h in (h1, h2, h3):
        h.remove()
    calls.clear()
    m(x)
    assert calls == []
    # And back again.
    m.__class__ = nn.LayerNorm
    assert rel_err(m(x), y_ref) <= 1e-5


def test_switch_class_uses_fastlayernorm_op():
    """After switching, forward goes through torch.ops.fastlayernorm.layer_norm."""
    m = nn.LayerNorm(32)
    m.__class__ = FastLN
    x = torch.randn(2, 32)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        m(x)
    names = {e.name for e in prof.events()}
    assert any(n.startswith("fastlayernorm::") for n in names), sorted(names)
    assert "aten::native_layer_norm" not in names


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_module_dtype_conversion(device, dtype):
    m = FastLN(48, device=device)
    _randomize(m)
    ref = copy.deepcopy(m)
    ref.__class__ = nn.LayerNorm
    m, ref = m.to(dtype), ref.to(dtype)
    assert m.weight.dtype == dtype
    x = make_input((7, 48), dtype, device)
    y, y_ref = m(x), ref(x)
    assert y.dtype == y_ref.dtype == dtype
    assert rel_err(y, y_ref) <= {torch.float64: 1e-10}.get(dtype, 1e-2)


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_memory_efficient_instance_attribute(memory_efficient):
    m = FastLN(20)
    _randomize(m)
    m.memory_efficient = memory_efficient
    assert FastLN.memory_efficient is False  # the instance attribute does not leak
    assert FastLN(20).memory_efficient is False
    x = torch.randn(4, 20, requires_grad=True)
    y = m(x)
    y.sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    ref = nn.LayerNorm(20)
    ref.load_state_dict(m.state_dict())
    ref(x2).sum().backward()
    assert rel_err(x.grad, x2.grad) <= 1e-5


def test_deepcopy_and_pickle():
    m = FastLN((3, 5), eps=1e-4)
    _randomize(m)
    m.memory_efficient = True
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert type(clone) is FastLN and clone.memory_efficient is True
        x = torch.randn(2, 3, 5)
        torch.testing.assert_close(clone(x), m(x), rtol=0, atol=0)


def test_whole_module_save_load(tmp_path):
    m = nn.Sequential(nn.Linear(8, 8), FastLN(8))
    _randomize(m)
    torch.save(m, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert type(loaded[1]) is FastLN
    x = torch.randn(3, 8)
    torch.testing.assert_close(loaded(x), m(x), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_higher_rank_and_single_row(device):
    m = FastLN(16, device=device)
    _randomize(m)
    ref = nn.LayerNorm(16, device=device)
    ref.load_state_dict(m.state_dict())
    for shape in [(16,), (1, 16), (2, 3, 4, 5, 16), (0, 16)]:
        x = make_input(shape, torch.float32, device)
        y = m(x)
        assert y.shape == x.shape
        if x.numel():
            assert rel_err(y, ref(x)) <= 1e-5
