"""Layers with custom kernels: multi-scale deformable attention (C++/CUDA in ``csrc``), and max
pooling on the faster CPU kernel."""
from .max_pool import max_pool2d
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
    "max_pool2d",
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
]
