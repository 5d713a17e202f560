"""Set criterion of Mask DINO: focal class loss, L1 + GIoU box losses, point-sampled mask
BCE + Dice losses, on the last layer, every auxiliary layer, the query selection output and
the denoising queries."""

from typing import Callable, Dict, List, Tuple

import torch
import torch.distributed as dist
from detectron2.projects.point_rend.point_features import get_uncertain_point_coords_with_randomness, point_sample
from detectron2.utils import comm
from torch import nn
from torch.nn import functional as F
from torchvision.ops import sigmoid_focal_loss

from .box_ops import box_cxcywh_to_xyxy, generalized_box_iou

__all__ = ["SetCriterion", "LOSS_NAMES"]

LOSS_NAMES = ("loss_class", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


def _mask_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of mask logits for importance sampling: highest at the 0.5 boundary."""
    return -logits.abs()


class SetCriterion(nn.Module):
    """Losses of a set prediction against ground-truth objects.

    Every output set (last layer, ``aux_outputs``, ``interm_outputs``) is matched with
    ``matcher``; the denoising outputs use their known assignment. Losses are normalised by
    the number of target objects in the (global) batch and multiplied by their weights.
    Output names are ``loss_class``, ``loss_bbox``, ``loss_giou``, ``loss_mask``,
    ``loss_dice`` with suffixes ``_<layer>`` (aux), ``_interm``, ``_dn`` / ``_dn_<layer>``
    (zeros when ``outputs["denoising"]`` is None: denoising is on but the batch has no object).

    Args:
        num_classes: number of object classes.
        matcher: a :class:`HungarianMatcher`-like callable ``(outputs, targets) -> indices``.
        weight_dict: weight of each name in :data:`LOSS_NAMES` (a missing name counts 0).
        num_points: points per mask for the mask losses.
        oversample_ratio, importance_sample_ratio: PointRend importance sampling (ratio 0 =
            uniform random points).
        focal_alpha, focal_gamma: focal-loss parameters of the class loss.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        matcher: Callable[[Dict, List[Dict]], Indices],
        weight_dict: Dict[str, float],
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        unknown = sorted(set(weight_dict) - set(LOSS_NAMES))
        if unknown:
            raise KeyError(f"SetCriterion: unknown weight_dict keys {unknown}; valid: {list(LOSS_NAMES)}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def loss_labels(
        self, outputs: Dict, targets: List[Dict], indices: Indices, num_masks: float
    ) -> Dict[str, torch.Tensor]:
        """Sigmoid focal loss over all queries; unmatched queries are pushed to no-object."""
        logits = outputs["pred_logits"]
        onehot = torch.zeros_like(logits)
        batch_idx, query_idx = _flat_query_index(indices)
        labels = torch.cat([t["labels"][tgt] for t, (_, tgt) in zip(targets, indices)])
        onehot[batch_idx, query_idx, labels] = 1.0
        loss = sigmoid_focal_loss(logits, onehot, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum")
        return {"loss_class": loss / num_masks}

    def loss_boxes(
        self, outputs: Dict, targets: List[Dict], indices: Indices, num_masks: float
    ) -> Dict[str, torch.Tensor]:
        """L1 and GIoU losses between matched normalised boxes."""
        src = outputs["pred_boxes"][_flat_query_index(indices)]
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])
        giou = generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))
        return {
            "loss_bbox": F.l1_loss(src, tgt, reduction="sum") / num_masks,
            "loss_giou": (1 - giou).sum() / num_masks,
        }

    def loss_masks(
        self, outputs: Dict, targets: List[Dict], indices: Indices, num_masks: float
    ) -> Dict[str, torch.Tensor]:
        """Sigmoid BCE and Dice losses between matched masks at sampled points."""
        src = outputs["pred_masks"][_flat_query_index(indices)]  # (N, h, w)
        if len(src) == 0:
            zero = outputs["pred_masks"].sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        tgt = torch.cat([t["masks"][j] for t, (_, j) in zip(targets, indices)]).to(src.dtype)  # (N, H, W)
        with torch.no_grad():
            points = get_uncertain_point_coords_with_randomness(
                src[:, None], _mask_uncertainty, self.num_points, self.oversample_ratio, self.importance_sample_ratio
            )
            labels = point_sample(tgt[:, None], points, align_corners=False)[:, 0]
        logits = point_sample(src[:, None], points, align_corners=False)[:, 0]  # (N, P)
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1)
        prob = logits.sigmoid()
        dice = 1 - (2 * (prob * labels).sum(-1) + 1) / (prob.sum(-1) + labels.sum(-1) + 1)
        return {"loss_mask": bce.sum() / num_masks, "loss_dice": dice.sum() / num_masks}

    def _weighted_losses(
        self, outputs: Dict, targets: List[Dict], indices: Indices, num_masks: float, suffix: str
    ) -> Dict[str, torch.Tensor]:
        losses = {}
        for loss_fn in (self.loss_labels, self.loss_boxes, self.loss_masks):
            for name, value in loss_fn(outputs, targets, indices, num_masks).items():
                losses[name + suffix] = value * self.weight_dict.get(name, 0.0)
        return losses

    def forward(self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: the decoder's output dict (see :class:`MaskDINODecoder`).
            targets: per image ``{"labels": (T,), "boxes": (T, 4) normalised cxcywh,
                "masks": (T, H, W) at the padded input resolution}``.

        Returns:
            Weighted scalar losses by name.
        """
        num_masks = _global_mean_count(sum(len(t["labels"]) for t in targets), outputs["pred_logits"].device)
        losses = self._weighted_losses(outputs, targets, self.matcher(outputs, targets), num_masks, "")
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update(self._weighted_losses(aux, targets, self.matcher(aux, targets), num_masks, f"_{i}"))
        if "interm_outputs" in outputs:
            interm = outputs["interm_outputs"]
            losses.update(self._weighted_losses(interm, targets, self.matcher(interm, targets), num_masks, "_interm"))
        if "denoising" in outputs:
            dn = outputs["denoising"]
            if dn is None:
                # No object in this batch: zero denoising losses keep the loss names identical
                # on every worker and iteration (detectron2 averages them across workers).
                zero = outputs["pred_logits"].sum() * 0.0
                suffixes = ["_dn"] + [f"_dn_{i}" for i in range(len(outputs.get("aux_outputs", [])))]
                losses.update({name + suffix: zero for suffix in suffixes for name in LOSS_NAMES})
            else:
                dn_num = num_masks * dn["num_groups"]
                losses.update(self._weighted_losses(dn["outputs"], targets, dn["indices"], dn_num, "_dn"))
                for i, aux in enumerate(dn["outputs"].get("aux_outputs", [])):
                    losses.update(self._weighted_losses(aux, targets, dn["indices"], dn_num, f"_dn_{i}"))
        return losses


def _flat_query_index(indices: Indices) -> Tuple[torch.Tensor, torch.Tensor]:
    """(batch index, query index) of every matched pair, concatenated over images."""
    batch = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)])
    query = torch.cat([src for src, _ in indices])
    return batch, query


def _global_mean_count(count: int, device: torch.device) -> float:
    """Average number of target objects per worker (at least 1) for loss normalisation."""
    total = torch.as_tensor(float(count), device=device)
    if comm.get_world_size() > 1:
        dist.all_reduce(total)
    return max(total.item() / comm.get_world_size(), 1.0)
