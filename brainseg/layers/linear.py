"""A linear layer on oneDNN for float32 CPU tensors.

``F.linear`` on CPU runs a BLAS matrix product (MKL's ``sgemm`` in PyTorch's x86 builds); for the
token MLPs of UNeXt (thousands of rows, 128-256 features) oneDNN's 1x1 convolution computes the
same product 1.6-2.3x faster with 2 threads on the AMD EPYC we develop on (``tools/benchmark.py
resampling`` times the forward). A (..., Cin) tensor contiguous in memory *is* a channels-last
(1, Cin, rows, 1) image, so the product is handed to the convolution as such, without a copy.
With gradients, the input's gradient is the same kind of product (by the transposed weight) and
the weight's and bias's come from oneDNN's convolution backward: a UNeXt training step 4-8 ms
faster (of ~150 ms, measured A/B).
"""
from typing import Optional

import torch
import torch.nn.functional as F

from .extension import grad_wanted

__all__ = ["linear"]


def _as_image(rows: torch.Tensor) -> torch.Tensor:
    """A contiguous (..., C) tensor as the channels-last (1, C, rows, 1) image of the same memory."""
    return rows.reshape(1, -1, 1, rows.shape[-1]).permute(0, 3, 1, 2)


def _product(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``x @ weight.T + bias`` by oneDNN's 1x1 convolution; (..., Cout), contiguous."""
    cout, cin = weight.shape
    out = F.conv2d(_as_image(x), weight.reshape(cout, cin, 1, 1), bias)
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], cout)


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _product(x, weight.detach(), None if bias is None else bias.detach())

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, weight = ctx.saved_tensors
        cout, cin = weight.shape
        grad_output = grad_output.contiguous()
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _product(grad_output, weight.t().contiguous(), None)
        want_weight, want_bias = ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]
        if want_weight or want_bias:
            _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                _as_image(grad_output), _as_image(x), weight.reshape(cout, cin, 1, 1),
                [cout] if ctx.has_bias else None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                [False, want_weight, want_bias],
            )
            grad_weight = None if grad_weight is None else grad_weight.reshape(cout, cin)
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; on a contiguous float32 CPU tensor with a float32 weight,
    outside autocast, graph tracing and compilation, computed by oneDNN (values equal to float
    rounding: the two libraries sum in different orders), with gradients if wanted.

    Args:
        x: (..., Cin).
        weight: (Cout, Cin).
        bias: (Cout,) or None.

    Returns:
        (..., Cout), contiguous.
    """
    if not (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and x.dim() >= 2
        and x.numel() > 0
        and x.is_contiguous()
        and weight.dim() == 2
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not torch.onnx.is_in_onnx_export()
        and torch.backends.mkldnn.is_available()
    ):
        return F.linear(x, weight, bias)
    if grad_wanted(x, weight, bias):
        return _OneDNNLinear.apply(x, weight, bias)
    return _product(x, weight, bias)
