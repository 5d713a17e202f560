"""3x3 convolutions (stride 1, zero padding 1) for float32 CPU inference by Winograd's minimal
filtering F(4x4, 3x3): per 4x4 output tile, 36 multiplications per pair of channels instead of the
direct convolution's 144 (C++ in ``csrc/conv``).

The kernel serves inference only (no gradient), channels-last float32 CPU tensors with more input
channels than the first layer's direct kernel takes (see
:func:`~brainseg.layers.max_pool.conv3x3_max_pool2x2_relu`). Its results equal the direct
convolution's up to float rounding, not bit for bit: the transforms scale and add values, which
makes the rounding error a few times larger (about 1e-5 of the output's largest value, against
1e-6 for oneDNN's direct convolution: measured in ``tools/benchmark.py resampling``), and a NaN or
infinity in the input makes its whole 4x4 output tile NaN (the direct convolution: the outputs whose
3x3 windows read it). Each filter's transform is computed once and kept while the filter is unchanged.

Example::

    with torch.no_grad():
        y = conv3x3(x, conv.weight, conv.bias)  # == F.conv2d(x, conv.weight, conv.bias, padding=1)
"""
import weakref
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .extension import C_EXTENSION, fused_cpu_kernel_serves, grad_wanted

__all__ = ["winograd_conv3x3_serves", "winograd_weight", "winograd_conv3x3", "conv3x3"]

# id(filter) -> ((storage address, version counter), its Winograd transform); an entry leaves when
# its filter is freed (inference copies are rebuilt when the trained weights change). Keyed by id:
# tensors compare element-wise, so they cannot be keys of a WeakKeyDictionary.
_TRANSFORMS: Dict[int, Tuple[Tuple[int, int], torch.Tensor]] = {}


def winograd_conv3x3_serves(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether the Winograd kernel computes ``conv2d(x, weight, bias, padding=1)``: no gradient is
    wanted, x is a channels-last float32 CPU tensor (see
    :func:`~brainseg.layers.extension.fused_cpu_kernel_serves`; under autocast the convolution's
    operands are 16-bit, so it does not apply), and the filter is a float32 (Cout, Cin, 3, 3) CPU tensor."""
    return (
        not grad_wanted(x, weight, bias)
        and fused_cpu_kernel_serves(x)
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and weight.dim() == 4
        and tuple(weight.shape[1:]) == (x.shape[1], 3, 3)
        and weight.dtype == torch.float32
        and weight.device.type == "cpu"
        and (bias is None or (bias.dtype == torch.float32 and bias.device.type == "cpu"))
    )


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """The Winograd-domain transform of a (Cout, Cin, 3, 3) filter, (36, Cin, Cout) with both
    channel counts rounded up to 16, computed in float64 and kept until the filter changes (in
    place or by replacement).

    Args:
        weight: float32 (Cout, Cin, 3, 3) CPU tensor.

    Returns:
        A float32 (36, ceil16(Cin), ceil16(Cout)) tensor.
    """
    key = (weight.data_ptr(), weight._version)
    cached = _TRANSFORMS.get(id(weight))
    if cached is not None and cached[0] == key:
        return cached[1]
    if cached is None:
        weakref.finalize(weight, _TRANSFORMS.pop, id(weight), None)
    transform = C_EXTENSION.winograd_conv3x3_weight(weight.detach())
    _TRANSFORMS[id(weight)] = (key, transform)
    return transform


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *, pool: bool = False) -> torch.Tensor:
    """``conv2d(x, weight, bias, padding=1)``, and with ``pool`` ``relu(max_pool2d(., 2))`` of it
    (the full-resolution output is then never stored), by the Winograd kernel: for inputs where
    :func:`winograd_conv3x3_serves` (see :func:`conv3x3` for a call that checks).

    Args:
        x: (N, Cin, H, W) channels-last float32 CPU tensor.
        weight: float32 (Cout, Cin, 3, 3).
        bias: float32 (Cout,) or None.
        pool: also 2x2 max pooling and ReLU.

    Returns:
        (N, Cout, H, W), or (N, Cout, H // 2, W // 2) with pool; channels-last float32.
    """
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    return C_EXTENSION.winograd_conv3x3_forward(x, winograd_weight(weight), bias.detach().contiguous(), pool)


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``conv2d(x, weight, bias, padding=1)``: by the Winograd kernel where
    :func:`winograd_conv3x3_serves` (inference on channels-last float32 CPU tensors), else by PyTorch.

    Args:
        x: (N, Cin, H, W).
        weight: (Cout, Cin, 3, 3).
        bias: (Cout,) or None.

    Returns:
        (N, Cout, H, W).
    """
    if winograd_conv3x3_serves(x, weight, bias):
        return winograd_conv3x3(x, weight, bias)
    return F.conv2d(x, weight, bias, padding=1)
