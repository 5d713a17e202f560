"""A linear layer on oneDNN for float32 CPU inference.

``F.linear`` on CPU runs a BLAS matrix product (MKL's ``sgemm`` in PyTorch's x86 builds); for the
token MLPs of UNeXt (thousands of rows, 128-256 features) oneDNN's 1x1 convolution computes the
same product 1.7-2.3x faster on the 2-core AMD EPYC we develop on (``tools/benchmark.py
resampling`` times both). A (..., Cin) tensor contiguous in memory *is* a channels-last
(1, Cin, rows, 1) image, so the product is handed to the convolution as such, without a copy.

Only for inference: with gradients the convolution's backward was slower than the matrix
product's for UNeXt's largest token map (measured), so training keeps ``F.linear``.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from .extension import grad_wanted

__all__ = ["linear"]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; without gradients, on a contiguous float32 CPU tensor outside
    autocast, graph tracing and compilation, computed as oneDNN's 1x1 convolution (values equal
    to float rounding: the two libraries sum in different orders).

    Args:
        x: (..., Cin).
        weight: (Cout, Cin).
        bias: (Cout,) or None.

    Returns:
        (..., Cout), contiguous.
    """
    if not (
        not grad_wanted(x, weight, bias)
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and x.dim() >= 2
        and x.is_contiguous()
        and weight.dim() == 2
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not torch.onnx.is_in_onnx_export()
        and torch.backends.mkldnn.is_available()
    ):
        return F.linear(x, weight, bias)
    cin, cout = x.shape[-1], weight.shape[0]
    image = x.reshape(1, -1, 1, cin).permute(0, 3, 1, 2)  # channels-last (1, Cin, rows, 1): the same memory
    out = F.conv2d(image, weight.view(cout, cin, 1, 1), bias)
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], cout)
