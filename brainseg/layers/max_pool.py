"""Max pooling whose CPU forward runs on the channels-last kernel.

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

__all__ = ["max_pool2d"]

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
