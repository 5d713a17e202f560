"""UNeXt (Valanarasu & Patel, MICCAI 2022, arXiv:2203.04268): a conv + tokenised-MLP U-Net.

Tokenised stages keep their tokens as (B, H, W, C) tensors, which are channels-last images seen
through ``permute(0, 3, 1, 2)``: with channels-last inputs the conv <-> token hand-overs are free.
"""

import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...layers.linear import linear
from ...layers.max_pool import batch_norm_max_pool2x2_relu, conv3x3_max_pool2x2_relu, max_pool2x2_relu
from ...layers.upsample import upsample2x_relu, upsample2x_relu_conv1x1
from .base import UShapedNet
from .layers import ConvBN

__all__ = ["UNeXt", "ShiftedMLPBlock", "shift_tokens"]


def shift_tokens(tokens: torch.Tensor, dim: int, shift_size: int) -> torch.Tensor:
    """Split channels into ``shift_size`` groups (as ``torch.chunk``) and shift group g by
    ``g - shift_size // 2`` positions along ``dim``, filling with zeros.

    Args:
        tokens: (B, H, W, C) tokens.
        dim: 1 to shift along the height, 2 along the width.
        shift_size: number of channel groups (odd).

    Returns:
        The shifted tokens, same shape.
    """
    pad = shift_size // 2
    size = tokens.shape[dim]
    pad_spec = [0, 0] * (3 - dim) + [pad, pad]
    padded = F.pad(tokens, pad_spec)
    groups = padded.chunk(shift_size, dim=-1)
    shifted = [group.narrow(dim, pad - shift, size) for group, shift in zip(groups, range(-pad, pad + 1))]
    return torch.cat(shifted, dim=-1)


