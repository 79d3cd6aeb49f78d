"""fastlayernorm: a fast, exact LayerNorm for PyTorch, as C++/CUDA operators.

Importing the package registers ``torch.ops.fastlayernorm.layer_norm``,
``layer_norm_fwd`` and ``layer_norm_bwd`` (usable from TorchScript).
"""
from ._library import cuda_built
from .functional import layer_norm
from .modules import LayerNorm

__version__ = "0.1.0"

__all__ = ["LayerNorm", "layer_norm", "cuda_built", "__version__"]
from .integrations import patch_model, unpatch_model, patch_transformers  # noqa: E402
__all__ += ["patch_model", "unpatch_model", "patch_transformers"]
