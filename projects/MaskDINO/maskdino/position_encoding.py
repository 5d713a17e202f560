"""Sine positional encodings (DETR/DINO style) for feature maps and for boxes."""

import math

import torch
from torch import nn

__all__ = ["pixel_centers", "sine_embedding", "PositionEmbeddingSine"]


def pixel_centers(height: int, width: int, *, device: torch.device = None) -> torch.Tensor:
    """Centres of the pixels of an ``height x width`` grid in normalised coordinates.

    Returns:
        ``(height, width, 2)`` float tensor of ``(x, y)`` in (0, 1): ``((j + 0.5) / width, (i + 0.5) / height)``.
    """
    ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1)


def sine_embedding(coords: torch.Tensor, num_feats: int, *, temperature: float = 10000.0) -> torch.Tensor:
    """Embed normalised coordinates with interleaved sines and cosines.

    Each coordinate ``c`` in [0, 1] becomes ``num_feats`` values
    ``sin(2 pi c / T^(2i/num_feats)), cos(2 pi c / T^(2i/num_feats))`` for ``i < num_feats / 2``.

    Args:
        coords: ``(..., K)`` coordinates in [0, 1] (e.g. ``(y, x)`` of a pixel or
            ``(cx, cy, w, h)`` of a box).
        num_feats: features per coordinate (even).
        temperature: the wavelength base ``T``.

    Returns:
        ``(..., K * num_feats)`` embedding, coordinate-major.
    """
    if num_feats % 2:
        raise ValueError(f"sine_embedding: num_feats must be even, got {num_feats}")
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos = coords.float()[..., None] * (2 * math.pi) / dim_t  # (..., K, F)
    pos = torch.stack([pos[..., 0::2].sin(), pos[..., 1::2].cos()], dim=-1).flatten(-2)
    return pos.flatten(-2)


class PositionEmbeddingSine(nn.Module):
    """Fixed 2-D sine position embedding of a feature map (pixel centres normalised to [0, 1]).

    Args:
        num_pos_feats: channels per axis; the output has ``2 * num_pos_feats`` channels
            (first the y half, then the x half).
        temperature: wavelength base.
    """

    def __init__(self, num_pos_feats: int, *, temperature: float = 10000.0):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: ``(B, C, H, W)`` feature map. Returns: ``(B, 2 * num_pos_feats, H, W)``."""
        batch, _, height, width = x.shape
        grid = pixel_centers(height, width, device=x.device).flip(-1)  # (H, W, 2) as (y, x)
        pos = sine_embedding(grid, self.num_pos_feats, temperature=self.temperature)
        return pos.permute(2, 0, 1).unsqueeze(0).expand(batch, -1, -1, -1).to(x.dtype)
