"""Deep residual U-Net (Zhang, Liu & Wang, "Road extraction by deep residual U-Net", 2018)."""

import torch
import torch.nn.functional as F
from torch import nn

from .base import UShapedNet, doubling_widths
from .layers import ConvBN

__all__ = ["ResUNet", "ResidualUnit"]


class ResidualUnit(nn.Module):
    """A residual unit with a projection shortcut (1x1 conv, same stride, + BN).

    With ``pre_activation=True`` (all units but the first) the residual branch is
    (BN - ReLU - 3x3 conv) x 2, the first conv carrying the stride. The first unit of the net
    sees the raw image, so its branch is 3x3 conv - BN - ReLU - 3x3 conv.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, pre_activation: bool = True):
        """
        Args:
            in_channels: input channels.
            out_channels: output channels.
            stride: stride of the first conv and of the shortcut (2 halves the size).
            pre_activation: use the pre-activation branch (BN-ReLU before each conv).
        """
        super().__init__()
        layers = [nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True)] if pre_activation else []
        layers += [
            ConvBN(in_channels, out_channels, 3, stride=stride),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        ]
        self.branch = nn.Sequential(*layers)
        self.shortcut = ConvBN(in_channels, out_channels, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x) + self.shortcut(x)


class UpResidualBlock(nn.Module):
    """x2 nearest upsampling, concatenation with the skip, then a :class:`ResidualUnit`."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.unit = ResidualUnit(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.unit(torch.cat([x, skip], dim=1))


class ResUNet(UShapedNet):
    """ResUNet: an encoder of ``depth`` residual units (the first at full resolution, the others
    downsampling by 2), a downsampling residual bridge, and ``depth`` decoder levels of
    (x2 nearest upsampling, concatenation with the skip, residual unit), then a 1x1 conv.

    Widths are ``base_channels * 2**i``; the defaults (64, 128, 256, bridge 512) are the paper's:
    its 7.8 M parameters are those of the 3x3 convs, the projection shortcuts and norms bring
    the total to 8,219,585.
    """

    def __init__(self, *, in_channels: int = 3, out_channels: int = 1, base_channels: int = 64, depth: int = 3):
        """
        Args:
            in_channels: image channels.
            out_channels: logit channels (1 = tumour logit).
            base_channels: width of the first level.
            depth: number of encoder levels; inputs are padded to multiples of ``2**depth``.
        """
        super().__init__()
        widths = doubling_widths("ResUNet", base_channels, depth)
        self.size_divisibility = 2**depth
        self.out_channels = out_channels
        self.encoders = nn.ModuleList([ResidualUnit(in_channels, widths[0], pre_activation=False)])
        self.encoders.extend(ResidualUnit(widths[i - 1], widths[i], stride=2) for i in range(1, depth))
        self.bridge = ResidualUnit(widths[-2], widths[-1], stride=2)
        self.decoders = nn.ModuleList(
            UpResidualBlock(widths[i + 1], widths[i], widths[i]) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)
