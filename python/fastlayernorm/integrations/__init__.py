"""Integrations with model libraries.

``patch_model``/``unpatch_model`` need only torch. ``patch_transformers`` imports
``transformers`` when it is called, so importing fastlayernorm never does.
"""
from .patching import PatchReport, patch_model, unpatch_model
from .transformers import TransformersPatch, patch_transformers

__all__ = ["PatchReport", "TransformersPatch", "patch_model", "patch_transformers", "unpatch_model"]
