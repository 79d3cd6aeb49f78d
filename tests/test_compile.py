"""torch.compile (fullgraph, no graph breaks, forward and backward match eager),
torch.export of a module, and TorchScript (script, save, load, backward)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import fastlayernorm
from conftest import DEVICES, make_grad, make_input, rel_err

FastLN = fastlayernorm.LayerNorm
ops = torch.ops.fastlayernorm


class Block(nn.Module):
    """A small transformer-ish block: Linear -> fastlayernorm.LayerNorm -> GELU -> Linear
    -> LayerNorm over two dims (normalized_shape of rank 2)."""

    def __init__(self, d=64, memory_efficient=False):
        super().__init__()
        self.fc1 = nn.Linear(d, 2 * d)
        self.ln1 = FastLN(2 * d)
        self.fc2 = nn.Linear(2 * d, d)
        self.ln2 = FastLN((4, d // 4), eps=1e-6)
        self.ln1.memory_efficient = memory_efficient
        with torch.no_grad():
            for ln in (self.ln1, self.ln2):
                ln.weight.uniform_(0.5, 1.5)
                ln.bias.normal_(0, 0.5)

    def forward(self, x):
        h = nn.functional.gelu(self.ln1(self.fc1(x)))
        h = self.fc2(h)
        h = self.ln2(h.unflatten(-1, (4, -1))).flatten(-2)
        return h + x


def _fwd_bwd(model, x, g):
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = model(x)
    y.backward(g)
    grads = {n.replace("_orig_mod.", ""): p.grad.detach().clone() for n, p in model.named_parameters()}
    return y.detach(), x.grad, grads


def _assert_matches(eager, compiled, tol):
    (y0, dx0, g0), (y1, dx1, g1) = eager, compiled
    assert rel_err(y1, y0) <= tol, f"y: {rel_err(y1, y0):.3e}"
    assert rel_err(dx1, dx0) <= tol, f"dx: {rel_err(dx1, dx0):.3e}"
    for n in g0:
        assert rel_err(g1[n], g0[n]) <= tol, f"{n}: {rel_err(g1[n], g0[n]):.3e}"


def _graph_break_count(fn, *args):
    explain = torch._dynamo.explain(fn)(*args)
    return explain.graph_break_count, explain.graph_count


# --------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_compile_inductor_fullgraph_matches_eager(device, memory_efficient, dynamo_reset):
    model = Block(memory_efficient=memory_efficient).to(device)
    x = make_input((8, 64), torch.float32, device)
    g = make_grad((8, 64), torch.float32, device)
    assert _graph_break_count(model, x) == (0, 1)
    torch._dynamo.reset()
    eager = _fwd_bwd(model, x, g)
    compiled_model = torch.compile(model, fullgraph=True, backend="inductor")
    compiled = _fwd_bwd(compiled_model, x, g)
    # Linear layers may be fused/reordered by inductor: float32 rounding only.
    _assert_matches(eager, compiled, 1e-5)


def _recording_backend():
    from torch._dynamo.testing import AotEagerAndRecordGraphs

    return AotEagerAndRecordGraphs()


def _ops_in(graphs):
    names = set()
    for gm in graphs:
        for node in gm.graph.nodes:
            if node.op == "call_function":
                names.add(str(node.target))
    return names


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("memory_efficient", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_compile_traces_custom_ops(device, memory_efficient, dtype, dynamo_reset):
    """The compiled forward calls fastlayernorm._layer_norm_fwd_pairs (the forward the
    autograd Function runs: the statistics as (mean, rstd) pairs) and the compiled backward
    the backward op chosen by memory_efficient; results equal eager exactly (the same
    kernels run)."""
    backend = _recording_backend()
    m = FastLN(96, device=device, dtype=dtype)
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_()
    m.memory_efficient = memory_efficient
    x = make_input((5, 7, 96), dtype, device)
    g = make_grad((5, 7, 96), dtype, device)
    eager = _fwd_bwd(m, x, g)
    compiled = _fwd_bwd(torch.compile(m, fullgraph=True, backend=backend), x, g)
    for a, e in zip((compiled[0], compiled[1], *compiled[2].values()), (eager[0], eager[1], *eager[2].values())):
        torch.testing.assert_close(a, e, rtol=0, atol=0)
    fw, bw = _ops_in(backend.fw_graphs), _ops_in(backend.bw_graphs)
    assert "fastlayernorm._layer_norm_fwd_pairs.default" in fw, fw
    expected_bwd = "fastlayernorm.layer_norm_bwd_from_output.default" if memory_efficient \
        else "fastlayernorm.layer_norm_bwd.default"
    assert expected_bwd in bw, bw
    assert not any("native_layer_norm" in n for n in fw | bw), (fw, bw)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_dynamic_shapes_no_recompile(device, dynamo_reset):
    """dynamic=True: one graph serves every batch size and sequence length."""
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    m = FastLN(32, device=device)
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_()
    cm = torch.compile(m, fullgraph=True, dynamic=True, backend=counter)
    frames = None
    for shape in [(3, 32), (5, 32), (17, 32), (9, 32), (64, 32)]:
        x = make_input(shape, torch.float32, device).requires_grad_(True)
        y = cm(x)
        y.sum().backward()
        ref = nn.functional.layer_norm(x, [32], m.weight, m.bias, m.eps)
        assert rel_err(y, ref) <= 1e-5
        # (Compiling a module call takes 2 frames on the first call, for
        # nn.LayerNorm too; what matters is that new sizes add none.)
        frames = counter.frame_count if frames is None else frames
    assert counter.frame_count == frames, (counter.frame_count, frames)

    # The functional form: exactly one frame.
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    f = torch.compile(lambda x: fastlayernorm.layer_norm(x, [32], m.weight, m.bias), fullgraph=True,
                      dynamic=True, backend=counter)
    for rows in (3, 5, 17, 9, 64):
        f(make_input((rows, 32), torch.float32, device).requires_grad_(True)).sum().backward()
    assert counter.frame_count == 1, counter.frame_count


@pytest.mark.parametrize("device", DEVICES)
def test_compile_functional_and_raw_ops(device, dynamo_reset):
    """fastlayernorm.layer_norm and the raw ops inside a compiled function."""

    def fn(x, w, b):
        y = fastlayernorm.layer_norm(x, (x.shape[-1],), w, b, 1e-5)
        y2, mean, rstd = ops.layer_norm_fwd(x * 2, [x.shape[-1]], w, b, 1e-5)
        dx, dw, db = ops.layer_norm_bwd(y, x * 2, [x.shape[-1]], mean, rstd, w, b, [True, True, True])
        dx2, _, _ = ops.layer_norm_bwd_from_output(y, y2, [x.shape[-1]], rstd, w, b, [True, False, False])
        return y + y2, dx, dw, db, dx2

    x = make_input((6, 40), torch.float32, device)
    w = torch.rand(40, device=device) + 0.5
    b = torch.randn(40, device=device)
    eager = fn(x, w, b)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(x, w, b)
    for a, e in zip(compiled, eager):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_under_no_grad_and_inference(device, dynamo_reset):
    m = Block().to(device)
    x = make_input((4, 64), torch.float32, device)
    cm = torch.compile(m, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        ref = m(x)
        torch.testing.assert_close(cm(x), ref, rtol=1e-6, atol=1e-6)
    with torch.inference_mode():
        torch.testing.assert_close(cm(x), ref, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------
# torch.export
# --------------------------------------------------------------------------------------


def _exported_ops(ep):
    return {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("device", DEVICES)
def test_export_module(device, tmp_path):
    model = Block().to(device).eval()
    x = make_input((8, 64), torch.float32, device)
    batch = torch.export.Dim("batch", min=2, max=4096)
    ep = torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}})
    names = _exported_ops(ep)
    assert any(n.startswith("fastlayernorm.") for n in names), names
    assert not any("native_layer_norm" in n for n in names), names
    for rows in (8, 3, 100):
        xi = make_input((rows, 64), torch.float32, device)
        assert rel_err(ep.module()(xi), model(xi)) <= 1e-6
    # Serialized and loaded back.
    path = tmp_path / "block.pt2"
    torch.export.save(ep, path)
    loaded = torch.export.load(path)
    xi = make_input((5, 64), torch.float32, device)
    assert rel_err(loaded.module()(xi), model(xi)) <= 1e-6
    # Inference IR (decomposed) keeps the custom op as one node.
    dec = ep.run_decompositions()
    assert any(n.startswith("fastlayernorm.") for n in _exported_ops(dec))
    assert rel_err(dec.module()(xi), model(xi)) <= 1e-6


@pytest.mark.parametrize("device", DEVICES)
def test_export_then_train(device):
    """The exported module's forward/backward match eager (training IR)."""
    model = Block(memory_efficient=True).to(device)
    x = make_input((6, 64), torch.float32, device)
    g = make_grad((6, 64), torch.float32, device)
    ep = torch.export.export(model, (x,))
    mod = ep.module()
    eager = _fwd_bwd(model, x, g)
    xe = x.detach().clone().requires_grad_(True)
    y = mod(xe)
    y.backward(g)
    assert rel_err(y, eager[0]) <= 1e-6
    assert rel_err(xe.grad, eager[1]) <= 1e-6


