"""Max pooling on fast CPU kernels: :func:`max_pool2d` (PyTorch's channels-last forward kernel for
NCHW tensors) and, C++ in ``brainseg._C``, the 2x2 pooling + ReLU of UNeXt's encoder fused with what
surrounds it: alone (:func:`max_pool2x2_relu`), after a training-mode batch norm
(:func:`batch_norm_max_pool2x2_relu`) and, for inference, after a 3x3 convolution
(:func:`conv3x3_max_pool2x2_relu`: a direct convolution for few input channels, Winograd's for more).

:func:`max_pool2d`:

PyTorch's CPU ``max_pool2d_with_indices`` on a contiguous (NCHW) tensor walks each plane with
a scalar loop; on a channels-last tensor it vectorises over channels and is several times
faster. Its channels-last backward, however, is slower than the NCHW one. :func:`max_pool2d`
therefore pools in channels-last and hands the indices (flat positions within each HxW plane,
the same in either memory format) to the NCHW backward. Values and gradients are identical to
``F.max_pool2d``; on CUDA, or for tensors already in channels-last, it is ``F.max_pool2d``.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .conv import direct_conv3x3_serves, winograd_conv3x3, winograd_conv3x3_serves
from .extension import C_EXTENSION, as_conv_under_autocast, fused_cpu_kernel_serves, grad_wanted

__all__ = [
    "max_pool2d",
    "max_pool2x2_relu",
    "max_pool2x2_relu_reference",
    "batch_norm_max_pool2x2_relu",
    "conv3x3_max_pool2x2_relu",
    "conv3x3_max_pool2x2_relu_reference",
]

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


def _kernel_applies(x: torch.Tensor) -> bool:
    """Whether the fused pooling kernels serve ``x`` (else the PyTorch composition runs)."""
    return fused_cpu_kernel_serves(x) and min(x.shape[-2:]) >= 2  # (smaller: PyTorch's error about the empty output)


def max_pool2x2_relu(x: torch.Tensor) -> torch.Tensor:
    """``relu(F.max_pool2d(x, 2))``: the 2x2 max pooling (stride 2, floor mode) and ReLU of UNeXt's
    encoder conv stages, fused.

    On a channels-last CPU tensor (what brainseg's nets run by default) one C++ kernel of
    ``brainseg._C`` pools and rectifies in one pass and keeps, for the backward, one byte per output
    (which input the gradient flows to) instead of PyTorch's int64 indices. Values and gradients
    equal PyTorch's exactly, ties (the first maximum in the window wins) and NaNs included.
    Elsewhere (CUDA, NCHW, traced, compiled or exported graphs, no extension) it is
    :func:`max_pool2x2_relu_reference`. The fused op is an autograd function, like
    :func:`~brainseg.layers.upsample.upsample2x_relu`.

    Args:
        x: (N, C, H, W) floating tensor.

    Returns:
        (N, C, H // 2, W // 2); channels-last when the fused kernel ran.
    """
    if not _kernel_applies(x):
        return max_pool2x2_relu_reference(x)
    return _MaxPool2x2ReLU.apply(x, torch.is_grad_enabled() and x.requires_grad)


class _BatchNormMaxPool2x2ReLU(torch.autograd.Function):
    """Batch norm with batch statistics, pooling and ReLU: a statistics pass over x, then the fused
    pooling of the norm's affine map of x (its output never stored); one fused backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum: float, eps: float):
        mean, var = C_EXTENSION.channels_last_mean_var(x)  # float64, var biased
        if running_mean is not None:  # as nn.BatchNorm2d: the unbiased variance in the running one
            count = x.numel() // x.shape[1]
            running_mean.mul_(1 - momentum).add_((momentum * mean).to(running_mean.dtype))
            running_var.mul_(1 - momentum).add_((momentum * var * count / (count - 1)).to(running_var.dtype))
        invstd = (var + eps).rsqrt()
        scale = invstd if weight is None else weight.double() * invstd
        shift = -mean * scale if bias is None else bias.double() - mean * scale
        out, code = C_EXTENSION.max_pool2x2_relu_forward(x, True, scale, shift)
        ctx.save_for_backward(x, weight, mean, invstd, code)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        x, weight, mean, invstd, code = ctx.saved_tensors
        grad_output = grad_output.contiguous(memory_format=torch.channels_last)
        grad_x, grad_weight, grad_bias = C_EXTENSION.batch_norm_max_pool2x2_relu_backward(
            grad_output, code, x, mean, invstd, weight
        )
        return (
            grad_x if ctx.needs_input_grad[0] else None,
            grad_weight.to(weight.dtype) if ctx.needs_input_grad[1] else None,
            grad_bias.to(ctx.bias_dtype) if ctx.needs_input_grad[2] else None,
            None, None, None, None,
        )


def _momentum_of_this_batch(norm: nn.modules.batchnorm._BatchNorm) -> float:
    """What ``nn.BatchNorm2d.forward`` does before normalising a training batch: count the batch
    and return the weight of its statistics in the running ones (cumulative when momentum is None)."""
    if norm.track_running_stats and norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
        if norm.momentum is None:
            return 1.0 / float(norm.num_batches_tracked)
    return 0.0 if norm.momentum is None else norm.momentum


def batch_norm_max_pool2x2_relu(x: torch.Tensor, norm: nn.BatchNorm2d) -> torch.Tensor:
    """``relu(F.max_pool2d(norm(x), 2))``: UNeXt's encoder conv stage after its convolution.

    In training (batch statistics) on a channels-last CPU tensor that needs gradients, one C++ pass
    computes the batch statistics (float64 sums; running statistics updated as ``norm(x)`` would),
    the fused kernel of :func:`max_pool2x2_relu` pools the norm's affine map of x without storing
    the norm's output, and the backward of all three is one C++ kernel (the norm's gradient, zero
    except at each window's maximum, is never formed). The statistics are summed in another order
    than PyTorch's, so values agree with ``max_pool2x2_relu(norm(x))`` to rounding. Otherwise (eval
    mode, no gradients, another norm class such as ``nn.SyncBatchNorm``, ...) it is
    ``max_pool2x2_relu(norm(x))``.

    Args:
        x: (N, C, H, W) floating tensor.
        norm: the batch norm (its running statistics and batch counter are updated in training).

    Returns:
        (N, C, H // 2, W // 2).
    """
    if not (
        norm.training
        and type(norm) is nn.BatchNorm2d  # (not a subclass such as a synchronised norm: its statistics differ)
        and _kernel_applies(x)
        and x.numel() > x.shape[1]  # (one value per channel: PyTorch's error)
        and grad_wanted(x, norm.weight)
    ):
        return max_pool2x2_relu(norm(x))
    momentum = _momentum_of_this_batch(norm)
    return _BatchNormMaxPool2x2ReLU.apply(
        x, norm.weight, norm.bias, norm.running_mean, norm.running_var, momentum, norm.eps
    )


def conv3x3_max_pool2x2_relu_reference(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``relu(max_pool2d(conv2d(x, weight, bias, padding=1), 2))`` in plain PyTorch: what
    :func:`conv3x3_max_pool2x2_relu` computes."""
    return max_pool2x2_relu_reference(F.conv2d(x, weight, bias, padding=1))


def conv3x3_max_pool2x2_relu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """A 3x3 convolution (stride 1, zero padding 1), 2x2 max pooling and ReLU: the encoder's first
    stage of an inference net whose batch norm is folded into the convolution.

    Without gradients, on a channels-last float32/float64 CPU tensor with at most
    :data:`~brainseg.layers.conv.MAX_DIRECT_CONV_IN_CHANNELS` input channels, one C++ kernel
    computes each pooled output from the input directly: the full-resolution convolution output
    (16 channels at 256x256 for UNeXt: 32 MB a batch of 8 in float32), which costs more to write
    and read back than the few multiply-adds per pixel, is never stored. With more input channels,
    in float32, the Winograd kernel (:func:`~brainseg.layers.conv.winograd_conv3x3`) pools its
    output tiles before storing them (values equal up to float rounding, see
    :mod:`brainseg.layers.conv`).
    Otherwise (gradients, 16-bit dtypes and autocast, CUDA, NCHW, traced or exported graphs) it is
    PyTorch's convolution followed by :func:`max_pool2x2_relu` (itself fused where its kernel
    applies), the same values as :func:`conv3x3_max_pool2x2_relu_reference`.

    Args:
        x: (N, Cin, H, W) floating tensor.
        weight: (Cout, Cin, 3, 3).
        bias: (Cout,) or None.

    Returns:
        (N, Cout, H // 2, W // 2).
    """
    x, weight, bias = as_conv_under_autocast(x, weight, bias)
    if _kernel_applies(x) and not grad_wanted(x, weight, bias) and direct_conv3x3_serves(x, weight, bias):
        bias = weight.new_zeros(weight.shape[0]) if bias is None else bias
        return C_EXTENSION.conv3x3_max_pool2x2_relu_forward(x, weight, bias)
    if _kernel_applies(x) and winograd_conv3x3_serves(x, weight, bias):
        return winograd_conv3x3(x, weight, bias, pool=True)
    return max_pool2x2_relu(F.conv2d(x, weight, bias, padding=1))
