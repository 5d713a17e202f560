"""Layers with custom kernels: multi-scale deformable attention (C++/CUDA in ``csrc``)."""
from .ms_deform_attn import MSDeformAttn
from .ms_deform_attn_function import (
    MSDeformAttnFunction,
    extension_status,
    ms_deform_attn,
    ms_deform_attn_pytorch,
)

__all__ = [
    "MSDeformAttn",
    "MSDeformAttnFunction",
    "extension_status",
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
]
