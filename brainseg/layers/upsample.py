"""Fused 2x bilinear upsampling + ReLU (+ skip): the decoder step of UNeXt.

``upsample2x_relu(x, skip)`` computes::

    relu(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)) + skip

On a channels-last CPU tensor (what brainseg's nets run by default) it runs one C++ kernel of
``brainseg._C`` that reads x and skip once and writes the result once; the upsampled and
rectified intermediates of the unfused version, four times the size of x, are never stored, and
the backward recomputes the ReLU mask from x instead of keeping them. Elsewhere (CUDA, NCHW
tensors, integer dtypes, no extension, TorchScript tracing and ONNX export) it is the unfused
PyTorch composition :func:`upsample2x_relu_reference`. The fused op is a ``torch.library`` custom op
(``brainseg::upsample2x_relu``), so ``torch.compile`` keeps it in its graph.

bf16/fp16 inputs are computed in float32 and rounded once (the unfused version rounds after the
upsampling and again after the addition), so the two differ by at most a rounding of the output
dtype.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from .extension import C_EXTENSION

__all__ = ["upsample2x_relu", "upsample2x_relu_reference"]

_KERNEL_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def upsample2x_relu_reference(x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The unfused PyTorch composition of :func:`upsample2x_relu` (same arguments and result)."""
    out = F.relu(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False), inplace=True)
    return out if skip is None else out + skip


def _upsampled_shape(x: torch.Tensor) -> tuple:
    n, c, h, w = x.shape
    return n, c, 2 * h, 2 * w


if C_EXTENSION is not None:

    @torch.library.custom_op("brainseg::upsample2x_relu", mutates_args=())
    def _fused(x: torch.Tensor, skip: Optional[torch.Tensor]) -> torch.Tensor:
        return C_EXTENSION.upsample2x_relu_forward(x, skip)

    @_fused.register_fake
    def _(x, skip):
        return torch.empty(_upsampled_shape(x), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)

    @torch.library.custom_op("brainseg::upsample2x_relu_backward", mutates_args=())
    def _fused_backward(x: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
        return C_EXTENSION.upsample2x_relu_backward(x, grad_output)

    @_fused_backward.register_fake
    def _(x, grad_output):
        return torch.empty_like(x, memory_format=torch.channels_last)

    def _setup_context(ctx, inputs, output):
        x, skip = inputs
        ctx.save_for_backward(x)
        ctx.has_skip = skip is not None

    def _backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        grad_output = grad_output.contiguous(memory_format=torch.channels_last)
        return _fused_backward(x, grad_output), grad_output if ctx.has_skip else None

    _fused.register_autograd(_backward, setup_context=_setup_context)


def _kernel_applies(x: torch.Tensor, skip: Optional[torch.Tensor]) -> bool:
    """Whether the fused kernel serves these inputs (else the unfused composition runs). Traced
    and exported graphs (TorchScript, ONNX) get the composition: they cannot hold the custom op."""
    return (
        C_EXTENSION is not None
        and not torch.jit.is_tracing()
        and not torch.onnx.is_in_onnx_export()
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in _KERNEL_DTYPES
        and x.is_contiguous(memory_format=torch.channels_last)
        and (skip is None or (skip.device.type == "cpu" and skip.dtype in _KERNEL_DTYPES
                              and tuple(skip.shape) == _upsampled_shape(x)))
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
    return _fused(x, skip)
