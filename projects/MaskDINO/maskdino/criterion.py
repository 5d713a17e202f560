"""Set criterion of Mask DINO: focal class loss, L1 + GIoU box losses, point-sampled mask
BCE + Dice losses, on the last layer, every auxiliary layer, the query selection output and
the denoising queries."""

from typing import Callable, Dict, List, NamedTuple, Sequence, Tuple

import torch
import torch.distributed as dist
from detectron2.projects.point_rend.point_features import point_sample
from detectron2.utils import comm
from torch import nn
from torch.nn import functional as F
from torchvision.ops import sigmoid_focal_loss

from .box_ops import box_cxcywh_to_xyxy, generalized_box_iou

__all__ = ["SetCriterion", "LOSS_NAMES", "sample_masks_at_points", "uncertain_points"]

LOSS_NAMES = ("loss_class", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


def uncertain_points(
    logits: torch.Tensor, num_points: int, oversample_ratio: float, importance_sample_ratio: float
) -> torch.Tensor:
    """PointRend's training-time point selection for mask logits.

    ``num_points * oversample_ratio`` uniform random candidates per mask; the
    ``importance_sample_ratio * num_points`` most uncertain of them (logit closest to 0) are
    kept, in no particular order (the losses are sums over points), and the rest of the
    ``num_points`` are uniform random points.

    Args:
        logits: ``(N, h, w)`` mask logits.
        num_points, oversample_ratio, importance_sample_ratio: as in :class:`SetCriterion`.

    Returns:
        ``(N, num_points, 2)`` (x, y) point coordinates in [0, 1].
    """
    n = len(logits)
    candidates = torch.rand(n, int(num_points * oversample_ratio), 2, device=logits.device)
    uncertainty = -point_sample(logits[:, None], candidates, align_corners=False)[:, 0].abs()
    num_uncertain = int(importance_sample_ratio * num_points)
    # unsorted top-k: half the time of a sorted one on a CPU, and the order does not matter here
    chosen = uncertainty.topk(num_uncertain, dim=1, sorted=False).indices
    picked = candidates.gather(1, chosen[..., None].expand(-1, -1, 2))
    random = torch.rand(n, num_points - num_uncertain, 2, device=logits.device)
    return torch.cat([picked, random], dim=1)


class SetCriterion(nn.Module):
    """Losses of a set prediction against ground-truth objects.

    Every output set (last layer, ``aux_outputs``, ``interm_outputs``) is matched with
    ``matcher``; the denoising outputs use their known assignment. Losses are normalised by
    the number of target objects in the (global) batch and multiplied by their weights.
    Output names are ``loss_class``, ``loss_bbox``, ``loss_giou``, ``loss_mask``,
    ``loss_dice`` with suffixes ``_<layer>`` (aux), ``_interm``, ``_dn`` / ``_dn_<layer>``
    (zeros when ``outputs["denoising"]`` is None: denoising is on but the batch has no object).

    The mask losses of all output sets are computed together (one point sampling for every
    matched mask of every set), which is what keeps the criterion cheap on a CPU.

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
        return self._mask_losses([_MatchedSet(outputs, indices, num_masks, "")], targets)[0]

    def _mask_losses(self, sets: Sequence["_MatchedSet"], targets: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        """Unweighted mask losses (``loss_mask``, ``loss_dice``) of several output sets at once.

        The matched masks of every set go through one point sampling (the points of a mask
        do not depend on the other masks), and the targets are read at the points from the
        batch's target masks without copying them per match: one pass instead of one per
        decoder layer, the dominant cost of the criterion on a CPU.
        """
        src, target_rows, set_ids = [], [], []
        for k, matched in enumerate(sets):
            src.append(matched.outputs["pred_masks"][_flat_query_index(matched.indices)])
            rows, first_row = [], 0
            for target, (_, tgt) in zip(targets, matched.indices):
                rows.append(tgt + first_row)
                first_row += len(target["labels"])
            target_rows.append(torch.cat(rows))
            set_ids.append(torch.full((len(target_rows[-1]),), k, dtype=torch.int64))
        src = torch.cat(src)  # (N, h, w)
        if len(src) == 0:
            zero = sum(m.outputs["pred_masks"].sum() for m in sets) * 0.0
            return [{"loss_mask": zero, "loss_dice": zero} for _ in sets]
        target_masks = torch.cat([t["masks"] for t in targets]).float()  # (T, H, W): one copy per step
        with torch.no_grad():
            points = uncertain_points(src, self.num_points, self.oversample_ratio, self.importance_sample_ratio)
            labels = sample_masks_at_points(target_masks, torch.cat(target_rows).to(src.device), points)
        logits = point_sample(src[:, None], points, align_corners=False)[:, 0].float()  # (N, P)
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1)
        prob = logits.sigmoid()
        dice = 1 - (2 * (prob * labels).sum(-1) + 1) / (prob.sum(-1) + labels.sum(-1) + 1)
        set_id = torch.cat(set_ids).to(src.device)
        norm = torch.tensor([m.num_masks for m in sets], dtype=torch.float32, device=src.device)
        per_row = torch.stack([bce, dice])
        per_set = per_row.new_zeros(2, len(sets)).index_add(1, set_id, per_row) / norm
        return [{"loss_mask": per_set[0, k], "loss_dice": per_set[1, k]} for k in range(len(sets))]

    def forward(self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: the decoder's output dict (see :class:`MaskDINODecoder`).
            targets: per image ``{"labels": (T,), "boxes": (T, 4) normalised cxcywh,
                "masks": (T, H, W) at the padded input resolution}``.

        Returns:
            Weighted scalar losses by name.
        """
        # float masks once per step: the matcher and the mask losses read them in every layer
        targets = [{**t, "masks": t["masks"].float()} for t in targets]
        num_masks = _global_mean_count(sum(len(t["labels"]) for t in targets), outputs["pred_logits"].device)
        sets = [_MatchedSet(outputs, self.matcher(outputs, targets), num_masks, "")]
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            sets.append(_MatchedSet(aux, self.matcher(aux, targets), num_masks, f"_{i}"))
        if "interm_outputs" in outputs:
            interm = outputs["interm_outputs"]
            sets.append(_MatchedSet(interm, self.matcher(interm, targets), num_masks, "_interm"))
        losses = {}
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
                sets.append(_MatchedSet(dn["outputs"], dn["indices"], dn_num, "_dn"))
                for i, aux in enumerate(dn["outputs"].get("aux_outputs", [])):
                    sets.append(_MatchedSet(aux, dn["indices"], dn_num, f"_dn_{i}"))
        for matched, mask_losses in zip(sets, self._mask_losses(sets, targets)):
            named = {}
            for loss_fn in (self.loss_labels, self.loss_boxes):
                named.update(loss_fn(matched.outputs, targets, matched.indices, matched.num_masks))
            named.update(mask_losses)
            losses.update({name + matched.suffix: value * self.weight_dict.get(name, 0.0) for name, value in named.items()})
        return losses


class _MatchedSet(NamedTuple):
    """One output set of the decoder with its assignment to the targets."""

    outputs: Dict
    indices: Indices
    num_masks: float
    suffix: str


def sample_masks_at_points(masks: torch.Tensor, rows: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear values of ``masks[rows[i]]`` at ``points[i]``, without copying the masks.

    The same values as ``point_sample(masks[rows][:, None], points, align_corners=False)[:, 0]``
    (detectron2's convention: points in [0, 1] image coordinates, pixel centres at
    ``(i + 0.5) / size``, zero outside the mask), for many rows that share a few masks.

    Args:
        masks: ``(T, H, W)`` float masks.
        rows: ``(N,)`` int64 index into ``masks`` for every row of ``points``.
        points: ``(N, P, 2)`` (x, y) in [0, 1].

    Returns:
        ``(N, P)`` sampled values.
    """
    _, height, width = masks.shape
    x = points[..., 0] * width - 0.5
    y = points[..., 1] * height - 0.5
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    flat = masks.reshape(-1)
    base = (rows * (height * width))[:, None]
    values = torch.zeros_like(x)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        yi = y0 + dy
        y_inside = (yi >= 0) & (yi < height)
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi = x0 + dx
            inside = y_inside & (xi >= 0) & (xi < width)
            index = base + yi.clamp(0, height - 1) * width + xi.clamp(0, width - 1)
            corner = flat.index_select(0, index.reshape(-1)).view_as(index)  # 6x faster than flat[index]
            values += torch.where(inside, wy * wx * corner, 0.0)
    return values


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
