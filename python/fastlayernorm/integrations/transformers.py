"""Make Hugging Face ``transformers`` build its models with fastlayernorm.

Mechanism
---------
:func:`patch_transformers` wraps ``transformers.PreTrainedModel.post_init``. Every
transformers model calls ``self.post_init()`` at the end of its ``__init__`` (weight
init and tied weights depend on it; subclasses that override ``post_init`` call
``super()``), and ``from_pretrained``, ``from_config``, ``AutoModel*`` and direct
construction all go through ``__init__``. The wrapper runs the original ``post_init``
and then :func:`~fastlayernorm.patch_model` on the new model, which switches its
``torch.nn.LayerNorm`` modules by ``__class__`` assignment. ``from_pretrained`` loads
the checkpoint afterwards into the same modules, so ``state_dict`` keys and loading
are untouched. (A remote-code model that skipped ``post_init`` would be missed; call
:func:`~fastlayernorm.patch_model` on it after loading.)

Why not replace ``LayerNorm`` names instead: ``torch.nn.LayerNorm`` must keep its
identity (other code checks ``isinstance``/``is`` against it), and the modeling files
reach it as ``nn.LayerNorm`` through the shared ``torch.nn`` module, so the only
alternative would be swapping each ``modeling_*`` module's ``nn`` global for a proxy:
that misses modules imported later, remote code and helpers defined elsewhere, and is
hard to undo exactly. A single wrapped method on one class is reversible by restoring
one attribute, and it patches every architecture, including ``trust_remote_code``
models, since they subclass ``PreTrainedModel`` too.

Scope: models *built* while a patch is active are patched; models built before are not
(use :func:`~fastlayernorm.patch_model`), and models built while active stay patched
after :meth:`TransformersPatch.undo` (use :func:`~fastlayernorm.unpatch_model`).
``transformers`` is imported only when a patch is applied, never by
``import fastlayernorm``.
"""
from __future__ import annotations

import functools
import weakref
from typing import Any, Callable, List, Optional

from .patching import patch_model

__all__ = ["TransformersPatch", "patch_transformers"]

# Patches currently applied, oldest first. The newest decides ``memory_efficient``.
_active: List["TransformersPatch"] = []
# Our post_init wrappers, by identity: a mark in their ``__dict__`` would be copied onto
# any wrapper built with ``functools.wraps`` around ours.
_WRAPPERS: "weakref.WeakSet[Callable[..., Any]]" = weakref.WeakSet()


def _pretrained_model_class():
    """Imports transformers lazily, with an actionable error when it is missing."""
    try:
        from transformers import PreTrainedModel
    except ImportError as exc:
        raise ImportError(
            "fastlayernorm.patch_transformers() needs the `transformers` package "
            "(pip install transformers)"
        ) from exc
    return PreTrainedModel


def _make_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    """The replacement ``post_init``: the original one, then patching if a patch is active.

    It checks ``_active`` at call time, so a wrapper that cannot be removed (see
    :func:`_uninstall`) is inert once every patch is undone. ``functools.wraps`` keeps
    the original reachable as ``__wrapped__``, which is how it is restored.
    """

    @functools.wraps(original)
    def post_init(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if _active:
            patch_model(self, memory_efficient=_active[-1].memory_efficient)
        return result

    _WRAPPERS.add(post_init)
    return post_init


def _wrapper_installed(method: Callable[..., Any]) -> bool:
    """True if our wrapper is ``method`` or under it in a ``__wrapped__`` chain (someone may wrap ours)."""
    seen = set()
    while method is not None and id(method) not in seen:
        if method in _WRAPPERS:
            return True
        seen.add(id(method))
        method = getattr(method, "__wrapped__", None)
    return False


def _install() -> None:
    cls = _pretrained_model_class()
    current = cls.__dict__["post_init"]
    if not _wrapper_installed(current):
        cls.post_init = _make_wrapper(current)


def _uninstall() -> None:
    """Restores the original ``post_init`` if our wrapper is the one installed on the class.

    If something else wrapped ``post_init`` after us, restoring would drop its wrapper,
    so ours stays in place, inert (``_active`` is empty), and is reused by the next patch.
    """
    cls = _pretrained_model_class()
    current = cls.__dict__["post_init"]
    if current in _WRAPPERS:
        cls.post_init = current.__wrapped__


class TransformersPatch:
    """Handle returned by :func:`patch_transformers`.

    Active from creation until :meth:`undo` (or the end of its ``with`` block).
    Several may be active at once, nested or not; the hook is removed when the last
    one is undone. :meth:`undo` is idempotent.
    """

    def __init__(self, memory_efficient: Optional[bool] = None) -> None:
        self.memory_efficient = memory_efficient
        _install()
        _active.append(self)

    @property
    def active(self) -> bool:
        return any(p is self for p in _active)

    def undo(self) -> None:
        """Stop patching newly built models (models already built stay as they are)."""
        if not self.active:
            return
        _active[:] = [p for p in _active if p is not self]
        if not _active:
            _uninstall()

    def __enter__(self) -> "TransformersPatch":
        return self

    def __exit__(self, *exc_info) -> None:
        self.undo()

    def __repr__(self) -> str:
        state = "active" if self.active else "undone"
        return f"TransformersPatch({state}, memory_efficient={self.memory_efficient})"


def patch_transformers(*, memory_efficient: Optional[bool] = None) -> TransformersPatch:
    """Patch every transformers model built from now on to use fastlayernorm.

    As a context manager, only models built inside the block are patched::

        with fastlayernorm.patch_transformers():
            model = AutoModelForCausalLM.from_pretrained("gpt2")

    As a plain call it stays on until ``.undo()`` on the returned handle.
    ``torch.nn.LayerNorm`` itself is never replaced; see the module docstring for how
    it works. ``memory_efficient`` is passed to :func:`~fastlayernorm.patch_model`.
    """
    return TransformersPatch(memory_efficient=memory_efficient)
