"""Segmentation metrics as pure numpy functions: overlap (Dice/IoU from confusion counts),
surface metrics (HD95, ASSD, normalised surface Dice), the largest connected component,
tumour probabilities from model scores and the UNeXt-compatible batch IoU/Dice.

Conventions used everywhere in brainseg:

* Every overlap metric is a fraction in [0, 1].
* A ratio whose denominator is 0 (e.g. Dice of an empty truth and an empty prediction) is
  ``nan``, never 1.0: callers decide whether to skip such cases and count them.
* Masks are boolean-like arrays; any non-zero value is foreground.

Surface conventions (:func:`surface_metrics` and the functions built on it):

* The surface of a mask is its foreground voxels that have a face-connected background
  neighbour; the outside of the array counts as background (:func:`surface_voxels`). This is
  the surface of medpy's ``hd95``/``assd`` and of MONAI's metrics without sub-voxel edges.
* A distance is the Euclidean distance between voxel centres, scaled by ``spacing`` per axis,
  from a surface voxel of one mask to the nearest surface voxel of the other.
* The surface metrics pool the distances of both directions (prediction->truth and
  truth->prediction) before taking a percentile, a mean or a fraction.
"""

import math
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
    "SurfaceMetrics",
    "surface_metrics",
    "hausdorff_distance_95",
    "average_symmetric_surface_distance",
    "normalized_surface_dice",
    "largest_connected_component",
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


class SurfaceMetrics(NamedTuple):
    """Surface metrics of one prediction against one truth (see :func:`surface_metrics`)."""

    hd95: float
    assd: float
    nsd: Tuple[float, ...]


def surface_metrics(
    prediction: np.ndarray,
    truth: np.ndarray,
    *,
    spacing: Optional[Sequence[float]] = None,
    tolerances: Sequence[float] = (1.0, 2.0),
) -> SurfaceMetrics:
    """HD95, ASSD and normalised surface Dice from one pass of surface distances.

    With ``D`` the pooled distances of both directions (module docstring):

    * HD95: the 95th percentile of ``D`` (numpy's linear interpolation), as medpy's ``hd95``.
      MONAI's ``compute_hausdorff_distance(percentile=95)`` instead takes the larger of the two
      directed 95th percentiles, which is never smaller up to interpolation; both agree when
      the two directions have the same distances (e.g. shifted copies of a shape). Example
      (tests/test_surface_metrics.py): spheres of radius 15 and 18 mm, centres 6 mm apart, at
      spacing (5.0, 0.9, 0.9) mm: 8.95 mm here, 10.00 mm in MONAI.
    * ASSD: the mean of ``D``, i.e. (sum of both directions' distances) / (number of surface
      voxels of both masks), as MONAI's ``compute_average_surface_distance(symmetric=True)``.
      medpy's ``assd`` averages the two directed means instead (same value when both surfaces
      have as many voxels; the spheres above: 3.42 mm here, 3.32 mm that way).
    * NSD at tolerance tau: the fraction of ``D`` that is <= tau, i.e. surface voxels are
      counted, as MONAI's ``compute_surface_dice`` without sub-voxel edges. DeepMind's
      surface-distance package (and MONAI with ``use_subvoxels=True``) weighs each surface
      element by its area instead, which matters with anisotropic voxels: 0.341 here vs 0.488
      at 1 mm for two boxes shifted by (1, 2, -1) voxels at spacing (5.0, 0.9, 0.9) mm.

    Empty masks: both empty -> all metrics ``nan`` (nothing to compare); one empty -> HD95 and
    ASSD ``nan`` (no distance exists) and every NSD 0.0 (no surface voxel is within tolerance).

    Args:
        prediction: binary mask (2-D or 3-D).
        truth: binary mask of the same shape.
        spacing: voxel size per axis (e.g. mm); default 1 (distances and tolerances in voxels).
        tolerances: NSD tolerances tau, in the unit of ``spacing``.

    Returns:
        SurfaceMetrics: ``(hd95, assd, nsd)`` with one NSD per tolerance.
    """
    if any(not (math.isfinite(tau) and tau >= 0) for tau in tolerances):
        raise ValueError(f"NSD tolerances must be finite and >= 0; got {list(tolerances)}")
    has_prediction, has_truth = bool(np.any(prediction)), bool(np.any(truth))
    if not (has_prediction and has_truth):
        nsd = 0.0 if has_prediction or has_truth else float("nan")
        return SurfaceMetrics(float("nan"), float("nan"), tuple(nsd for _ in tolerances))
    distances = np.concatenate(symmetric_surface_distances(prediction, truth, spacing))
    return SurfaceMetrics(
        hd95=float(np.percentile(distances, 95)),
        assd=float(distances.mean()),
        nsd=tuple(float(np.count_nonzero(distances <= tau)) / distances.size for tau in tolerances),
    )


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
    return surface_metrics(prediction, truth, spacing=spacing, tolerances=()).hd95


def average_symmetric_surface_distance(
    prediction: np.ndarray, truth: np.ndarray, spacing: Optional[Sequence[float]] = None
) -> float:
    """Average symmetric surface distance (ASSD): the mean of the pooled surface distances of
    both directions (see :func:`surface_metrics`).

    Args:
        prediction: binary mask (2-D or 3-D).
        truth: binary mask of the same shape.
        spacing: voxel size per axis; default 1 (result in voxels).

    Returns:
        float: ASSD, or ``nan`` when either mask is empty (undefined).
    """
    return surface_metrics(prediction, truth, spacing=spacing, tolerances=()).assd


def normalized_surface_dice(
    prediction: np.ndarray,
    truth: np.ndarray,
    tolerance: float,
    spacing: Optional[Sequence[float]] = None,
) -> float:
    """Normalised surface Dice (NSD): the fraction of the surface voxels of both masks that lie
    within ``tolerance`` of the other mask's surface (see :func:`surface_metrics`).

    Args:
        prediction: binary mask (2-D or 3-D).
        truth: binary mask of the same shape.
        tolerance: the accepted distance tau (>= 0), in the unit of ``spacing``.
        spacing: voxel size per axis; default 1 (tolerance in voxels).

    Returns:
        float: NSD in [0, 1]; 0.0 when exactly one mask is empty, ``nan`` when both are.
    """
    (nsd,) = surface_metrics(prediction, truth, spacing=spacing, tolerances=(tolerance,)).nsd
    return nsd


def largest_connected_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a binary mask.

    Components are face-connected (6-connectivity in 3-D, 4 in 2-D: the default structure of
    ``scipy.ndimage.label``), as medpy's ``largest_connected_component`` used by Buda et al.
    On a tie the component found first in C (raster) order is kept.

    Args:
        mask: binary array (2-D or 3-D).

    Returns:
        np.ndarray: bool array of the same shape; empty when ``mask`` is empty.
    """
    mask = np.asarray(mask, dtype=bool)
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return labels == int(np.argmax(sizes)) + 1


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
