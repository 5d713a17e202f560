"""The multi-scale deformable attention module (Deformable-DETR semantics)."""
import math
from typing import Optional

import torch
from torch import nn

from .ms_deform_attn_function import ms_deform_attn

__all__ = ["MSDeformAttn"]


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Zhu et al., 2021).

    Every query predicts, per head, ``n_points`` sampling offsets around its reference
    point on each of ``n_levels`` feature levels, plus one attention weight per sample
    (softmax over levels x points). The values are a linear projection of the
    flattened multi-scale input; the sampled, weighted values of all heads are
    concatenated and projected back to ``d_model``.

    Parameter names (``sampling_offsets``, ``attention_weights``, ``value_proj``,
    ``output_proj``) follow Deformable-DETR/MaskDINO so their checkpoints load.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        """
        Args:
            d_model: channels of queries and values.
            n_levels: number of feature levels.
            n_heads: number of attention heads; must divide ``d_model``.
            n_points: sampling points per head and level.
        """
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"MSDeformAttn: d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        for name, v in (("n_levels", n_levels), ("n_heads", n_heads), ("n_points", n_points)):
            if v < 1:
                raise ValueError(f"MSDeformAttn: {name} must be >= 1, got {v}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Standard init: offsets start on a ring of ``n_heads`` directions, point k of
        each head at distance k + 1 pixels; uniform attention; xavier projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float64) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([thetas.cos(), thetas.sin()], -1)
        # Scale each direction so its larger component is 1 (a square ring).
        directions = directions / directions.abs().max(-1, keepdim=True).values
        distances = torch.arange(1, self.n_points + 1, dtype=torch.float64)
        bias = directions[:, None, None, :] * distances[None, None, :, None]
        bias = bias.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1).to(self.sampling_offsets.bias.dtype))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        input_spatial_shapes: torch.Tensor,
        input_level_start_index: torch.Tensor,
        input_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            query: (N, Lq, C) queries.
            reference_points: (N, Lq, L, 2) normalised (x, y) in [0, 1] (top-left (0, 0),
                bottom-right (1, 1)), or (N, Lq, L, 4) boxes (cx, cy, w, h) whose size
                scales the offsets.
            input_flatten: (N, S, C) flattened multi-scale features,
                S = sum of H_l * W_l.
            input_spatial_shapes: (L, 2) int64 (H, W) of each level.
            input_level_start_index: (L,) int64 first index of each level in S.
            input_padding_mask: optional (N, S) bool, True at padded positions (their
                values are zeroed so they contribute nothing).

        Returns:
            (N, Lq, C) attended features.
        """
        n, lq, _ = query.shape
        _, s, _ = input_flatten.shape
        if reference_points.dim() != 4 or reference_points.shape[:3] != (n, lq, self.n_levels):
            raise ValueError(
                f"MSDeformAttn: reference_points must be ({n}, {lq}, {self.n_levels}, 2 or 4), "
                f"got shape {tuple(reference_points.shape)}"
            )
        if input_spatial_shapes.shape[0] != self.n_levels:
            raise ValueError(
                f"MSDeformAttn: expected {self.n_levels} levels in input_spatial_shapes, "
                f"got {input_spatial_shapes.shape[0]}"
            )
        head_dim = self.d_model // self.n_heads
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            if input_padding_mask.shape != (n, s):
                raise ValueError(
                    f"MSDeformAttn: input_padding_mask must be ({n}, {s}), "
                    f"got shape {tuple(input_padding_mask.shape)}"
                )
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, s, self.n_heads, head_dim)

        offsets = self.sampling_offsets(query).view(n, lq, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(n, lq, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(n, lq, self.n_heads, self.n_levels, self.n_points)

        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: normalise by (W, H). Laid out as (L * P * 2)
            # contiguous values per query and head, so that both broadcasts run over long rows
            # (a (..., L, 1, 2) broadcast has an inner loop of 2 elements: 5x slower on CPU).
            levels_points = (self.n_levels, self.n_points, 2)
            normalizer = input_spatial_shapes.flip(-1).to(offsets.dtype)[:, None, :].expand(levels_points)
            ref = reference_points[:, :, :, None, :].expand(n, lq, *levels_points).reshape(n, lq, 1, -1)
            flat_offsets = offsets.reshape(n, lq, self.n_heads, -1) / normalizer.reshape(-1)
            locations = (ref + flat_offsets).view(n, lq, self.n_heads, *levels_points)
        elif reference_points.shape[-1] == 4:
            ref = reference_points[:, :, None, :, None, :]  # (N, Lq, 1, L, 1, 4)
            locations = torch.addcmul(ref[..., :2], offsets, ref[..., 2:] * (0.5 / self.n_points))
        else:
            raise ValueError(
                "MSDeformAttn: last dim of reference_points must be 2 (points) or 4 (boxes), "
                f"got {reference_points.shape[-1]}"
            )
        out = ms_deform_attn(value, input_spatial_shapes, input_level_start_index, locations, weights)
        return self.output_proj(out)
