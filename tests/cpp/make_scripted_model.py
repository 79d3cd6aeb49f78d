"""ctest fixture: scripts fastlayernorm.LayerNorm in Python and saves it, with
its test data, for the C++ test test_scripted.cpp.

Usage: python make_scripted_model.py OUT.pt

The saved module holds two fastlayernorm.LayerNorm submodules and, as
buffers, the inputs, output gradients and the expected outputs and gradients
(computed with torch.nn.functional.layer_norm in float64), so the C++ program
loads a single file:
  forward(x)        -> ln(x)      ln: LayerNorm([6, 10]), random weight/bias
  forward_me(x_me)  -> ln_me(x_me) ln_me: LayerNorm(33, eps=1e-6), memory_efficient
"""
import sys

import torch
import torch.nn.functional as F

try:
    import fastlayernorm
except ImportError as exc:  # pragma: no cover
    sys.exit(
        f"make_scripted_model.py: cannot import fastlayernorm ({exc}); install the "
        "Python package first (pip install --no-build-isolation -e .) or configure "
        "with -DFASTLAYERNORM_TEST_SCRIPTED=OFF"
    )


def reference(ln: torch.nn.LayerNorm, x: torch.Tensor, grad_out: torch.Tensor):
    """Output and gradients of torch's layer_norm in float64."""
    x64 = x.double().requires_grad_()
    params = [p.detach().double().requires_grad_() if p is not None else None
              for p in (ln.weight, ln.bias)]
    y = F.layer_norm(x64, ln.normalized_shape, params[0], params[1], ln.eps)
    y.backward(grad_out.double())
    grads = [p.grad.float() if p is not None else torch.empty(0) for p in params]
    return y.detach().float(), x64.grad.float(), grads[0], grads[1]


class ScriptedCase(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.ln = fastlayernorm.LayerNorm([6, 10], eps=1e-5)
        self.ln_me = fastlayernorm.LayerNorm(33, eps=1e-6)
        self.ln_me.memory_efficient = True  # a TorchScript constant
        with torch.no_grad():
            self.ln.weight.copy_(torch.randn(6, 10, generator=g))
            self.ln.bias.copy_(torch.randn(6, 10, generator=g))
            self.ln_me.weight.copy_(torch.rand(33, generator=g) + 0.5)
            self.ln_me.bias.copy_(torch.randn(33, generator=g))
        data = {
            "": (torch.randn(3, 7, 6, 10, generator=g) * 3 + 1, self.ln),
            "_me": (torch.randn(5, 33, generator=g), self.ln_me),
        }
        for suffix, (x, ln) in data.items():
            grad_out = torch.randn(x.shape, generator=g)
            y, dx, dw, db = reference(ln, x, grad_out)
            self.register_buffer("x" + suffix, x)
            self.register_buffer("grad_out" + suffix, grad_out)
            self.register_buffer("expected_y" + suffix, y)
            self.register_buffer("expected_dx" + suffix, dx)
            self.register_buffer("expected_dweight" + suffix, dw)
            self.register_buffer("expected_dbias" + suffix, db)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x)

    @torch.jit.export
    def forward_me(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_me(x)


def main() -> None:
    out = sys.argv[1]
    scripted = torch.jit.script(ScriptedCase())
    for name in ("ln", "ln_me"):
        graph = str(getattr(scripted, name).graph)
        assert "fastlayernorm::layer_norm" in graph, graph
    # Python's own run of the scripted module matches the reference.
    x = scripted.x.clone().requires_grad_()
    y = scripted(x)
    torch.testing.assert_close(y, scripted.expected_y, rtol=1e-4, atol=1e-5)
    y.backward(scripted.grad_out)
    torch.testing.assert_close(x.grad, scripted.expected_dx, rtol=1e-4, atol=1e-4)
    scripted.zero_grad()
    torch.jit.save(scripted, out)
    print(f"saved {out} (torch {torch.__version__}, fastlayernorm {fastlayernorm.__version__})")


if __name__ == "__main__":
    main()
