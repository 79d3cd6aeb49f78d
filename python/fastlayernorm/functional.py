"""Functional form: the same signature as ``torch.nn.functional.layer_norm``."""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor

from . import _library  # noqa: F401  (registers the ops)


def _as_shape(normalized_shape: Union[int, Sequence[int], torch.Size]) -> List[int]:
    if isinstance(normalized_shape, int):
        return [normalized_shape]
    return [int(d) for d in normalized_shape]


def layer_norm(
    input: Tensor,
    normalized_shape: Union[int, Sequence[int], torch.Size],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    memory_efficient: bool = False,
) -> Tensor:
    """Layer normalization over the trailing ``normalized_shape`` dimensions.

    Drop-in for :func:`torch.nn.functional.layer_norm`. With ``memory_efficient=True``
    the backward rebuilds the normalized input from the output, so the input need not be
    kept alive for autograd (the output is kept instead).
    """
    # The overload itself: skips the packet's overload resolution (a few
    # microseconds per call, which is most of a small LayerNorm's cost).
    return _LAYER_NORM(input, _as_shape(normalized_shape), weight, bias, eps, memory_efficient)


_LAYER_NORM = torch.ops.fastlayernorm.layer_norm.default
