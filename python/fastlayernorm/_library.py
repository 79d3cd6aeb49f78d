"""Loads the compiled extension, which registers ``torch.ops.fastlayernorm.*``."""
from __future__ import annotations

import torch

try:
    from . import _C  # noqa: F401  (importing registers the operators)
except ImportError as exc:  # pragma: no cover - only hit on a broken install
    raise ImportError(
        "fastlayernorm: the compiled extension fastlayernorm._C could not be loaded "
        f"({exc}). It must be built against the torch that is installed "
        f"(torch {torch.__version__}); reinstall with "
        "`pip install --no-build-isolation .`."
    ) from exc


def cuda_built() -> bool:
    """True when the extension was compiled with its CUDA kernels."""
    return bool(torch.ops.fastlayernorm._cuda_built())
