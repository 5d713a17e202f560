"""Fused 2x bilinear upsampling + ReLU (+ skip): the decoder step of UNeXt.

``upsample2x_relu(x, skip)`` computes::

    relu(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)) + skip

On a channels-last CPU tensor (what brainseg's nets run by default) it runs one C++ kernel of
``brainseg._C`` that reads x and skip once and writes the result once; the upsampled and
rectified intermediates of the unfused version, four times the size of x, are never stored, and
the backward recomputes the ReLU mask from x instead of keeping them. Elsewhere (CUDA, NCHW
tensors, integer dtypes, no extension, TorchScript tracing and ONNX export) it is the unfused
PyTorch composition :func:`upsample2x_relu_reference`. The fused op is an autograd function
(``torch.compile`` runs it eagerly, between graphs); a ``torch.library`` custom op would keep it in
the graph, but its first call imports ``torch._dynamo`` (0.8 s per process).

bf16/fp16 inputs are computed in float32 and rounded once (the unfused version rounds after the
upsampling and again after the addition), so the two differ by at most a rounding of the output
dtype.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from torch.autograd import Function
from torch.autograd.function import once_differentiable

from .extension import C_EXTENSION, FUSED_CPU_DTYPES, as_conv_under_autocast, fused_cpu_kernel_serves

__all__ = [
    "upsample2x_relu",
    "upsample2x_relu_reference",
    "upsample2x_relu_conv1x1",
    "upsample2x_relu_conv1x1_reference",
]


def upsample2x_relu_reference(x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The unfused PyTorch composition of :func:`upsample2x_relu` (same arguments and result)."""
    out = F.relu(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False), inplace=True)
    return out if skip is None else out + skip


def _upsampled_shape(x: torch.Tensor) -> tuple:
    n, c, h, w = x.shape
    return n, c, 2 * h, 2 * w


class _Upsample2xReLU(Function):
    """The fused kernel with its backward (channels-last CPU tensors of one dtype)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, skip: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.has_skip = skip is not None
        return C_EXTENSION.upsample2x_relu_forward(x, skip)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        (x,) = ctx.saved_tensors
        grad_output = grad_output.contiguous(memory_format=torch.channels_last)
        grad_x = C_EXTENSION.upsample2x_relu_backward(x, grad_output) if ctx.needs_input_grad[0] else None
        return grad_x, grad_output if ctx.has_skip and ctx.needs_input_grad[1] else None


def _kernel_applies(x: torch.Tensor, skip: Optional[torch.Tensor]) -> bool:
    """Whether the fused kernel serves these inputs (else the unfused composition runs)."""
    return fused_cpu_kernel_serves(x) and (
        skip is None
        or (skip.device.type == "cpu" and skip.dtype in FUSED_CPU_DTYPES and tuple(skip.shape) == _upsampled_shape(x))
    )


def upsample2x_relu(x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``relu(bilinear 2x upsampling of x, align_corners=False)``, plus ``skip`` if given.

    Args:
        x: (N, C, H, W) floating tensor.
        skip: None, or a tensor broadcastable to (N, C, 2H, 2W) (the fused kernel runs when its
            shape is exactly that).

    Returns:
        (N, C, 2H, 2W), of the promoted dtype of x and skip; channels-last when the fused kernel
        ran. Differentiable with respect to x and skip.
    """
    if not _kernel_applies(x, skip):
        return upsample2x_relu_reference(x, skip)
    if skip is not None:
        dtype = torch.promote_types(x.dtype, skip.dtype)
        x = x.to(dtype)
        skip = skip.to(dtype).contiguous(memory_format=torch.channels_last)
    return _Upsample2xReLU.apply(x, skip)


def upsample2x_relu_conv1x1_reference(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The unfused PyTorch composition of :func:`upsample2x_relu_conv1x1` (same arguments and result)."""
    return F.conv2d(upsample2x_relu_reference(x), weight, bias)


class _Upsample2xReLUConv1x1(Function):
    """The fused kernel with its backward (channels-last CPU x; weight and bias of x's dtype)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.bias_dtype = bias.dtype
        return C_EXTENSION.upsample2x_relu_conv1x1_forward(x, weight.flatten(1), bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_output = grad_output.contiguous(memory_format=torch.channels_last)
        grad_x, grad_weight = C_EXTENSION.upsample2x_relu_conv1x1_backward(x, weight.flatten(1), grad_output)
        grad_bias = grad_output.sum((0, 2, 3), dtype=torch.float64).to(ctx.bias_dtype) if ctx.needs_input_grad[2] else None
        return (
            grad_x if ctx.needs_input_grad[0] else None,
            grad_weight.to(weight.dtype).view_as(weight) if ctx.needs_input_grad[1] else None,
            grad_bias,
        )


def upsample2x_relu_conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``conv2d(upsample2x_relu(x), weight, bias)`` with a 1x1 ``weight``, fused (see the module
    docstring). Under autocast, weight and bias are cast to the autocast dtype as ``conv2d`` would.

    Args:
        x: (N, C, H, W) floating tensor.
        weight: (K, C, 1, 1) convolution weight.
        bias: (K,) or None.

    Returns:
        (N, K, 2H, 2W); channels-last when the fused kernel ran. Differentiable with respect to
        x, weight and bias.
    """
    x, weight, bias = as_conv_under_autocast(x, weight, bias)
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    if not (
        _kernel_applies(x, None)
        and weight.dim() == 4
        and tuple(weight.shape[1:]) == (x.shape[1], 1, 1)
        and weight.dtype == x.dtype == bias.dtype
        and weight.device.type == bias.device.type == "cpu"
    ):
        return upsample2x_relu_conv1x1_reference(x, weight, bias)
    return _Upsample2xReLUConv1x1.apply(x, weight, bias)
