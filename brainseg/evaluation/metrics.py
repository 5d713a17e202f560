"""Segmentation metrics as pure numpy functions: overlap (Dice/IoU from confusion counts),
surface distances / HD95, tumour probabilities from model scores and the UNeXt-compatible
batch IoU/Dice.

Conventions used everywhere in brainseg:

* Every overlap metric is a fraction in [0, 1].
* A ratio whose denominator is 0 (e.g. Dice of an empty truth and an empty prediction) is
  ``nan``, never 1.0: callers decide whether to skip such cases and count them.
* Masks are boolean-like arrays; any non-zero value is foreground.
"""

from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage

__all__ = [
    "ConfusionCounts",
    "confusion_counts",
    "safe_ratio",
    "dice_from_counts",
    "iou_from_counts",
    "dice_score",
    "iou_score",
    "surface_voxels",
    "symmetric_surface_distances",
    "hausdorff_distance_95",
    "tumour_probability",
    "seed_iou_dice",
]


class ConfusionCounts(NamedTuple):
    """Pixel (or voxel) confusion counts of a binary prediction against a binary truth."""

    tp: int
    fp: int
    fn: int
    tn: int


def confusion_counts(prediction: np.ndarray, truth: np.ndarray) -> ConfusionCounts:
    """Count true/false positives/negatives of a binary prediction.

    Args:
        prediction: binary mask of any shape.
        truth: binary mask of the same shape.

    Returns:
        ConfusionCounts: (tp, fp, fn, tn) as python ints.
    """
    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} != truth shape {truth.shape}")
    tp = int(np.count_nonzero(prediction & truth))
    pred_area = int(np.count_nonzero(prediction))
    truth_area = int(np.count_nonzero(truth))
    fp = pred_area - tp
    fn = truth_area - tp
    return ConfusionCounts(tp, fp, fn, int(prediction.size) - tp - fp - fn)


def safe_ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, or ``nan`` when the denominator is 0."""
    return float(numerator) / float(denominator) if denominator else float("nan")


def dice_from_counts(tp: int, fp: int, fn: int) -> float:
    """Dice = 2TP / (2TP + FP + FN); ``nan`` when truth and prediction are both empty."""
    return safe_ratio(2 * tp, 2 * tp + fp + fn)


def iou_from_counts(tp: int, fp: int, fn: int) -> float:
    """IoU (Jaccard) = TP / (TP + FP + FN); ``nan`` when truth and prediction are both empty."""
    return safe_ratio(tp, tp + fp + fn)


def dice_score(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient of two binary masks (``nan`` if both are empty)."""
    tp, fp, fn, _ = confusion_counts(prediction, truth)
    return dice_from_counts(tp, fp, fn)


