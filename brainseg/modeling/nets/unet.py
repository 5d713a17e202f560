"""U-Net (Ronneberger et al., MICCAI 2015) with batch norm and same-padded convolutions."""

import torch
from torch import nn

from .base import UShapedNet, doubling_widths
from .layers import ConvBN

__all__ = ["UNet", "DoubleConv"]


class DoubleConv(nn.Sequential):
    """Two (3x3 conv - BN - ReLU) layers; the convs have no bias since BN follows them."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            ConvBN(in_channels, out_channels, 3),
            nn.ReLU(inplace=True),
            ConvBN(out_channels, out_channels, 3),
            nn.ReLU(inplace=True),
        )


class DownBlock(nn.Sequential):
    """2x2 max-pool then :class:`DoubleConv`."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class UpBlock(nn.Module):
    """2x2 stride-2 transposed conv, concatenation with the skip, then :class:`DoubleConv`."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = DoubleConv(out_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(UShapedNet):
    """U-Net: ``depth`` encoder levels (:class:`DoubleConv`, the later ones after a 2x2
    max-pool), a max-pool + :class:`DoubleConv` bridge and ``depth`` decoder blocks
    (:class:`UpBlock`), then a 1x1 conv to the logits.

    Widths double per level: ``base_channels * 2**i`` for level i, the bridge has
    ``base_channels * 2**depth`` (64 -> 1024 at the defaults, 31,037,633 parameters).
    """

    def __init__(self, *, in_channels: int = 3, out_channels: int = 1, base_channels: int = 64, depth: int = 4):
        """
        Args:
            in_channels: image channels.
            out_channels: logit channels (1 = tumour logit).
            base_channels: width of the first encoder block.
            depth: number of max-pooling levels; inputs are padded to multiples of ``2**depth``.
        """
        super().__init__()
        widths = doubling_widths("UNet", base_channels, depth)
        self.size_divisibility = 2**depth
        self.out_channels = out_channels
        self.encoders = nn.ModuleList([DoubleConv(in_channels, widths[0])])
        self.encoders.extend(DownBlock(widths[i - 1], widths[i]) for i in range(1, depth))
        self.bridge = DownBlock(widths[-2], widths[-1])
        self.decoders = nn.ModuleList(UpBlock(widths[i + 1], widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], out_channels, 1)
