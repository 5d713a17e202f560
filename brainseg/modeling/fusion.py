"""BatchNorm folding for inference: eval-only copies of a net with each BatchNorm that directly
follows a convolution folded into that convolution's weights and bias.

In eval mode a BatchNorm is an affine map per channel, ``y = (x - mean) / sqrt(var + eps) * w + b``
with fixed statistics, so after a convolution it can be merged into the convolution: one pass
over the activations instead of two. The arithmetic is torch's own
(:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`).

Example::

    folded = fold_batchnorm(net)  # net is unchanged; folded is an eval-only copy
    with torch.no_grad():
        logits = folded(images)
"""

import copy
import itertools
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..layers.conv import Conv3x3
from .nets.layers import ConvBN

__all__ = ["fold_batchnorm", "cast_matmul_weights", "weights_version", "FoldedNetCache"]


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    """Whether ``norm`` can be folded into ``conv``: a 2D conv and a 2D batch norm with running
    statistics (a norm without them normalises with batch statistics even in eval mode)."""
    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(norm, nn.BatchNorm2d)
        and norm.running_mean is not None
        and conv.out_channels == norm.num_features
    )


def _fold_into(module: nn.Module) -> None:
    """Fold, in place, the conv -> BN pairs among the descendants of an eval-mode ``module``:
    :class:`~brainseg.modeling.nets.layers.ConvBN` modules become their folded conv, and in an
    ``nn.Sequential`` a Conv2d followed by a BatchNorm2d becomes the folded conv and an
    ``nn.Identity``."""
    for name, child in module.named_children():
        if isinstance(child, ConvBN) and _foldable(child.conv, child.norm):
            setattr(module, name, fuse_conv_bn_eval(child.conv, child.norm))
        else:
            _fold_into(child)
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for name, next_name in zip(names, names[1:]):
            conv, norm = module._modules[name], module._modules[next_name]
            if _foldable(conv, norm):
                setattr(module, name, fuse_conv_bn_eval(conv, norm))
                setattr(module, next_name, nn.Identity())


def _use_inference_convolutions(module: nn.Module) -> None:
    """Replace, in place, every plain 3x3 stride-1 ``nn.Conv2d`` among the descendants of
    ``module`` by a :class:`~brainseg.layers.conv.Conv3x3` holding the same parameters."""
    for name, child in module.named_children():
        if Conv3x3.takes(child):
            setattr(module, name, Conv3x3.from_conv(child))
        else:
            _use_inference_convolutions(child)


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """An eval-only copy of ``net`` with every BatchNorm2d that directly follows a Conv2d folded
    into the conv.

    Folded: the pair inside a :class:`~brainseg.modeling.nets.layers.ConvBN` (all the conv-BN
    pairs of UNet, ResUNet and UNeXt), and a Conv2d immediately followed by a BatchNorm2d in an
    ``nn.Sequential``. Other BatchNorms stay, e.g. ResUNet's pre-activation norms (BN - ReLU -
    conv, applied to a sum or a concatenation, not to a conv output), as do norms without running
    statistics. The weights keep their dtype, device and memory format.

    The copy's 3x3 stride-1 convolutions (folded or not) become
    :class:`~brainseg.layers.conv.Conv3x3` modules with the same parameters: in float32 on a CPU
    they run Winograd's algorithm (:mod:`brainseg.layers.conv`; UNet's and ResUNet's inference
    nets ~1.5x faster on 2 cores, BENCHMARKS.md; equal to float rounding).

    Args:
        net: any module; it is not modified.

    Returns:
        A deep copy in eval mode with ``requires_grad=False`` on every parameter: for inference
        only (its outputs equal ``net.eval()``'s up to float rounding). It does not follow later
        changes of ``net``'s weights (see :class:`FoldedNetCache`).
    """
    folded = copy.deepcopy(net).eval()
    _fold_into(folded)
    _use_inference_convolutions(folded)
    return folded.requires_grad_(False)


def cast_matmul_weights(net: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast, in place, the weights and biases of ``net``'s convolutions and linear layers to
    ``dtype`` (the modules autocast runs in that dtype), leaving norms and everything else alone.

    Under autocast to ``dtype`` this changes no result: autocast casts those parameters to ``dtype``
    at every call, and a parameter already in ``dtype`` is used as it is. It only saves the casts
    (one copy per convolution and linear layer per forward).

    Args:
        net: an eval-only module (e.g. from :func:`fold_batchnorm`).
        dtype: the autocast dtype (``torch.bfloat16`` or ``torch.float16``).

    Returns:
        ``net``.
    """
    for module in net.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            module.to(dtype)
    return net


def weights_version(module: nn.Module) -> Tuple[int, ...]:
    """A key that changes when a parameter or buffer of ``module`` is modified or replaced.

    It is made of the module's identity and, per tensor, the storage address and the version
    counter that every in-place operation bumps (optimizer steps, ``load_state_dict``, BatchNorm
    running statistics, ``module.to(...)``). Writes through ``tensor.data`` are not counted.

    Args:
        module: any module.

    Returns:
        A tuple of ints, equal for two calls iff nothing above happened in between.
    """
    tensors = itertools.chain(module.parameters(), module.buffers())
    return (id(module), *itertools.chain.from_iterable((t.data_ptr(), t._version) for t in tensors))


class FoldedNetCache:
    """The :func:`fold_batchnorm` copy of a net, built at the first :meth:`get` and rebuilt when
    the net's weights change (:func:`weights_version`) or another weight dtype is asked for.

    Not a module: an owner keeps it in a plain attribute, so the copy adds nothing to the owner's
    ``state_dict()``, checkpoints or ``parameters()``.
    """

    def __init__(self):
        self._net: Optional[nn.Module] = None
        self._version: Optional[Tuple] = None

    def get(self, net: nn.Module, matmul_dtype: Optional[torch.dtype] = None) -> nn.Module:
        """The folded copy of ``net``'s current weights (cached while they stay the same).

        Args:
            net: the net to fold.
            matmul_dtype: if given, the copy's convolution and linear weights are cast to it
                (:func:`cast_matmul_weights`): for forwards under autocast to that dtype.
        """
        version = (weights_version(net), matmul_dtype)
        if self._net is None or version != self._version:
            # ordinary tensors even when called under torch.inference_mode(), so that the copy
            # also serves later calls made outside inference mode
            with torch.inference_mode(False), torch.no_grad():
                self._net = fold_batchnorm(net)
                if matmul_dtype is not None:
                    cast_matmul_weights(self._net, matmul_dtype)
            self._version = version
        return self._net

    def clear(self) -> None:
        """Drop the copy (the next :meth:`get` folds again)."""
        self._net = self._version = None
