"""Layers shared by the nets."""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBN"]


class ConvBN(nn.Module):
    """A 2D convolution followed by batch norm; in eval mode the norm is folded into the
    convolution's weights and bias (one pass over the output instead of two).

    The folding is recomputed at every eval call from the current parameters, so it stays
    exact while weights change during training, and it is differentiable.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, bias: bool = False):
        """
        Args:
            in_channels, out_channels: channels of the convolution.
            kernel_size: square kernel size; padding is ``kernel_size // 2`` (same size at stride 1).
            stride: convolution stride.
            bias: give the convolution a bias (redundant before a norm; kept for parity with
                published models).
        """
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias
        )
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.norm.running_var is None:
            return self.norm(self.conv(x))
        norm = self.norm
        scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
        bias = norm.bias - norm.running_mean * scale
        if self.conv.bias is not None:
            bias = bias + self.conv.bias * scale
        weight = self.conv.weight * scale.view(-1, 1, 1, 1)
        return F.conv2d(x, weight, bias, self.conv.stride, self.conv.padding)
