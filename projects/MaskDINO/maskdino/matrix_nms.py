"""Matrix NMS (Wang et al., SOLOv2, 2020): parallel soft suppression of duplicate masks."""

import torch

__all__ = ["matrix_nms"]


def matrix_nms(masks: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, *, sigma: float = 2.0) -> torch.Tensor:
    """Decay the scores of masks that overlap higher-scored masks of the same class.

    Mask ``j`` is decayed by ``min_i exp(-sigma * (iou_ij^2 - c_i^2))`` over the higher-scored
    masks ``i`` of its class, where ``c_i`` is the largest IoU of ``i`` itself with a
    higher-scored mask (so a mask that is itself suppressed suppresses less). Everything is
    one matrix product: no sequential loop.

    Args:
        masks: ``(N, H, W)`` boolean masks.
        scores: ``(N,)`` scores.
        labels: ``(N,)`` class labels.
        sigma: Gaussian decay strength.

    Returns:
        ``(N,)`` decayed scores, in the input order.
    """
    n = len(scores)
    if n == 0:
        return scores
    order = scores.argsort(descending=True)
    flat = masks[order].flatten(1).float()
    inter = flat @ flat.T
    areas = flat.sum(1)
    iou = inter / (areas[:, None] + areas[None, :] - inter).clamp(min=1.0)
    same_class = labels[order][:, None] == labels[order][None, :]
    iou = (iou * same_class).triu(diagonal=1)  # iou[i, j], i scored higher than j
    compensate = iou.amax(dim=0)  # per mask: its largest IoU with a higher-scored one
    decay = torch.exp(-sigma * (iou**2 - compensate[:, None] ** 2)).amin(dim=0)
    decayed = torch.empty_like(scores)
    decayed[order] = scores[order] * decay
    return decayed
