"""Layers with custom kernels: multi-scale deformable attention (C++/CUDA in ``csrc``), the fused
2x bilinear upsampling + ReLU of UNeXt's decoder and the fused 2x2 max pooling + ReLU of its
encoder (C++ in ``csrc``), 3x3 convolutions by Winograd's algorithm for CPU inference, and max
pooling on the faster CPU kernel."""
from .max_pool import (
    batch_norm_max_pool2x2_relu,
    conv3x3_max_pool2x2_relu,
    conv3x3_max_pool2x2_relu_reference,
    max_pool2d,
    max_pool2x2_relu,
    max_pool2x2_relu_reference,
)
from .upsample import (
    upsample2x_relu,
    upsample2x_relu_conv1x1,
    upsample2x_relu_conv1x1_reference,
    upsample2x_relu_reference,
)
from .conv import Conv3x3, conv3x3, winograd_conv3x3, winograd_conv3x3_serves
from .ms_deform_attn import MSDeformAttn
from .ms_deform_attn_function import (
    MSDeformAttnFunction,
    extension_status,
    ms_deform_attn,
    ms_deform_attn_pytorch,
)

__all__ = [
    "Conv3x3",
    "MSDeformAttn",
    "MSDeformAttnFunction",
    "extension_status",
    "batch_norm_max_pool2x2_relu",
    "conv3x3",
    "conv3x3_max_pool2x2_relu",
    "conv3x3_max_pool2x2_relu_reference",
    "max_pool2d",
    "max_pool2x2_relu",
    "max_pool2x2_relu_reference",
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
    "upsample2x_relu",
    "upsample2x_relu_conv1x1",
    "upsample2x_relu_conv1x1_reference",
    "upsample2x_relu_reference",
    "winograd_conv3x3",
    "winograd_conv3x3_serves",
]
