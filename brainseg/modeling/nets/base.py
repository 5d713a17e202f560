"""Base class of the brainseg segmentation nets: pads inputs to the net's stride, crops back."""

from abc import ABC, abstractmethod
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SegmentationNet", "UShapedNet", "doubling_widths"]


def doubling_widths(net_name: str, base_channels: int, depth: int) -> List[int]:
    """Widths ``base_channels * 2**i`` of levels 0..depth of a U-shaped net.

    Args:
        net_name: used in the error message.
        base_channels: width of level 0 (>= 1).
        depth: number of downsamplings (>= 1).

    Returns:
        ``depth + 1`` widths.
    """
    if depth < 1 or base_channels < 1:
        raise ValueError(f"{net_name} needs depth >= 1 and base_channels >= 1, got {depth}, {base_channels}")
    return [base_channels * 2**i for i in range(depth + 1)]


class SegmentationNet(nn.Module, ABC):
    """A dense net mapping (B, C, H, W) images to (B, K, H, W) logits for any H, W.

    Encoder-decoder nets need sizes divisible by their total stride. Subclasses set
    :attr:`size_divisibility` and implement :meth:`forward_padded`; :meth:`forward` zero-pads
    the bottom/right edges up to that multiple and crops the logits back to the input size.
    A caller that already pads (like :class:`~brainseg.modeling.BrainSegSemantic` does with
    ``ImageList``) pays nothing for this.

    Attributes:
        size_divisibility: the total stride; padded inputs are multiples of it.
        out_channels: number of logit channels.
    """

    size_divisibility: int = 1
    out_channels: int = 1

    @abstractmethod
    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Run the net on an input whose height and width are multiples of the stride."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args:
            x: (B, C, H, W) float images, any H and W.

        Returns:
            (B, out_channels, H, W) logits.
        """
        if x.dim() != 4:
            raise ValueError(f"{type(self).__name__} expects (B, C, H, W) input, got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        div = self.size_divisibility
        pad_h, pad_w = (-height) % div, (-width) % div
        if pad_h == 0 and pad_w == 0:
            return self.forward_padded(x)
        logits = self.forward_padded(F.pad(x, (0, pad_w, 0, pad_h)))
        return logits[..., :height, :width]


class UShapedNet(SegmentationNet):
    """An encoder-decoder with skips. Subclasses build the modules:

    * ``encoders``: modules whose outputs, in order, are the skips (each may downsample);
    * ``bridge``: the deepest module, applied to the last skip;
    * ``decoders``: modules called as ``decoder(x, skip)`` with the skips in reverse order;
    * ``head``: maps the last decoder output to the logits.
    """

    encoders: nn.ModuleList
    bridge: nn.Module
    decoders: nn.ModuleList
    head: nn.Module

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        x = self.bridge(x)
        for decoder, skip in zip(self.decoders, reversed(skips)):
            x = decoder(x, skip)
        return self.head(x)
