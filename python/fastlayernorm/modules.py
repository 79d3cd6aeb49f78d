"""``fastlayernorm.LayerNorm``: a drop-in subclass of :class:`torch.nn.LayerNorm`."""
from __future__ import annotations

import torch
from torch import Tensor

from . import _library  # noqa: F401  (registers the ops)

_LAYER_NORM = torch.ops.fastlayernorm.layer_norm.default


class LayerNorm(torch.nn.LayerNorm):
    """:class:`torch.nn.LayerNorm` computed by fastlayernorm's kernels.

    Same constructor, parameters, ``state_dict`` keys, ``repr`` and
    ``reset_parameters`` as :class:`torch.nn.LayerNorm`; only ``forward`` differs.
    Set the attribute ``memory_efficient = True`` to let the backward rebuild the
    normalized input from the output instead of keeping the input alive.
    An existing ``nn.LayerNorm`` can be switched in place with
    ``module.__class__ = fastlayernorm.LayerNorm``.
    """

    # A class attribute, so instances switched by assigning __class__ have it
    # too; a TorchScript constant, fixed when the module is scripted.
    memory_efficient: bool = False
    __constants__ = list(torch.nn.LayerNorm.__constants__) + ["memory_efficient"]

    def forward(self, input: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            # Eager: call the overload directly (cheaper than the packet).
            return _LAYER_NORM(
                input, list(self.normalized_shape), self.weight, self.bias, self.eps,
                self.memory_efficient,
            )
        return torch.ops.fastlayernorm.layer_norm(
            input,
            list(self.normalized_shape),
            self.weight,
            self.bias,
            self.eps,
            self.memory_efficient,
        )
