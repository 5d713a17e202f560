"""Mask DINO pixel decoder: a deformable-attention encoder over multi-scale backbone features,
fused FPN-style with the stride-4 feature into the per-pixel mask-embedding map."""

from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from torch import nn
from torch.nn import functional as F

from brainseg.layers import MSDeformAttn

from .position_encoding import PositionEmbeddingSine, pixel_centers

__all__ = ["DeformableEncoderLayer", "MaskDINOPixelDecoder", "feed_forward", "flatten_levels", "level_pixel_centers"]


def flatten_levels(
    features: Sequence[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flatten a list of ``(B, C, H_l, W_l)`` maps into one token sequence.

    Returns:
        ``(B, S, C)`` tokens (level-major, row-major inside a level), ``(L, 2)`` int64
        spatial shapes ``(H_l, W_l)`` and ``(L,)`` int64 level start indices.
    """
    tokens = torch.cat([f.flatten(2).transpose(1, 2) for f in features], dim=1)
    shapes = torch.as_tensor([f.shape[-2:] for f in features], dtype=torch.long, device=tokens.device)
    starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    return tokens, shapes, starts


def level_pixel_centers(spatial_shapes: torch.Tensor) -> torch.Tensor:
    """Normalised ``(x, y)`` pixel centres of all levels in token order: ``(S, 2)``."""
    return torch.cat(
        [pixel_centers(h, w, device=spatial_shapes.device).reshape(-1, 2) for h, w in spatial_shapes.tolist()]
    )


def feed_forward(d_model: int, dim_feedforward: int, dropout: float) -> nn.Sequential:
    """The transformer feed-forward net: Linear, ReLU, Dropout, Linear."""
    return nn.Sequential(
        nn.Linear(d_model, dim_feedforward),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(dim_feedforward, d_model),
    )


class DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer: multi-scale deformable self-attention, then a feed-forward net.

    Args:
        d_model: token channels.
        num_levels, num_heads, num_points: MSDeformAttn geometry.
        dim_feedforward: hidden width of the feed-forward net.
        dropout: dropout after attention and in the feed-forward net.
    """

    def __init__(
        self,
        d_model: int,
        *,
        num_levels: int,
        num_heads: int,
        num_points: int,
        dim_feedforward: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, num_levels, num_heads, num_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = feed_forward(d_model, dim_feedforward, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """Args: src, pos: ``(B, S, C)``; reference_points ``(B, S, L, 2)``. Returns ``(B, S, C)``."""
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index)
        src = self.norm1(src + self.dropout(attended))
        return self.norm2(src + self.dropout(self.ffn(src)))


class MaskDINOPixelDecoder(nn.Module):
    """Multi-scale deformable encoder + FPN fusion (Mask DINO's pixel decoder).

    Backbone features ``transformer_in_features`` (e.g. res3..res5) are projected to
    ``conv_dim`` channels; ``total_num_feature_levels - len(transformer_in_features)`` extra
    levels are made by stride-2 convolutions from the coarsest one. All levels, with sine
    position + learned level embeddings, go through ``num_encoder_layers`` deformable
    encoder layers. The finest encoded level is upsampled and added to a lateral projection
    of every finer backbone feature (res2), and a 1x1 conv turns the result into the
    ``mask_dim``-channel per-pixel embedding map.

    Args:
        input_shape: backbone output shapes by name (needs the transformer features and
            every finer feature used for the FPN fusion).
        transformer_in_features: backbone features given to the encoder.
        total_num_feature_levels: encoder levels (>= number of transformer features).
        conv_dim: encoder / FPN channels.
        mask_dim: channels of the mask-embedding map.
        num_heads, num_points: MSDeformAttn geometry.
        dim_feedforward: encoder feed-forward width.
        num_encoder_layers: encoder depth.
        dropout: encoder dropout.
        norm: detectron2 norm name for the projection / FPN convolutions.
    """

    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_in_features: Sequence[str] = ("res3", "res4", "res5"),
        total_num_feature_levels: int = 4,
        conv_dim: int = 256,
        mask_dim: int = 256,
        num_heads: int = 8,
        num_points: int = 4,
        dim_feedforward: int = 1024,
        num_encoder_layers: int = 6,
        dropout: float = 0.0,
        norm: str = "GN",
    ):
        super().__init__()
        missing = [name for name in transformer_in_features if name not in input_shape]
        if missing:
            raise KeyError(
                f"MaskDINOPixelDecoder: transformer_in_features {missing} not in input_shape {list(input_shape)}"
            )
        if total_num_feature_levels < len(transformer_in_features):
            raise ValueError(
                f"MaskDINOPixelDecoder: total_num_feature_levels ({total_num_feature_levels}) < "
                f"number of transformer_in_features ({len(transformer_in_features)})"
            )
        # Fine-to-coarse order everywhere.
        self.transformer_in_features = sorted(transformer_in_features, key=lambda k: input_shape[k].stride)
        finest_stride = input_shape[self.transformer_in_features[0]].stride
        self.fpn_in_features = sorted(
            (k for k, v in input_shape.items() if v.stride < finest_stride), key=lambda k: -input_shape[k].stride
        )
        if not self.fpn_in_features:
            raise ValueError(
                "MaskDINOPixelDecoder: need a backbone feature finer than the transformer features (e.g. res2)"
            )
        # The backbone features this module reads (checked against the backbone by MaskDINO).
        self.input_shape = {k: input_shape[k] for k in [*self.fpn_in_features, *self.transformer_in_features]}
        self.total_num_feature_levels = total_num_feature_levels
        self.mask_stride = input_shape[self.fpn_in_features[-1]].stride

        def project(in_channels: int, kernel_size: int, stride: int) -> nn.Module:
            conv = Conv2d(
                in_channels,
                conv_dim,
                kernel_size=kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                norm=get_norm(norm, conv_dim),
            )
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
            return conv

        self.input_proj = nn.ModuleList(project(input_shape[k].channels, 1, 1) for k in self.transformer_in_features)
        extra_in = input_shape[self.transformer_in_features[-1]].channels
        self.extra_proj = nn.ModuleList(
            project(extra_in if i == 0 else conv_dim, 3, 2)
            for i in range(total_num_feature_levels - len(self.transformer_in_features))
        )
        self.level_embed = nn.Parameter(torch.empty(total_num_feature_levels, conv_dim))
        nn.init.normal_(self.level_embed)
        self.position_embedding = PositionEmbeddingSine(conv_dim // 2)
        self.encoder = nn.ModuleList(
            DeformableEncoderLayer(
                conv_dim,
                num_levels=total_num_feature_levels,
                num_heads=num_heads,
                num_points=num_points,
                dim_feedforward=dim_feedforward,
                dropout=dropout,
            )
            for _ in range(num_encoder_layers)
        )
        self.lateral_convs = nn.ModuleList(
            Conv2d(input_shape[k].channels, conv_dim, kernel_size=1, bias=False, norm=get_norm(norm, conv_dim))
            for k in self.fpn_in_features
        )
        self.output_convs = nn.ModuleList(
            Conv2d(
                conv_dim,
                conv_dim,
                kernel_size=3,
                padding=1,
                bias=False,
                norm=get_norm(norm, conv_dim),
                activation=F.relu,
            )
            for _ in self.fpn_in_features
        )
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        for conv in [*self.lateral_convs, *self.output_convs, self.mask_features]:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward(self, features: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """
        Args:
            features: backbone outputs by name.

        Returns:
            mask_features: ``(B, mask_dim, H / mask_stride, W / mask_stride)`` per-pixel embeddings.
            multi_scale_features: ``total_num_feature_levels`` encoded maps ``(B, conv_dim, h_l, w_l)``,
            finest first.
        """
        levels = [proj(features[k]) for proj, k in zip(self.input_proj, self.transformer_in_features)]
        extra_input = features[self.transformer_in_features[-1]]
        for proj in self.extra_proj:
            extra_input = proj(extra_input)
            levels.append(extra_input)
        pos = [self.position_embedding(x) + self.level_embed[i][None, :, None, None] for i, x in enumerate(levels)]
        src, spatial_shapes, level_start_index = flatten_levels(levels)
        pos, _, _ = flatten_levels(pos)
        # every token attends around its own pixel centre, on every level
        centers = level_pixel_centers(spatial_shapes)
        reference_points = centers[None, :, None, :].expand(src.shape[0], -1, len(spatial_shapes), -1)
        for layer in self.encoder:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index)

        batch, _, channels = src.shape
        sizes = spatial_shapes.prod(1).tolist()
        multi_scale = [
            tokens.transpose(1, 2).reshape(batch, channels, h, w)
            for tokens, (h, w) in zip(src.split(sizes, dim=1), spatial_shapes.tolist())
        ]
        fused = multi_scale[0]
        for name, lateral, output in zip(self.fpn_in_features, self.lateral_convs, self.output_convs):
            lat = lateral(features[name])
            fused = output(lat + F.interpolate(fused, size=lat.shape[-2:], mode="bilinear", align_corners=False))
        return self.mask_features(fused), multi_scale
