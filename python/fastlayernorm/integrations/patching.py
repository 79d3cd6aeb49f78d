"""Switch the ``torch.nn.LayerNorm`` modules of an existing model to fastlayernorm.

Patching assigns ``module.__class__`` instead of building replacement modules.
The module object stays the same one, so everything attached to it survives
untouched: parameters (and their identity, so optimizers already holding them keep
working), buffers, forward/backward hooks, device, dtype, ``requires_grad`` flags,
``state_dict`` keys and the places where other modules reference it (tied or shared
modules). Only the class, hence ``forward``, changes.

Wrappers need no special case: ``torch.compile``'s ``OptimizedModule`` (``_orig_mod``),
``DistributedDataParallel`` (``module``) and PEFT's ``PeftModel``/``LoraModel``/
``ModulesToSaveWrapper`` (``original_module`` and every ``modules_to_save`` copy) all
register the model they wrap as a submodule, so ``named_modules()`` reaches it.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from ..modules import LayerNorm as FastLayerNorm

__all__ = ["PatchReport", "patch_model", "unpatch_model"]


@dataclass
class PatchReport:
    """What :func:`patch_model` did, by qualified module name (``model.get_submodule`` names).

    ``patched``: modules that were exactly ``torch.nn.LayerNorm`` and now are
    ``fastlayernorm.LayerNorm``. ``skipped``: subclasses of ``torch.nn.LayerNorm``
    that were left alone, because a subclass may override ``forward`` (channels-first
    layouts, fp32 upcasts, ...) and replacing its class would silently drop that.
    ``already_patched``: modules that were ``fastlayernorm.LayerNorm`` before the call.
    """

    patched: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    already_patched: List[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"fastlayernorm: patched {len(self.patched)} LayerNorm module(s), "
            f"skipped {len(self.skipped)} subclass(es), "
            f"{len(self.already_patched)} already patched"
        )


def _set_memory_efficient(module: torch.nn.Module, memory_efficient: Optional[bool]) -> None:
    """Stores the flag on the instance so it overrides the class default for this module only."""
    if memory_efficient is not None:
        module.memory_efficient = bool(memory_efficient)


def patch_model(model: torch.nn.Module, *, memory_efficient: Optional[bool] = None) -> PatchReport:
    """Make every ``torch.nn.LayerNorm`` of ``model`` (``model`` included) a ``fastlayernorm.LayerNorm``, in place.

    Only modules whose type is *exactly* ``torch.nn.LayerNorm`` are switched;
    subclasses are reported as skipped (see :class:`PatchReport`). Calling it again is
    harmless. ``memory_efficient``, when given, is set on each patched (or already
    patched) module; ``None`` keeps the class default.

    Works through ``torch.compile``, DDP and PEFT wrappers (see the module docstring).
    Patch *before* compiling when you can: Dynamo does not guard on a submodule's
    class, so a compiled model that has already run keeps replaying the graph it
    traced with ``torch.nn.LayerNorm``. When patching changes modules under a
    compiled wrapper, a warning says so; call ``torch.compiler.reset()`` (it drops all
    compiled code, which then recompiles on the next call) to retrace.

    Returns a :class:`PatchReport`.
    """
    report = PatchReport()
    for name, module in model.named_modules():
        if isinstance(module, FastLayerNorm):
            report.already_patched.append(name)
            _set_memory_efficient(module, memory_efficient)
        elif type(module) is torch.nn.LayerNorm:
            module.__class__ = FastLayerNorm
            _set_memory_efficient(module, memory_efficient)
            report.patched.append(name)
        elif isinstance(module, torch.nn.LayerNorm):
            report.skipped.append(name)
    if report.patched:
        _warn_if_compiled(model, "patched")
    return report


def _is_compiled(module: torch.nn.Module) -> bool:
    """``torch.compile(m)`` wraps in an ``OptimizedModule``; ``m.compile()`` sets ``_compiled_call_impl``."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # not imported: nothing compiled
    optimized = getattr(eval_frame, "OptimizedModule", ())
    return isinstance(module, optimized) or getattr(module, "_compiled_call_impl", None) is not None


def _warn_if_compiled(model: torch.nn.Module, action: str) -> None:
    """Dynamo would keep replaying graphs traced before the class change (see :func:`patch_model`)."""
    if any(_is_compiled(m) for m in model.modules()):
        warnings.warn(
            f"fastlayernorm {action} LayerNorm modules of a torch.compile'd model: graphs "
            "compiled before this keep the old LayerNorm. Call torch.compiler.reset() to "
            "recompile, or patch before compiling.",
            stacklevel=3,
        )


def unpatch_model(model: torch.nn.Module) -> List[str]:
    """Turn every module of ``model`` whose type is exactly ``fastlayernorm.LayerNorm`` back into ``torch.nn.LayerNorm``.

    This includes modules that were built as ``fastlayernorm.LayerNorm`` rather than
    patched: the point is a model that only needs plain PyTorch (to pickle, export or
    share). A per-module ``memory_efficient`` set by :func:`patch_model` is removed.
    Subclasses of ``fastlayernorm.LayerNorm`` are left alone. Returns the names of the
    modules restored. As with patching, a compiled model needs ``torch.compiler.reset()``.
    """
    restored = []
    for name, module in model.named_modules():
        if type(module) is FastLayerNorm:
            module.__dict__.pop("memory_efficient", None)
            module.__class__ = torch.nn.LayerNorm
            restored.append(name)
    if restored:
        _warn_if_compiled(model, "unpatched")
    return restored
