"""Shared test configuration and helpers for fastlayernorm.

Markers (declared in pyproject.toml):
  cuda  needs a CUDA device; skipped when ``torch.cuda.is_available()`` is False.
  slow  long-running; skipped unless ``--runslow`` is given or FASTLAYERNORM_RUN_SLOW=1.

The helpers below are imported by the test modules (``from conftest import ...``):
the float64 reference every op is judged against, the relative L2 error and input
factories that draw fresh random (never all-zero) tensors.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import pytest
import torch
import torch.nn.functional as F

import fastlayernorm  # noqa: F401  (registers torch.ops.fastlayernorm)

HAS_CUDA = torch.cuda.is_available()

# Device parametrization shared by the test modules: CUDA entries carry the
# `cuda` marker, so they are skipped without a GPU (see pytest_collection_modifyitems).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

LOW_PRECISION = (torch.float16, torch.bfloat16)

# Relative L2 error bounds against the float64 reference (the project issue's numbers).
TOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 1e-2,
    torch.bfloat16: 1e-2,
}

# For float16/bfloat16 the error must also be no worse than torch's own error in the
# same dtype: err <= TORCH_FACTOR * torch_err + TORCH_SLACK[dtype].
TORCH_FACTOR = 1.5
TORCH_SLACK = {torch.float16: 1e-4, torch.bfloat16: 5e-4}


# --------------------------------------------------------------------------------------
# pytest hooks
# --------------------------------------------------------------------------------------


def pytest_addoption(parser):
    parser.addoption(
        "--runslow",
        action="store_true",
        default=False,
        help="run tests marked slow (also enabled by FASTLAYERNORM_RUN_SLOW=1)",
    )


def pytest_configure(config):
    # Declared here as well, so the markers exist even when pytest runs without
    # pyproject.toml as its configuration file.
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one)")
    config.addinivalue_line("markers", "slow: long-running (needs --runslow or FASTLAYERNORM_RUN_SLOW=1)")


def _run_slow(config) -> bool:
    env = os.environ.get("FASTLAYERNORM_RUN_SLOW", "").strip().lower()
    return bool(config.getoption("--runslow")) or env in ("1", "true", "yes", "on")


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="CUDA is not available (torch.cuda.is_available() is False)")
    skip_slow = pytest.mark.skip(reason="slow test: pass --runslow or set FASTLAYERNORM_RUN_SLOW=1")
    run_slow = _run_slow(config)
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _seed(request):
    """A fixed seed per test (derived from its id), so failures reproduce, while each
    test still draws its own fresh random inputs."""
    seed = sum(ord(c) * (i + 1) for i, c in enumerate(request.node.nodeid)) % (2**31)
    torch.manual_seed(seed)
    yield


@pytest.fixture
def dynamo_reset():
    """Reset torch._dynamo around a test and raise its recompile limit, so tests that
    compile many shapes/dtypes never fall back to eager silently."""
    import torch._dynamo

    cfg = torch._dynamo.config
    names = [n for n in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                         "accumulated_cache_size_limit") if hasattr(cfg, n)]
    saved = {n: getattr(cfg, n) for n in names}
    for n in names:
        setattr(cfg, n, max(int(saved[n]), 4096 if "accumulated" in n else 256))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    for n, v in saved.items():
        setattr(cfg, n, v)


@pytest.fixture
def poison_uninitialized():
    """Make torch.empty / empty_like (also when called from the C++ operators) return
    NaN-filled memory, so any output element a kernel forgets to write shows up."""
    import torch.utils.deterministic as det

    prev_alg = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_fill = det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    yield
    det.fill_uninitialized_memory = prev_fill
    torch.use_deterministic_algorithms(prev_alg, warn_only=prev_warn)


# --------------------------------------------------------------------------------------
# numerical helpers
# --------------------------------------------------------------------------------------


def rel_err(actual: Optional[torch.Tensor], expected: Optional[torch.Tensor],
            scale: Optional[torch.Tensor] = None) -> float:
    """Relative L2 error ||actual - expected|| / ||expected||, computed in float64 on
    ``expected``'s device (a CUDA reference keeps the large shapes' norms off the CPU).
    The denominator is floored at 1e-2 * sqrt(numel) (an RMS of 0.01, far
    below the O(0.1-10) magnitudes of the tests' values), so a reference that is zero
    up to float64 rounding (dx and dweight for N == 1, where x_hat == 0) is judged by
    its absolute error instead of a meaningless ratio of rounding noise.

    ``scale``, when given, is a tensor of the magnitudes the result is computed from
    (``reference`` returns ``dx_scale`` and ``dw_scale``); the denominator is also
    floored at its norm. It matters only where the exact result vanishes by
    cancellation: for N == 1 (x_hat == 0) dx and dweight are exactly 0, and for N == 2
    (x_hat == +-1) dx is ~0, yet every implementation (torch's too) returns rounding
    noise of the size of the terms that cancel."""
    assert actual is not None and expected is not None
    assert tuple(actual.shape) == tuple(expected.shape), (actual.shape, expected.shape)
    b = expected.detach().to(dtype=torch.float64)
    a = actual.detach().to(device=b.device, dtype=torch.float64)
    if a.numel() == 0:
        return 0.0
    assert torch.isfinite(a).all(), "result has non-finite values (unwritten or overflowed elements?)"
    den = max(torch.linalg.vector_norm(b).item(), 1e-2 * a.numel() ** 0.5)
    if scale is not None:
        den = max(den, torch.linalg.vector_norm(scale.detach().double()).item())
    num = torch.linalg.vector_norm(a - b).item()
    return num / den


def ref_stats(x64: torch.Tensor, ndim: int, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """float64 mean and rstd over the trailing ``ndim`` dims, with keepdim shape
    (two passes: the mean, then the mean square of x - mean)."""
    dims = tuple(range(x64.dim() - ndim, x64.dim()))
    mean = x64.mean(dim=dims, keepdim=True)
    var = ((x64 - mean) ** 2).mean(dim=dims, keepdim=True)
    return mean, torch.rsqrt(var + eps)


def _to64(t: Optional[torch.Tensor], device) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().to(device=device, dtype=torch.float64)


def _backward64(x_hat, rstd, w64, g64, nd):
    """The layer_norm backward in float64 from x_hat = (x - mean) * rstd:
    dx = rstd * (wg - mean(wg) - x_hat * mean(wg * x_hat)) with wg = grad_out * weight
    (means over the normalized dims), dweight = sum over rows of grad_out * x_hat,
    dbias = sum over rows of grad_out. Returns (dx, dw, db), dw None without a weight."""
    dims = tuple(range(x_hat.dim() - nd, x_hat.dim()))
    lead = tuple(range(x_hat.dim() - nd))
    wg = g64 * w64 if w64 is not None else g64
    if x_hat.numel() == 0:
        dx = torch.zeros_like(x_hat)
    else:
        dx = rstd * (wg - wg.mean(dim=dims, keepdim=True)
                     - x_hat * (wg * x_hat).mean(dim=dims, keepdim=True))
    # (sum over no dims would add up everything: one row, nothing to add)
    add_rows = (lambda t: t.sum(dim=lead)) if lead else (lambda t: t)
    dw = add_rows(g64 * x_hat) if w64 is not None else None
    return dx, dw, add_rows(g64)


def reference(x, normalized_shape, weight, bias, eps, grad_out):
    """The float64 reference: layer_norm's forward and backward written out in float64
    (two-pass statistics, then the closed-form gradients of ``_backward64``) on the very
    values of the (possibly lower-precision) arguments, on their device: on a GPU the
    tests' large shapes cost milliseconds instead of seconds of CPU time.

    Returns dict(y, mean, rstd, dx, dw, db, dx_scale, dw_scale) (dw/db None for absent
    parameters, the gradients None without grad_out)."""
    dev = x.device
    nd = len(normalized_shape)
    x64, w64, b64 = _to64(x, dev), _to64(weight, dev), _to64(bias, dev)
    mean, rstd = ref_stats(x64, nd, eps)
    x_hat = (x64 - mean) * rstd
    y64 = x_hat * w64 if w64 is not None else x_hat
    if b64 is not None:
        y64 = y64 + b64
    out = dict(y=y64, mean=mean, rstd=rstd, dx=None, dw=None, db=None,
               dx_scale=None, dw_scale=None)
    if grad_out is not None:
        g64 = _to64(grad_out, dev)
        dx, dw, db = _backward64(x_hat, rstd, w64, g64, nd)
        out.update(dx=dx, dw=dw, db=db if b64 is not None else None)
        # Floors for rel_err where the exact gradient cancels to ~0 (N == 1 or 2): half
        # the size of the leading term of dx (rstd * weight * grad_out; for N >= 3 the
        # exact dx is larger than that), and a tenth of the root-sum-square of grad_out
        # over the rows for dweight (the size of sum_r grad_out * x_hat for |x_hat| ~ 1).
        out["dx_scale"] = 0.5 * (rstd * g64 * (w64 if w64 is not None else 1.0)).abs()
        lead = tuple(range(g64.dim() - nd))
        out["dw_scale"] = 0.1 * g64.square().sum(dim=lead).sqrt() if lead else 0.1 * g64.abs()
    return out


def reference_from_output(y, normalized_shape, weight, bias, rstd, grad_out):
    """The float64 reference of the output-based backward (layer_norm_bwd_from_output,
    the memory-saving mode): the layer_norm backward with x_hat rebuilt from the given
    output y as (y - bias) / weight, as that method does, in float64. The output's
    rounding is information the method does not have: on a row of small variance and N
    == 2 (x_hat == +-1, dx ~ 0) a bfloat16 y alone moves dx by rstd * grad_out * (y's
    rounding) / weight, more than a 16-bit dtype's bound against the true gradient, which
    `reference` gives and the input-based backward is held to.

    Returns dict(dx, dw, db) (dw/db None for absent parameters); rstd: `reference`'s."""
    dev = rstd.device
    y64, g64 = _to64(y, dev), _to64(grad_out, dev)
    w64, b64 = _to64(weight, dev), _to64(bias, dev)
    x_hat = y64 - b64 if b64 is not None else y64
    if w64 is not None:
        x_hat = x_hat / w64
    dx, dw, db = _backward64(x_hat, rstd, w64, g64, len(normalized_shape))
    return dict(dx=dx, dw=dw, db=db if b64 is not None else None)


def torch_result(x, normalized_shape, weight, bias, eps, grad_out):
    """torch's own F.layer_norm forward/backward in the arguments' dtypes (the
    baseline for the 'same or better than torch' check). None when torch does not
    support the combination on that device."""
    def leaf(t):
        return None if t is None else t.detach().clone().requires_grad_(True)

    xt, wt, bt = leaf(x), leaf(weight), leaf(bias)
    try:
        y = F.layer_norm(xt, list(normalized_shape), wt, bt, eps)
        inputs = [t for t in (xt, wt, bt) if t is not None]
        if x.numel() > 0:
            grads = torch.autograd.grad(y, inputs, grad_out, allow_unused=True)
        else:
            grads = [torch.zeros_like(t) for t in inputs]
    except (RuntimeError, NotImplementedError):
        return None
    it = iter(grads)
    dx = next(it)
    dw = next(it) if wt is not None else None
    db = next(it) if bt is not None else None
    return dict(y=y.detach(), dx=dx, dw=dw, db=db)


def check_close(name: str, actual, expected, dtype, torch_baseline=None, tol=None, scale=None):
    """Asserts the relative L2 error of ``actual`` against the float64 reference is
    within the dtype's bound and, for float16/bfloat16, no worse than torch's own
    error (``torch_baseline``) times TORCH_FACTOR plus a small slack."""
    if expected is None:
        assert actual is None, f"{name}: expected None, got a tensor"
        return 0.0
    assert actual is not None, f"{name}: expected a tensor, got None"
    err = rel_err(actual, expected, scale)
    bound = TOL[dtype] if tol is None else tol
    assert err <= bound, f"{name}: relative L2 error {err:.3e} > {bound:.1e} ({dtype})"
    if torch_baseline is not None and dtype in LOW_PRECISION:
        terr = rel_err(torch_baseline, expected, scale)
        limit = TORCH_FACTOR * terr + TORCH_SLACK[dtype]
        assert err <= limit, (
            f"{name}: relative L2 error {err:.3e} worse than torch's own {terr:.3e} "
            f"(limit {limit:.3e}, {dtype})")
    return err


# --------------------------------------------------------------------------------------
# input factories
# --------------------------------------------------------------------------------------


def make_input(shape: Sequence[int], dtype, device, scale: float = 2.0, offset: float = 1.5):
    """Fresh random input with a non-zero mean (exercises the two-pass statistics)."""
    x = torch.randn(*shape, dtype=torch.float32, device="cpu") * scale + offset
    x = x + torch.randn(*shape[:-1], 1) if len(shape) > 1 else x  # per-row offsets
    return x.to(device=device, dtype=dtype)


def make_params(normalized_shape: Sequence[int], dtype, device, weight: bool = True,
                bias: bool = True) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Non-trivial weight and bias. The weight's magnitude is kept in [0.5, 1.5] (random
    sign) so the memory-efficient backward, which divides by it, is well conditioned."""
    shape = list(normalized_shape)
    w = b = None
    if weight:
        mag = torch.rand(shape) + 0.5
        sign = torch.where(torch.rand(shape) < 0.25, -1.0, 1.0)
        w = (mag * sign).to(device=device, dtype=dtype)
    if bias:
        b = (torch.randn(shape) * 0.5).to(device=device, dtype=dtype)
    return w, b


def make_grad(shape: Sequence[int], dtype, device):
    return torch.randn(*shape).to(device=device, dtype=dtype)


def as_list(normalized_shape) -> List[int]:
    return [normalized_shape] if isinstance(normalized_shape, int) else list(normalized_shape)
