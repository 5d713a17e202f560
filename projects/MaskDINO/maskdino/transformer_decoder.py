"""Mask DINO transformer decoder: query selection, denoising queries, box refinement and the
class / box / mask heads."""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from brainseg.layers import MSDeformAttn

from .box_ops import box_xyxy_to_cxcywh, inverse_sigmoid, masks_to_boxes
from .denoising import build_denoising_queries
from .pixel_decoder import feed_forward, flatten_levels, level_pixel_centers
from .position_encoding import sine_embedding

__all__ = ["MLP", "DeformableDecoderLayer", "MaskDINODecoder", "encoder_proposals"]


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU in between (none after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def encoder_proposals(spatial_shapes: torch.Tensor, *, base_size: float = 0.05) -> Tuple[torch.Tensor, torch.Tensor]:
    """One anchor box per encoder token: the pixel centre, size ``base_size * 2**level``.

    Args:
        spatial_shapes: ``(L, 2)`` int64 (H, W) of the levels, finest first.
        base_size: normalised box size at the finest level.

    Returns:
        ``(S, 4)`` proposals (cx, cy, w, h) before the sigmoid (0 where invalid) and an ``(S,)``
        bool validity mask (all coordinates inside (0.01, 0.99)).
    """
    centers = level_pixel_centers(spatial_shapes)
    level_sizes = base_size * 2.0 ** torch.arange(len(spatial_shapes), dtype=torch.float32, device=centers.device)
    sizes = level_sizes.repeat_interleave(spatial_shapes.prod(1))
    proposals = torch.cat([centers, sizes[:, None].expand(-1, 2)], dim=-1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(dim=-1)
    return torch.where(valid[:, None], inverse_sigmoid(proposals), torch.zeros_like(proposals)), valid


class DeformableDecoderLayer(nn.Module):
    """Post-norm decoder layer: query self-attention, deformable cross-attention into the
    multi-scale memory around each query's reference box, feed-forward net.

    Args:
        d_model: query channels.
        num_levels, num_heads, num_points: attention geometry.
        dim_feedforward: feed-forward width.
        dropout: dropout rate.
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
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformAttn(d_model, num_levels, num_heads, num_points)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = feed_forward(d_model, dim_feedforward, dropout)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        tgt: torch.Tensor,
        query_pos: torch.Tensor,
        reference_boxes: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        self_attn_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            tgt, query_pos: ``(B, Q, C)`` query content and positional embedding.
            reference_boxes: ``(B, Q, 4)`` normalised (cx, cy, w, h).
            memory: ``(B, S, C)`` encoder tokens with their ``spatial_shapes``/``level_start_index``.
            self_attn_mask: optional ``(Q, Q)`` bool mask, True = may not attend.

        Returns:
            ``(B, Q, C)`` updated queries.
        """
        q = tgt + query_pos
        attended = self.self_attn(q, q, tgt, attn_mask=self_attn_mask, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout(attended))
        refs = reference_boxes[:, :, None].expand(-1, -1, len(spatial_shapes), -1)
        attended = self.cross_attn(tgt + query_pos, refs, memory, spatial_shapes, level_start_index)
        tgt = self.norm2(tgt + self.dropout(attended))
        return self.norm3(tgt + self.dropout(self.ffn(tgt)))


class MaskDINODecoder(nn.Module):
    """The Mask DINO decoder (Li et al. 2022, arXiv 2206.02777).

    1. Query selection: every encoder token gets a class score and a box (anchor + predicted
       offset); the top ``num_queries`` tokens become the content queries (detached) and
       their boxes the reference boxes. Their class/box/mask predictions are supervised too
       ("interm_outputs").
    2. In training, denoising queries (noised ground truth) are prepended.
    3. Each decoder layer refines the boxes (``box = sigmoid(delta + logit(previous box))``,
       previous box detached); every layer (and the initial queries) predicts class logits,
       boxes, and masks as ``mask_embed(query) . mask_features``.

    Args:
        num_classes: number of object classes (no background class: sigmoid scores).
        hidden_dim: query / memory channels (the pixel decoder's ``conv_dim``).
        num_queries: matching queries.
        num_heads, num_points: attention geometry.
        dim_feedforward: decoder feed-forward width.
        num_layers: decoder layers.
        mask_dim: channels of the mask-embedding map.
        num_levels: memory levels.
        dropout: dropout rate.
        dn_num_queries: denoising-query budget per image (0 disables denoising).
        dn_noise_scale: denoising noise scale (see :func:`build_denoising_queries`).
        initial_box: reference boxes of the selected queries: "proposal" (the encoder's box
            prediction) or "mask" (mask-enhanced: the box of the query's initial mask).
        num_stuff_classes: the last classes are "stuff" (one region per image, e.g. the
            background); the query selection always includes the best token of each, so an
            image full of object tokens cannot crowd them out.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        hidden_dim: int = 256,
        num_queries: int = 300,
        num_heads: int = 8,
        num_points: int = 4,
        dim_feedforward: int = 2048,
        num_layers: int = 6,
        mask_dim: int = 256,
        num_levels: int = 4,
        dropout: float = 0.0,
        dn_num_queries: int = 100,
        dn_noise_scale: float = 0.4,
        initial_box: str = "proposal",
        num_stuff_classes: int = 0,
    ):
        super().__init__()
        if initial_box not in ("proposal", "mask"):
            raise ValueError(f"MaskDINODecoder: initial_box must be 'proposal' or 'mask', got {initial_box!r}")
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.num_queries = num_queries
        self.num_levels = num_levels
        self.dn_num_queries = dn_num_queries
        self.dn_noise_scale = dn_noise_scale
        self.initial_box = initial_box
        if not 0 <= num_stuff_classes <= num_classes or num_stuff_classes >= num_queries:
            raise ValueError(
                f"MaskDINODecoder: num_stuff_classes ({num_stuff_classes}) must be in [0, num_classes] and below num_queries"
            )
        self.num_stuff_classes = num_stuff_classes

        self.enc_output = nn.Linear(hidden_dim, hidden_dim)
        self.enc_output_norm = nn.LayerNorm(hidden_dim)
        self.label_embedding = nn.Embedding(num_classes, hidden_dim)
        self.layers = nn.ModuleList(
            DeformableDecoderLayer(
                hidden_dim,
                num_levels=num_levels,
                num_heads=num_heads,
                num_points=num_points,
                dim_feedforward=dim_feedforward,
                dropout=dropout,
            )
            for _ in range(num_layers)
        )
        self.ref_point_head = MLP(2 * hidden_dim, hidden_dim, hidden_dim, 2)
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        # Heads shared by the query selection and all decoder layers.
        self.class_embed = nn.Linear(hidden_dim, num_classes)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        nn.init.constant_(self.class_embed.bias, -4.6)  # prior probability 0.01 (focal loss)
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)

    def _predict(
        self, queries: torch.Tensor, mask_features: torch.Tensor, *, with_masks: bool
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Class logits ``(B, Q, K)`` and mask logits ``(B, Q, h, w)`` of normalised queries."""
        return self.class_embed(queries), self._mask_logits(queries, mask_features) if with_masks else None

    def _mask_logits(self, queries: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        """Mask logits ``(B, Q, h, w)``: query mask embedding dotted with every pixel embedding."""
        return torch.einsum("bqc,bchw->bqhw", self.mask_embed(queries), mask_features)

    def _select_queries(
        self, memory: torch.Tensor, spatial_shapes: torch.Tensor, mask_features: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """Top-k encoder tokens -> (detached content, detached reference boxes unsigmoided, interm outputs)."""
        proposals, valid = encoder_proposals(spatial_shapes)
        if int(valid.sum()) < self.num_queries:
            raise ValueError(
                f"MaskDINODecoder: num_queries ({self.num_queries}) exceeds the {int(valid.sum())} "
                "valid encoder tokens of this input size"
            )
        tokens = self.enc_output_norm(self.enc_output(memory * valid[None, :, None]))
        logits = self.class_embed(tokens)
        boxes_unsigmoid = self.bbox_embed(tokens) + proposals[None]
        scores = logits.max(dim=-1).values.masked_fill(~valid[None], float("-inf"))
        index = scores.topk(self.num_queries - self.num_stuff_classes, dim=1).indices
        if self.num_stuff_classes:
            stuff = logits[..., -self.num_stuff_classes :].masked_fill(~valid[None, :, None], float("-inf"))
            index = torch.cat([index, stuff.argmax(dim=1)], dim=1)  # (B, Q)
        content = tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))
        boxes_unsigmoid = boxes_unsigmoid.gather(1, index[..., None].expand(-1, -1, 4))
        # The supervised scores are the very scores the selection ranked by.
        interm_logits = logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))
        # masks of the selected tokens: supervised in training, boxes for mask-enhanced init
        need_masks = self.training or self.initial_box == "mask"
        interm_masks = self._mask_logits(content, mask_features) if need_masks else None
        interm = {"pred_logits": interm_logits, "pred_masks": interm_masks, "pred_boxes": boxes_unsigmoid.sigmoid()}
        reference = boxes_unsigmoid.detach()
        if self.initial_box == "mask":
            reference = self._boxes_from_masks(interm_masks.detach(), fallback=reference)
        return content.detach(), reference, interm

    @staticmethod
    def _boxes_from_masks(mask_logits: torch.Tensor, *, fallback: torch.Tensor) -> torch.Tensor:
        """Unsigmoided cxcywh boxes of ``mask_logits > 0``; ``fallback`` where a mask is empty."""
        batch, queries, height, width = mask_logits.shape
        binary = mask_logits.flatten(0, 1) > 0
        scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=mask_logits.device)
        boxes = box_xyxy_to_cxcywh(masks_to_boxes(binary) / scale).view(batch, queries, 4)
        nonempty = binary.flatten(1).any(dim=1).view(batch, queries, 1)
        return torch.where(nonempty, inverse_sigmoid(boxes), fallback)

    def forward(
        self,
        multi_scale_features: Sequence[torch.Tensor],
        mask_features: torch.Tensor,
        targets: Optional[List[Dict[str, torch.Tensor]]] = None,
    ) -> Dict:
        """
        Args:
            multi_scale_features: ``num_levels`` maps ``(B, hidden_dim, h_l, w_l)`` from the pixel decoder.
            mask_features: ``(B, mask_dim, H/4, W/4)`` per-pixel embeddings.
            targets: in training, per image ``{"labels", "boxes" (normalised cxcywh)}`` for denoising.

        Returns:
            dict with "pred_logits" ``(B, Q, K)``, "pred_masks" ``(B, Q, H/4, W/4)``, "pred_boxes"
            ``(B, Q, 4)`` normalised cxcywh of the last layer; "aux_outputs" (earlier layers,
            training only), "interm_outputs" (query selection), and in training with
            denoising, "denoising": {"outputs": same structure for the denoising queries,
            "indices": per-image known (query, target) pairs, "num_groups"}, or None when the
            batch has no object.
        """
        if len(multi_scale_features) != self.num_levels:
            raise ValueError(
                f"MaskDINODecoder: expected {self.num_levels} feature levels, got {len(multi_scale_features)}"
            )
        memory, spatial_shapes, level_start_index = flatten_levels(multi_scale_features)
        content, reference_unsigmoid, interm = self._select_queries(memory, spatial_shapes, mask_features)

        denoising = None
        if self.training and targets is not None and self.dn_num_queries > 0:
            denoising = build_denoising_queries(
                targets,
                label_embedding=self.label_embedding,
                num_classes=self.num_classes,
                num_dn_queries=self.dn_num_queries,
                noise_scale=self.dn_noise_scale,
                num_matching_queries=self.num_queries,
            )
        attn_mask = None
        if denoising is not None:
            content = torch.cat([denoising.content, content], dim=1)
            reference_unsigmoid = torch.cat([denoising.boxes_unsigmoid, reference_unsigmoid], dim=1)
            attn_mask = denoising.attn_mask

        queries = content
        reference = reference_unsigmoid.sigmoid()
        predictions = [(*self._predict(self.decoder_norm(queries), mask_features, with_masks=self.training), reference)]
        for index, layer in enumerate(self.layers):
            query_pos = self.ref_point_head(sine_embedding(reference, self.hidden_dim // 2))
            queries = layer(queries, query_pos, reference, memory, spatial_shapes, level_start_index, attn_mask)
            normed = self.decoder_norm(queries)
            boxes = (self.bbox_embed(normed) + inverse_sigmoid(reference)).sigmoid()
            last = index == len(self.layers) - 1
            predictions.append((*self._predict(normed, mask_features, with_masks=self.training or last), boxes))
            reference = boxes.detach()

        num_dn = denoising.num_queries if denoising is not None else 0
        outputs = _pack(predictions, slice(num_dn, None), with_aux=self.training)
        outputs["interm_outputs"] = interm
        if denoising is not None:
            outputs["denoising"] = {
                "outputs": _pack(predictions, slice(0, num_dn), with_aux=True),
                "indices": denoising.indices,
                "num_groups": denoising.num_groups,
            }
        elif self.training and self.dn_num_queries > 0:
            outputs["denoising"] = None
            # Keep the label embedding in the graph so DDP sees every parameter used.
            outputs["pred_logits"] = outputs["pred_logits"] + 0.0 * self.label_embedding.weight.sum()
        return outputs


def _pack(predictions: List[Tuple], queries: slice, *, with_aux: bool) -> Dict:
    """Per-layer (logits, masks, boxes) -> DETR-style output dict over a slice of the queries."""

    def as_dict(logits, masks, boxes):
        return {
            "pred_logits": logits[:, queries],
            "pred_masks": masks[:, queries] if masks is not None else None,
            "pred_boxes": boxes[:, queries],
        }

    out = as_dict(*predictions[-1])
    if with_aux:
        out["aux_outputs"] = [as_dict(*p) for p in predictions[:-1]]
    return out