def iou_score(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two binary masks (``nan`` if both are empty)."""
    tp, fp, fn, _ = confusion_counts(prediction, truth)
    return iou_from_counts(tp, fp, fn)


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boundary of a binary mask: foreground voxels with a face-connected background neighbour.

    Voxels on the array border count as boundary (the outside is background).

    Args:
        mask: binary array (2-D or 3-D).

    Returns:
        np.ndarray: bool array of the same shape.
    """
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _foreground_box(*masks: np.ndarray) -> Tuple[slice, ...]:
    """Bounding box of the union of ``masks`` grown by one voxel (clipped to the array), so that
    cropping to it leaves both the surfaces and their distances unchanged."""
    union = np.logical_or.reduce([np.asarray(m, dtype=bool) for m in masks])
    box = []
    for axis in range(union.ndim):
        other_axes = tuple(a for a in range(union.ndim) if a != axis)
        present = np.flatnonzero(union.any(axis=other_axes))
        box.append(slice(max(int(present[0]) - 1, 0), min(int(present[-1]) + 2, union.shape[axis])))
    return tuple(box)


def symmetric_surface_distances(
    prediction: np.ndarray, truth: np.ndarray, spacing: Optional[Sequence[float]] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """Distances from every surface voxel of one mask to the nearest surface voxel of the other.

    Uses one Euclidean distance transform per direction on the cropped foreground box.

    Args:
        prediction: binary mask (2-D or 3-D), non-empty.
        truth: binary mask of the same shape, non-empty.
        spacing: voxel size per axis (e.g. mm); default 1 (distances in voxels).

    Returns:
        (distances prediction->truth, distances truth->prediction), 1-D float arrays.
    """
    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} != truth shape {truth.shape}")
    if not prediction.any() or not truth.any():
        raise ValueError("surface distances need a non-empty prediction and a non-empty truth")
    if spacing is not None and len(spacing) != prediction.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} values for {prediction.ndim}-D masks")
    box = _foreground_box(prediction, truth)
    pred_surface = surface_voxels(prediction[box])
    truth_surface = surface_voxels(truth[box])
    to_truth = ndimage.distance_transform_edt(~truth_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    return to_truth[pred_surface], to_pred[truth_surface]


def hausdorff_distance_95(
    prediction: np.ndarray, truth: np.ndarray, spacing: Optional[Sequence[float]] = None
) -> float:
    """95th-percentile symmetric Hausdorff distance (HD95).

    The 95th percentile (numpy's linear interpolation) of the pooled surface distances in
    both directions (prediction->truth and truth->prediction), as in medpy's ``hd95``.

    Args:
        prediction: binary mask (2-D or 3-D).
        truth: binary mask of the same shape.
        spacing: voxel size per axis; default 1 (result in voxels).

    Returns:
        float: HD95, or ``nan`` when either mask is empty (undefined).
    """
    if not np.any(prediction) or not np.any(truth):
        return float("nan")
    to_truth, to_pred = symmetric_surface_distances(prediction, truth, spacing)
    return float(np.percentile(np.concatenate([to_truth, to_pred]), 95))


def tumour_probability(scores: torch.Tensor) -> torch.Tensor:
    """Tumour probability map from (background, tumour) scores of shape (2, H, W).

    Scores that already are a probability distribution (all in [0, 1] and summing to 1 over
    the two channels) are used as they are; anything else (logits, unnormalised per-class
    scores) goes through a softmax over the channels. Either way, probability > 0.5 is the
    same as "tumour score > background score".

    Args:
        scores: float tensor (2, H, W).

    Returns:
        torch.Tensor: float (H, W) tumour probabilities.
    """
    if scores.ndim != 3 or scores.shape[0] != 2:
        raise ValueError(f"sem_seg scores must have shape (2, H, W) (background, tumour); got {tuple(scores.shape)}")
    scores = scores.float()
    is_distribution = (
        bool(scores.min() >= 0)
        and bool(scores.max() <= 1)
        and bool(torch.allclose(scores.sum(dim=0), torch.ones_like(scores[0]), atol=1e-3))
    )
    return scores[1] if is_distribution else torch.softmax(scores, dim=0)[1]


def seed_iou_dice(intersection: int, union: int, smooth: float = 1e-5) -> Tuple[float, float]:
    """IoU and Dice of one batch computed the way the UNeXt seed code reports them.

    UNeXt thresholds its sigmoid output at 0.5, pools intersection and union over the whole
    batch, smooths both with 1e-5 (so an all-empty batch scores 1.0) and derives Dice from IoU
    as 2·IoU/(IoU+1); the reported figure is the batch-size-weighted mean over batches.

    Args:
        intersection: foreground pixels shared by prediction and truth, summed over the batch.
        union: foreground pixels of prediction or truth, summed over the batch.
        smooth: additive smoothing of intersection and union.

    Returns:
        (iou, dice) of the batch.
    """
    if not 0 <= intersection <= union:
        raise ValueError(f"need 0 <= intersection <= union; got intersection={intersection}, union={union}")
    iou = (intersection + smooth) / (union + smooth)
    return float(iou), float(2 * iou / (iou + 1))
