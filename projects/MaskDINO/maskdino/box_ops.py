"""Box utilities for Mask DINO: format conversion, generalized IoU, boxes from masks.

Boxes inside the model are normalised ``(cx, cy, w, h)`` in [0, 1] relative to the padded
input tensor; losses and GIoU work on ``(x0, y0, x1, y1)``.
"""

import torch

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "generalized_box_iou",
    "masks_to_boxes",
    "inverse_sigmoid",
]


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """Convert ``(..., 4)`` boxes from centre/size to corner format."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """Convert ``(..., 4)`` boxes from corner to centre/size format."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Generalized IoU (Rezatofighi et al. 2019) of broadcastable XYXY boxes.

    ``generalized_box_iou(a[:, None], b[None])`` gives the (N, M) pairwise matrix,
    ``generalized_box_iou(a, b)`` the element-wise values of two aligned (N, 4) sets.

    Args:
        boxes1, boxes2: ``(..., 4)`` boxes ``(x0, y0, x1, y1)`` with ``x1 >= x0`` and ``y1 >= y0``.

    Returns:
        Tensor of the broadcast shape without the last dimension, values in [-1, 1].
    """
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    inter_lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    inter_rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    inter = (inter_rb - inter_lt).clamp(min=0).prod(-1)
    union = area1 + area2 - inter
    iou = inter / union.clamp(min=1e-7)
    hull_lt = torch.minimum(boxes1[..., :2], boxes2[..., :2])
    hull_rb = torch.maximum(boxes1[..., 2:], boxes2[..., 2:])
    hull = (hull_rb - hull_lt).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-7)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes (pixel-edge coordinates) around boolean masks.

    Args:
        masks: ``(N, H, W)`` boolean masks.

    Returns:
        ``(N, 4)`` float boxes ``(x0, y0, x1 + 1, y1 + 1)``; an empty mask gives all zeros.
    """
    n, height, width = masks.shape
    if n == 0:
        return masks.new_zeros((0, 4), dtype=torch.float32)
    cols = masks.any(dim=1)  # (N, W)
    rows = masks.any(dim=2)  # (N, H)
    xs = torch.arange(width, device=masks.device, dtype=torch.float32)
    ys = torch.arange(height, device=masks.device, dtype=torch.float32)
    big = float(max(height, width))
    x0 = torch.where(cols, xs, big).amin(dim=1)
    x1 = torch.where(cols, xs, -1.0).amax(dim=1) + 1
    y0 = torch.where(rows, ys, big).amin(dim=1)
    y1 = torch.where(rows, ys, -1.0).amax(dim=1) + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    return torch.where(cols.any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Numerically safe logit: ``log(x / (1 - x))`` with ``x`` clamped to ``[eps, 1 - eps]``."""
    x = x.clamp(min=eps, max=1 - eps)
    return torch.log(x / (1 - x))