class ShiftedMLPBlock(nn.Module):
    """Tokenised MLP block: ``x + MLP(LN(x))`` where the MLP is shift along the height -> linear
    -> 3x3 depth-wise conv -> GELU -> shift along the width -> linear (the linears on oneDNN:
    :func:`~brainseg.layers.linear.linear`)."""

    def __init__(self, dim: int, *, mlp_ratio: float = 1.0, shift_size: int = 5):
        """
        Args:
            dim: token channels.
            mlp_ratio: hidden width of the MLP relative to ``dim``.
            shift_size: channel groups of the shift (the paper uses 5).
        """
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.shift_size = shift_size
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Args:
            tokens: (B, H, W, C).

        Returns:
            (B, H, W, C).
        """
        x = linear(shift_tokens(self.norm(tokens), 1, self.shift_size), self.fc1.weight, self.fc1.bias)
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = linear(shift_tokens(F.gelu(x), 2, self.shift_size), self.fc2.weight, self.fc2.bias)
        return tokens + x


class ConvStage(nn.Module):
    """Encoder conv stage: 3x3 conv - BN - 2x2 max-pool - ReLU. The last two are fused
    (:func:`~brainseg.layers.max_pool.max_pool2x2_relu`); in training the BN joins them
    (:func:`~brainseg.layers.max_pool.batch_norm_max_pool2x2_relu`: one backward for the three); in
    the inference copy (BN folded: ``conv`` is a plain Conv2d) all of them are one kernel
    (:func:`~brainseg.layers.max_pool.conv3x3_max_pool2x2_relu`: a direct convolution where the
    input has few channels, Winograd's in float32 with more)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = ConvBN(in_channels, out_channels, 3, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.conv, nn.Conv2d):  # folded by brainseg.modeling.fusion
            return conv3x3_max_pool2x2_relu(x, self.conv.weight, self.conv.bias)
        if self.conv.training:
            return batch_norm_max_pool2x2_relu(self.conv.conv(x), self.conv.norm)
        return max_pool2x2_relu(self.conv(x))


class TokenStage(nn.Module):
    """Encoder tokenised stage: overlapping patch embedding (3x3 stride-2 conv + LN), a
    :class:`ShiftedMLPBlock`, and a LN. Returns (B, C, H/2, W/2) (a view of the tokens)."""

    def __init__(self, in_channels: int, out_channels: int, *, mlp_ratio: float, shift_size: int):
        super().__init__()
        self.embed = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.embed_norm = nn.LayerNorm(out_channels)
        self.block = ShiftedMLPBlock(out_channels, mlp_ratio=mlp_ratio, shift_size=shift_size)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed_norm(self.embed(x).permute(0, 2, 3, 1))
        return self.norm(self.block(tokens)).permute(0, 3, 1, 2)


class DecoderStage(nn.Module):
    """Decoder stage: 3x3 conv (- BN) - x2 bilinear upsampling - ReLU, plus the skip (the last
    three fused: :func:`~brainseg.layers.upsample.upsample2x_relu`), then optionally a
    :class:`ShiftedMLPBlock` and a LN on the result."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        batch_norm: bool = True,
        tokenised: bool = False,
        mlp_ratio: float = 1.0,
        shift_size: int = 5,
    ):
        super().__init__()
        if batch_norm:
            self.conv = ConvBN(in_channels, out_channels, 3, bias=True)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        if tokenised:
            self.block = ShiftedMLPBlock(out_channels, mlp_ratio=mlp_ratio, shift_size=shift_size)
            self.block_norm = nn.LayerNorm(out_channels)
        else:
            self.block = None

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = upsample2x_relu(self.conv(x), skip)
        if self.block is None:
            return x
        tokens = self.block_norm(self.block(x.permute(0, 2, 3, 1)))
        return tokens.permute(0, 3, 1, 2)


class Head(nn.Sequential):
    """The last decoder step and the 1x1 logit projection: 3x3 conv - x2 bilinear upsampling -
    ReLU - 1x1 conv, the last three fused (:func:`~brainseg.layers.upsample.upsample2x_relu_conv1x1`:
    the full-resolution feature map is never stored). A ``Sequential`` of the two convolutions'
    modules, so its parameters are named ``0.conv.*`` and ``1.*``."""

    def __init__(self, channels: int, out_channels: int):
        super().__init__(DecoderStage(channels, channels, batch_norm=False), nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stage, projection = self
        return upsample2x_relu_conv1x1(stage.conv(x), projection.weight, projection.bias)


class UNeXt(UShapedNet):
    """UNeXt: conv stages then tokenised-MLP stages, each halving the size; a decoder mirroring
    them (additive skips, x2 bilinear upsampling; the stages leaving a tokenised level also run a
    shifted-MLP block); a last conv - upsampling - ReLU to full size and a 1x1 conv.

    The defaults are the paper's (conv widths 16, 32, 128; token widths 160, 256): 1,471,921
    parameters for 3 input channels and 1 output channel.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        out_channels: int = 1,
        conv_channels: Sequence[int] = (16, 32, 128),
        token_channels: Sequence[int] = (160, 256),
        mlp_ratio: float = 1.0,
        shift_size: int = 5,
    ):
        """
        Args:
            in_channels: image channels.
            out_channels: logit channels (1 = tumour logit).
            conv_channels: widths of the conv stages (at least one).
            token_channels: widths of the tokenised stages (at least one).
            mlp_ratio: hidden width of the shifted MLPs relative to their input.
            shift_size: channel groups of the token shift.
        """
        super().__init__()
        if not conv_channels or not token_channels:
            raise ValueError("UNeXt needs at least one conv stage and one tokenised stage")
        widths: List[int] = [*conv_channels, *token_channels]
        num_conv = len(conv_channels)
        self.size_divisibility = 2 ** len(widths)
        self.out_channels = out_channels
        token_kwargs = dict(mlp_ratio=mlp_ratio, shift_size=shift_size)
        inputs = [in_channels, *widths[:-1]]
        stages = [ConvStage(inputs[i], widths[i]) for i in range(num_conv)]
        stages += [TokenStage(inputs[i], widths[i], **token_kwargs) for i in range(num_conv, len(widths))]
        self.encoders = nn.ModuleList(stages[:-1])
        self.bridge = stages[-1]
        self.decoders = nn.ModuleList(
            DecoderStage(widths[level], widths[level - 1], tokenised=level >= num_conv, **token_kwargs)
            for level in reversed(range(1, len(widths)))
        )
        self.head = Head(widths[0], out_channels)
        self.apply(self._init_token_weights)

    @staticmethod
    def _init_token_weights(module: nn.Module) -> None:
        """The paper's init for the tokenised parts: truncated normal (std 0.02) linears and
        He-normal (fan-out per group) patch-embedding and depth-wise convs."""
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, (TokenStage, ShiftedMLPBlock)):
            conv = module.embed if isinstance(module, TokenStage) else module.dwconv
            fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
            nn.init.normal_(conv.weight, std=math.sqrt(2.0 / fan_out))
            nn.init.zeros_(conv.bias)
