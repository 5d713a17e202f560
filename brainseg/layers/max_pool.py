"""Max pooling on fast CPU kernels: :func:`max_pool2d` (PyTorch's channels-last forward kernel for
NCHW tensors) and :func:`max_pool2x2_relu` (2x2 pooling fused with a ReLU, C++ in ``brainseg._C``).

:func:`max_pool2d`:

PyTorch's CPU ``max_pool2d_with_indices`` on a contiguous (NCHW) tensor walks each plane with
a scalar loop; on a channels-last tensor it vectorises over channels and is several times
faster. Its channels-last backward, however, is slower than the NCHW one. :func:`max_pool2d`
therefore pools in channels-last and hands the indices (flat positions within each HxW plane,
the same in either memory format) to the NCHW backward. Values and gradients are identical to
``F.max_pool2d``; on CUDA, or for tensors already in channels-last, it is ``F.max_pool2d``.
"""
from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .extension import C_EXTENSION

__all__ = ["max_pool2d", "max_pool2x2_relu", "max_pool2x2_relu_reference"]

_IntPair = Union[int, Tuple[int, int]]


def _pair(value: _IntPair) -> Tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class _ChannelsLastMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding):
        out, indices = torch.ops.aten.max_pool2d_with_indices(
            x.contiguous(memory_format=torch.channels_last), kernel_size, stride, padding, (1, 1), False
        )
        indices = indices.contiguous()
        ctx.save_for_backward(x, indices)
        ctx.pool = (kernel_size, stride, padding)
        return out.contiguous()

    @staticmethod
    def backward(ctx, grad_out):
        x, indices = ctx.saved_tensors
        kernel_size, stride, padding = ctx.pool
        grad_in = torch.ops.aten.max_pool2d_with_indices_backward(
            grad_out.contiguous(), x, kernel_size, stride, padding, (1, 1), False, indices
        )
        return grad_in, None, None, None


def max_pool2d(x: torch.Tensor, kernel_size: _IntPair, stride: _IntPair, padding: _IntPair = 0) -> torch.Tensor:
    """``F.max_pool2d(x, kernel_size, stride, padding)`` (no dilation, floor mode), faster on CPU
    for contiguous NCHW input.

    Args:
        x: (N, C, H, W) tensor.
        kernel_size, stride, padding: as for ``F.max_pool2d``.

    Returns:
        (N, C, H_out, W_out), contiguous like ``x``.
    """
    if x.device.type != "cpu" or x.dim() != 4 or not x.is_contiguous():
        return F.max_pool2d(x, kernel_size, stride, padding)
    return _ChannelsLastMaxPool.apply(x, _pair(kernel_size), _pair(stride), _pair(padding))


def max_pool2x2_relu_reference(x: torch.Tensor) -> torch.Tensor:
    """``relu(max_pool2d(x, 2))`` in plain PyTorch: what :func:`max_pool2x2_relu` computes."""
    return F.relu(F.max_pool2d(x, 2), inplace=True)


class _MaxPool2x2ReLU(torch.autograd.Function):
    """The fused kernel with its backward (a channels-last CPU tensor)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, with_code: bool) -> torch.Tensor:
        out, code = C_EXTENSION.max_pool2x2_relu_forward(x, with_code)
        ctx.save_for_backward(code)
        ctx.input_size = tuple(x.shape[-2:])
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        (code,) = ctx.saved_tensors  # x required grad, so the forward wrote the codes
        grad_output = grad_output.contiguous(memory_format=torch.channels_last)
        return C_EXTENSION.max_pool2x2_relu_backward(grad_output, code, *ctx.input_size), None


def max_pool2x2_relu(x: torch.Tensor) -> torch.Tensor:
    """``relu(F.max_pool2d(x, 2))``: the 2x2 max pooling (stride 2, floor mode) and ReLU of UNeXt's
    encoder conv stages, fused.

    On a channels-last CPU tensor (what brainseg's nets run by default) one C++ kernel of
    ``brainseg._C`` pools and rectifies in one pass and keeps, for the backward, one byte per output
    (which input the gradient flows to) instead of PyTorch's int64 indices. Values and gradients
    equal PyTorch's exactly, ties (the first maximum in the window wins) and NaNs included.
    Elsewhere (CUDA, NCHW, traced or exported graphs, no extension) it is
    :func:`max_pool2x2_relu_reference`. The fused op is an autograd function, like
    :func:`~brainseg.layers.upsample.upsample2x_relu`.

    Args:
        x: (N, C, H, W) floating tensor.

    Returns:
        (N, C, H // 2, W // 2); channels-last when the fused kernel ran.
    """
    if not (
        C_EXTENSION is not None
        and not torch.jit.is_tracing()
        and not torch.onnx.is_in_onnx_export()
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)
        and x.is_contiguous(memory_format=torch.channels_last)
        and min(x.shape[-2:]) >= 2  # (smaller: PyTorch's error about the empty output)
    ):
        return max_pool2x2_relu_reference(x)
    return _MaxPool2x2ReLU.apply(x, torch.is_grad_enabled() and x.requires_grad)