# --------------------------------------------------------------------------------------
# TorchScript
# --------------------------------------------------------------------------------------


class ScriptBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 32)
        self.ln = FastLN(32)
        self.ln2 = FastLN((2, 16), elementwise_affine=False)

    def forward(self, x):
        return self.ln2(self.ln(self.fc(x)).view(x.shape[0], 2, 16))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_torchscript_script_save_load_backward(device, memory_efficient, tmp_path):
    model = ScriptBlock().to(device)
    with torch.no_grad():
        model.ln.weight.uniform_(0.5, 1.5)
        model.ln.bias.normal_()
    model.ln.memory_efficient = memory_efficient
    scripted = torch.jit.script(model)
    assert "fastlayernorm::layer_norm" in str(scripted.ln.graph)
    path = tmp_path / "scripted.pt"
    scripted.save(str(path))
    loaded = torch.jit.load(str(path), map_location=device)
    assert "fastlayernorm::layer_norm" in str(loaded.ln.graph)

    x = make_input((5, 32), torch.float32, device)
    g = make_grad((5, 2, 16), torch.float32, device)
    results = []
    for m in (model, loaded):
        xi = x.detach().clone().requires_grad_(True)
        y = m(xi)
        y.backward(g)
        results.append((y.detach(), xi.grad, [p.grad for p in m.parameters()]))
        for p in m.parameters():
            p.grad = None
    (y0, dx0, p0), (y1, dx1, p1) = results
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)
    torch.testing.assert_close(dx1, dx0, rtol=0, atol=0)
    for a, e in zip(p1, p0):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_torchscript_loaded_in_fresh_process(tmp_path):
    """A scripted module saved to disk loads and trains in a new process that only
    imports fastlayernorm (which registers fastlayernorm::layer_norm)."""
    model = ScriptBlock()
    path = tmp_path / "scripted.pt"
    torch.jit.script(model).save(str(path))
    x = torch.randn(3, 32)
    expected = model(x)
    torch.save({"x": x, "y": expected.detach()}, tmp_path / "io.pt")
    code = textwrap.dedent(f"""
        import torch, fastlayernorm
        m = torch.jit.load({str(path)!r})
        io = torch.load({str(tmp_path / 'io.pt')!r})
        x = io["x"].clone().requires_grad_(True)
        y = m(x)
        torch.testing.assert_close(y, io["y"], rtol=0, atol=0)
        y.square().sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        assert all(p.grad is not None for p in m.parameters())
        print("OK")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def test_torchscript_functional_op():
    """The op is callable from TorchScript functions as torch.ops.fastlayernorm.*."""

    @torch.jit.script
    def f(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor):
        y = torch.ops.fastlayernorm.layer_norm(x, [x.size(-1)], w, b, 1e-5, False)
        out, mean, rstd = torch.ops.fastlayernorm.layer_norm_fwd(x, [x.size(-1)], w, b, 1e-5)
        return y, out, mean, rstd

    x, w, b = torch.randn(4, 10), torch.rand(10) + 0.5, torch.randn(10)
    y, out, mean, rstd = f(x, w, b)
    torch.testing.assert_close(y, out, rtol=0, atol=0)
    assert rel_err(y, nn.functional.layer_norm(x, [10], w, b)) <= 1e-5
