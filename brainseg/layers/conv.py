"""3x3 convolutions (stride 1, zero padding 1) for float32 CPU inference by Winograd's minimal
filtering F(4x4, 3x3) (C++ in ``csrc/conv``), and where brainseg's direct 3x3 kernel takes over.

Per 4x4 output tile, Winograd's algorithm needs 36 multiplications per pair of channels instead of
the direct convolution's 144. The kernel serves inference only (no gradient), on channels-last
float32 CPU tensors with more input channels than the direct kernel of
:func:`~brainseg.layers.max_pool.conv3x3_max_pool2x2_relu` takes (:data:`MAX_DIRECT_CONV_IN_CHANNELS`:
an image's first layer). Its results equal the direct convolution's up to float rounding, not bit
for bit: the transforms scale and add values, which makes the rounding error a few times larger
(about 1e-5 of the output's largest value, against 1e-6 for oneDNN's direct convolution: see
``tests/test_conv3x3.py``), and a NaN or infinity in the input makes its whole 4x4 output tile NaN
(the direct convolution: the outputs whose 3x3 windows read it). Each filter's transform is
computed once and kept while the filter is unchanged.

Example::

    with torch.no_grad():
        y = conv3x3(x, conv.weight, conv.bias)  # == F.conv2d(x, conv.weight, conv.bias, padding=1)
"""
import weakref
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .extension import C_EXTENSION, fused_cpu_kernel_serves, grad_wanted

__all__ = [
    "MAX_DIRECT_CONV_IN_CHANNELS",
    "DIRECT_CONV_DTYPES",
    "direct_conv3x3_serves",
    "winograd_conv3x3_serves",
    "winograd_weight",
    "winograd_conv3x3",
    "conv3x3",
    "Conv3x3",
]

# Input channels up to which the direct convolution (with pooling) pays: its cost grows with them
# (UNeXt's first layer has 3); at 16 Winograd's was faster (8 -> 16 channels at 256x256, pooled:
# direct 7.8 ms, Winograd 13.0; 16 -> 16: 14.8 and 8.0, batch 8, measured; 9-15 not measured,
# Winograd takes them)
MAX_DIRECT_CONV_IN_CHANNELS = 8
# dtypes the direct convolution runs for: in bf16 oneDNN's convolution (native bf16 instructions)
# and the half-size stored output made the whole UNeXt inference net 0.6-1.1 ms slower with the
# kernel on an AVX512-BF16 CPU (BENCHMARKS.md), so 16-bit inputs get PyTorch's
DIRECT_CONV_DTYPES = (torch.float32, torch.float64)

# id(filter) -> ((storage address, version counter), its Winograd transform); an entry leaves when
# its filter is freed (inference copies are rebuilt when the trained weights change). Keyed by id:
# tensors compare element-wise, so they cannot be keys of a WeakKeyDictionary.
_TRANSFORMS: Dict[int, Tuple[Tuple[int, int], torch.Tensor]] = {}


def direct_conv3x3_serves(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether the direct kernel of :func:`~brainseg.layers.max_pool.conv3x3_max_pool2x2_relu`
    takes these operands: x is a channels-last CPU tensor of a :data:`DIRECT_CONV_DTYPES` dtype with
    at most :data:`MAX_DIRECT_CONV_IN_CHANNELS` channels (see
    :func:`~brainseg.layers.extension.fused_cpu_kernel_serves`), and the filter and bias are CPU
    tensors of its dtype and shape."""
    return (
        fused_cpu_kernel_serves(x)
        and x.dtype in DIRECT_CONV_DTYPES
        and x.shape[1] <= MAX_DIRECT_CONV_IN_CHANNELS
        and weight.dim() == 4
        and tuple(weight.shape[1:]) == (x.shape[1], 3, 3)
        and weight.dtype == x.dtype
        and weight.device.type == "cpu"
        and (bias is None or (bias.dtype == x.dtype and bias.device.type == "cpu"))
    )


def winograd_conv3x3_serves(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether the Winograd kernel computes ``conv2d(x, weight, bias, padding=1)``: no gradient is
    wanted, x is a channels-last float32 CPU tensor with more than
    :data:`MAX_DIRECT_CONV_IN_CHANNELS` channels (see
    :func:`~brainseg.layers.extension.fused_cpu_kernel_serves`; under autocast the convolution's
    operands are 16-bit, so it does not apply), and the filter is a float32 (Cout, Cin, 3, 3) CPU tensor."""
    return (
        not grad_wanted(x, weight, bias)
        and fused_cpu_kernel_serves(x)
        and x.dtype == torch.float32
        and x.shape[1] > MAX_DIRECT_CONV_IN_CHANNELS
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
    place or by replacement). A filter made under ``torch.inference_mode()`` has no version counter:
    its transform is computed at every call (the folded inference copies of
    :class:`~brainseg.modeling.fusion.FoldedNetCache` are ordinary tensors, cached).

    Args:
        weight: float32 (Cout, Cin, 3, 3) CPU tensor.

    Returns:
        A float32 (36, ceil16(Cin), ceil16(Cout)) tensor.
    """
    if weight.is_inference():  # (made under torch.inference_mode(): no version counter to key a cache on)
        return C_EXTENSION.winograd_conv3x3_weight(weight)
    key = (weight.data_ptr(), weight._version)
    cached = _TRANSFORMS.get(id(weight))
    if cached is not None and cached[0] == key:
        return cached[1]
    if cached is None:
        weakref.finalize(weight, _TRANSFORMS.pop, id(weight), None)
    transform = C_EXTENSION.winograd_conv3x3_weight(weight.detach())
    _TRANSFORMS[id(weight)] = (key, transform)
    return transform


def winograd_conv3x3(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *, pool: bool = False
) -> torch.Tensor:
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


class Conv3x3(nn.Conv2d):
    """An ``nn.Conv2d`` with a 3x3 kernel, stride 1, zero padding 1, no dilation and one group whose
    forward is :func:`conv3x3`: the Winograd kernel in float32 CPU inference, PyTorch's convolution
    otherwise. The inference copies of :func:`~brainseg.modeling.fusion.fold_batchnorm` hold these
    in place of such convolutions (:meth:`from_conv`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv3x3(x, self.weight, self.bias)

    @staticmethod
    def takes(conv: nn.Module) -> bool:
        """Whether ``conv`` is a plain ``nn.Conv2d`` (not a subclass) of this geometry."""
        return (
            type(conv) is nn.Conv2d
            and conv.kernel_size == (3, 3)
            and conv.stride == (1, 1)
            and conv.padding == (1, 1)
            and conv.dilation == (1, 1)
            and conv.groups == 1
            and conv.padding_mode == "zeros"
        )

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "Conv3x3":
        """A :class:`Conv3x3` holding ``conv``'s own parameters (not copies); ``conv`` must pass
        :meth:`takes`."""
        if not cls.takes(conv):
            raise ValueError(f"Conv3x3.from_conv: not a 3x3, stride 1, padding 1 nn.Conv2d: {conv}")
        new = cls(conv.in_channels, conv.out_channels, 3, padding=1, bias=conv.bias is not None, device="meta")
        new.weight = conv.weight
        if conv.bias is not None:
            new.bias = conv.bias
        return new.train(conv.training)
