"""Unified denoising training (DN-DETR / DINO / Mask DINO): noised ground-truth queries.

Every ground-truth object becomes, in each of ``num_groups`` groups, one extra decoder query
whose content is the embedding of its (randomly flipped) label and whose reference box is
its (randomly shifted and rescaled) box. The decoder must reconstruct the clean class, box
and mask from them; their losses use the known assignment, no matching. Groups are padded
to the largest object count in the batch, and an attention mask keeps the matching
queries from seeing any denoising query and each group from seeing the other groups.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .box_ops import inverse_sigmoid

__all__ = ["DenoisingQueries", "denoising_attention_mask", "build_denoising_queries"]


@dataclass
class DenoisingQueries:
    """Denoising queries of a batch, placed before the matching queries.

    Attributes:
        content: ``(B, P, C)`` content queries (label embeddings; zero in padding slots).
        boxes_unsigmoid: ``(B, P, 4)`` reference boxes ``(cx, cy, w, h)`` before the sigmoid.
        attn_mask: ``(P + Q, P + Q)`` bool self-attention mask, True = may not attend.
        num_groups: number of denoising groups ``G``.
        group_size: queries per group (the largest object count in the batch); ``P = G * group_size``.
        indices: per image, ``(query_index, target_index)`` int64 pairs of the known assignment.
    """

    content: torch.Tensor
    boxes_unsigmoid: torch.Tensor
    attn_mask: torch.Tensor
    num_groups: int
    group_size: int
    indices: List[Tuple[torch.Tensor, torch.Tensor]]

    @property
    def num_queries(self) -> int:
        """Number of denoising queries per image (``P``)."""
        return self.num_groups * self.group_size


def denoising_attention_mask(
    num_groups: int, group_size: int, num_matching_queries: int, *, device: Optional[torch.device] = None
) -> torch.Tensor:
    """Self-attention mask for ``[denoising groups..., matching queries]``.

    Args:
        num_groups: number of denoising groups.
        group_size: queries per group.
        num_matching_queries: number of matching queries after the groups.
        device: device of the result.

    Returns:
        ``(P + Q, P + Q)`` bool tensor, ``mask[i, j]`` True when query ``i`` may not attend to
        query ``j``: matching queries never see denoising queries, and a denoising query sees
        only its own group and the matching queries.
    """
    pad = num_groups * group_size
    total = pad + num_matching_queries
    group = torch.arange(total, device=device) // max(group_size, 1)
    is_dn = torch.arange(total, device=device) < pad
    row_dn, col_dn = is_dn[:, None], is_dn[None, :]
    other_group = group[:, None] != group[None, :]
    return (~row_dn & col_dn) | (row_dn & col_dn & other_group)


def build_denoising_queries(
    targets: List[Dict[str, torch.Tensor]],
    *,
    label_embedding: nn.Embedding,
    num_classes: int,
    num_dn_queries: int,
    noise_scale: float,
    num_matching_queries: int,
) -> Optional[DenoisingQueries]:
    """Make the noised ground-truth queries of a batch.

    Args:
        targets: per image ``{"labels": (n,) int64, "boxes": (n, 4) normalised cxcywh}``.
        label_embedding: class-label embedding (``num_classes`` rows) for the content queries.
        num_classes: number of classes; a flipped label is drawn uniformly from them.
        num_dn_queries: budget of denoising queries per image; ``G = budget // max(n)``.
        noise_scale: label-flip probability is ``noise_scale / 2``; box centres move by up to
            ``noise_scale * size / 2`` and sizes change by up to ``noise_scale * size``.
        num_matching_queries: number of matching queries (for the attention mask).

    Returns:
        The queries, or None when the batch has no objects or the budget is smaller than
        the largest object count.
    """
    counts = [len(t["labels"]) for t in targets]
    group_size = max(counts, default=0)
    if group_size == 0 or num_dn_queries < group_size:
        return None
    num_groups = num_dn_queries // group_size
    device = label_embedding.weight.device
    batch = len(targets)

    labels = torch.zeros(batch, group_size, dtype=torch.long, device=device)
    boxes = torch.zeros(batch, group_size, 4, device=device)
    valid = torch.zeros(batch, group_size, dtype=torch.bool, device=device)
    for b, (t, n) in enumerate(zip(targets, counts)):
        labels[b, :n] = t["labels"]
        boxes[b, :n] = t["boxes"]
        valid[b, :n] = True
    labels = labels[:, None].repeat(1, num_groups, 1)  # (B, G, n)
    boxes = boxes[:, None].repeat(1, num_groups, 1, 1)
    valid = valid[:, None].expand(-1, num_groups, -1)

    if noise_scale > 0:
        flip = torch.rand(labels.shape, device=device) < noise_scale * 0.5
        labels = torch.where(flip, torch.randint_like(labels, 0, num_classes), labels)
        amplitude = torch.cat([boxes[..., 2:] / 2, boxes[..., 2:]], dim=-1)
        boxes = boxes + (torch.rand_like(boxes) * 2 - 1) * amplitude * noise_scale
        boxes = boxes.clamp(min=0.0, max=1.0)

    content = label_embedding(labels) * valid[..., None]
    boxes_unsigmoid = torch.where(valid[..., None], inverse_sigmoid(boxes), torch.zeros_like(boxes))
    indices = []
    for n in counts:
        query = (
            torch.arange(num_groups, device=device)[:, None] * group_size + torch.arange(n, device=device)[None]
        ).reshape(-1)
        indices.append((query, torch.arange(n, device=device).repeat(num_groups)))
    return DenoisingQueries(
        content=content.reshape(batch, num_groups * group_size, -1),
        boxes_unsigmoid=boxes_unsigmoid.reshape(batch, num_groups * group_size, 4),
        attn_mask=denoising_attention_mask(num_groups, group_size, num_matching_queries, device=device),
        num_groups=num_groups,
        group_size=group_size,
        indices=indices,
    )
