"""Hungarian matching of predictions (class, box, mask) to ground-truth objects."""

from typing import Dict, List, Optional, Tuple

import torch
from detectron2.projects.point_rend.point_features import point_sample
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.nn import functional as F

from .box_ops import box_cxcywh_to_xyxy, generalized_box_iou

__all__ = ["HungarianMatcher", "pairwise_mask_costs"]


def pairwise_mask_costs(pred_logits: torch.Tensor, target_masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid-BCE and Dice costs between every prediction and every target, over points.

    Args:
        pred_logits: ``(Q, P)`` mask logits at P sampled points.
        target_masks: ``(T, P)`` target mask values in [0, 1] at the same points.

    Returns:
        ``(Q, T)`` mean binary cross-entropy and ``(Q, T)`` Dice loss ``1 - Dice``.
    """
    num_points = pred_logits.shape[1]
    pos = F.softplus(-pred_logits)  # -log(sigmoid(x))
    neg = F.softplus(pred_logits)  # -log(1 - sigmoid(x))
    bce = (pos @ target_masks.T + neg @ (1 - target_masks).T) / num_points
    prob = pred_logits.sigmoid()
    numerator = 2 * prob @ target_masks.T
    denominator = prob.sum(-1)[:, None] + target_masks.sum(-1)[None, :]
    dice = 1 - (numerator + 1) / (denominator + 1)
    return bce, dice


class HungarianMatcher(nn.Module):
    """One-to-one assignment minimising a weighted sum of costs (DETR / Mask DINO).

    Costs: focal-style class cost, L1 and (negative) GIoU between boxes, and sigmoid-BCE and
    Dice between masks evaluated at ``num_points`` random points shared by all predictions
    and targets of an image.

    Args:
        cost_class, cost_box, cost_giou, cost_mask, cost_dice: cost weights.
        num_points: points sampled per image for the mask costs.
        focal_alpha, focal_gamma: focal-loss parameters of the class cost.
    """

    def __init__(
        self,
        *,
        cost_class: float = 4.0,
        cost_box: float = 5.0,
        cost_giou: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        num_points: int = 12544,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        self.cost_class = cost_class
        self.cost_box = cost_box
        self.cost_giou = cost_giou
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def cost_matrix(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        mask_logits: Optional[torch.Tensor],
        target: Dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """The ``(Q, T)`` matching cost of one image.

        Args:
            logits: ``(Q, K)`` class logits.
            boxes: ``(Q, 4)`` normalised cxcywh boxes.
            mask_logits: ``(Q, h, w)`` mask logits, or None to skip the mask costs.
            target: ``{"labels": (T,), "boxes": (T, 4) normalised cxcywh, "masks": (T, H, W)}``.
        """
        prob = logits.float().sigmoid()[:, target["labels"]]  # (Q, T)
        alpha, gamma = self.focal_alpha, self.focal_gamma
        pos = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
        neg = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
        cost = self.cost_class * (pos - neg)
        cost = cost + self.cost_box * torch.cdist(boxes.float(), target["boxes"].float(), p=1)
        giou = generalized_box_iou(
            box_cxcywh_to_xyxy(boxes.float())[:, None], box_cxcywh_to_xyxy(target["boxes"].float())[None]
        )
        cost = cost - self.cost_giou * giou
        if mask_logits is not None:
            points = torch.rand(1, self.num_points, 2, device=mask_logits.device)
            pred = point_sample(
                mask_logits[:, None].float(), points.expand(len(mask_logits), -1, -1), align_corners=False
            )
            tgt = point_sample(
                target["masks"][:, None].float(), points.expand(len(target["masks"]), -1, -1), align_corners=False
            )
            bce, dice = pairwise_mask_costs(pred[:, 0], tgt[:, 0])
            cost = cost + self.cost_mask * bce + self.cost_dice * dice
        return cost

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Match every image of a batch.

        Args:
            outputs: "pred_logits" ``(B, Q, K)``, "pred_boxes" ``(B, Q, 4)``, optional "pred_masks"
                ``(B, Q, h, w)`` (None or absent: no mask costs).
            targets: per image, see :meth:`cost_matrix`.

        Returns:
            Per image, ``(query_indices, target_indices)`` int64 tensors of equal length
            ``min(Q, T)``, sorted by query index.
        """
        masks = outputs.get("pred_masks")
        indices = []
        for b, target in enumerate(targets):
            device = outputs["pred_logits"].device
            if len(target["labels"]) == 0:
                empty = torch.zeros(0, dtype=torch.int64, device=device)
                indices.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(
                outputs["pred_logits"][b], outputs["pred_boxes"][b], masks[b] if masks is not None else None, target
            )
            if not torch.isfinite(cost).all():
                raise FloatingPointError("HungarianMatcher: non-finite matching cost (diverged predictions?)")
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append(
                (
                    torch.as_tensor(rows, dtype=torch.int64, device=device),
                    torch.as_tensor(cols, dtype=torch.int64, device=device),
                )
            )
        return indices
