"""Lesion-wise metrics of a 3-D segmentation: detection counts, F1 and BraTS-2023 style
lesion-wise Dice.

A lesion is a 3-D connected component of the truth mask (``scipy.ndimage.label``); predicted
components are found the same way. Connectivity is the ``rank`` of
``scipy.ndimage.generate_binary_structure(3, rank)``: 1 joins face neighbours (6-connectivity),
2 also edge neighbours (18), 3 (the default) also corner neighbours (26-connectivity), as the
BraTS 2023 lesion-wise evaluation does, so a lesion touching itself diagonally between slices
stays one lesion.

Matching: a truth lesion and a predicted component *match* when they share at least
``min_overlap_voxels`` voxels. A truth lesion with a match is detected (TP), one without is
missed (FN); a predicted component matching no truth lesion is a false positive (FP). TP counts
truth lesions, so one predicted component covering two lesions detects both, and two
components on one lesion detect it once.

Unlike the BraTS 2023 challenge code, truth lesions are not dilated before matching and no
small lesions are dropped: the metrics describe the masks exactly as given.
"""
from dataclasses import dataclass
from typing import Dict

import numpy as np
from scipy import ndimage

from ..utils.errors import ConfigError
from .metrics import safe_ratio

__all__ = ["DEFAULT_LESION_CONNECTIVITY", "LesionMatches", "lesion_matches", "lesion_wise_metrics"]

# rank of generate_binary_structure(3, rank): 3 = 26-connectivity (faces, edges and corners)
DEFAULT_LESION_CONNECTIVITY = 3


@dataclass(frozen=True)
class LesionMatches:
    """Connected components of truth and prediction and their voxel overlaps.

    Attributes:
        truth_labels: int array, 0 = background, ``1..num_truth`` = truth lesions.
        pred_labels: int array, 0 = background, ``1..num_pred`` = predicted components.
        overlap: ``(num_truth, num_pred)`` voxel counts shared by lesion i+1 and component j+1.
        truth_sizes: ``(num_truth,)`` voxels per truth lesion.
        pred_sizes: ``(num_pred,)`` voxels per predicted component.
        matched: bool ``(num_truth, num_pred)``, overlap >= ``min_overlap_voxels``.
    """

    truth_labels: np.ndarray
    pred_labels: np.ndarray
    overlap: np.ndarray
    truth_sizes: np.ndarray
    pred_sizes: np.ndarray
    matched: np.ndarray

    @property
    def detected(self) -> np.ndarray:
        """bool per truth lesion: matched by at least one predicted component."""
        return self.matched.any(axis=1)

    @property
    def false_positive(self) -> np.ndarray:
        """bool per predicted component: matches no truth lesion."""
        return ~self.matched.any(axis=0)

    def truth_dice(self) -> np.ndarray:
        """Dice of each truth lesion with the union of the predicted components matching it
        (0 for a missed lesion). Components are disjoint, so the union's size and its overlap
        with the lesion are sums over the matching components."""
        intersection = (self.overlap * self.matched).sum(axis=1)
        union_sizes = self.matched.astype(np.int64) @ self.pred_sizes
        return 2.0 * intersection / (self.truth_sizes + union_sizes)


def _binary_volume(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != bool:
        if np.any((array != 0) & (array != 1)):
            raise ValueError(f"{name} must be a bool or 0/1 array (threshold probabilities first)")
        array = array != 0
    return array


def lesion_matches(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    connectivity: int = DEFAULT_LESION_CONNECTIVITY,
    min_overlap_voxels: int = 1,
) -> LesionMatches:
    """Label the lesions of truth and prediction and match them by voxel overlap.

    The overlap table is one ``numpy.bincount`` over the voxels both masks share (pairs of
    labels), the sizes one ``bincount`` per mask: no loop over voxels or lesions.

    Args:
        pred: predicted mask, bool or 0/1, 3-D.
        truth: truth mask of the same shape.
        connectivity: 1, 2 or 3 (6-, 18- or 26-connectivity; module docstring).
        min_overlap_voxels: shared voxels needed for a lesion and a component to match.

    Returns:
        LesionMatches: labels, overlap table, sizes and the match table.

    Raises:
        ValueError: shapes differ, are not 3-D, or values other than 0/1.
        ConfigError: ``connectivity`` not in {1, 2, 3} or ``min_overlap_voxels`` < 1.
    """
    pred, truth = _binary_volume(pred, "pred"), _binary_volume(truth, "truth")
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(
            f"lesion metrics need two 3-D masks of one shape, got pred {pred.shape} and truth {truth.shape}"
        )
    if connectivity not in (1, 2, 3):
        raise ConfigError(f"lesion connectivity must be 1, 2 or 3 (6-, 18-, 26-neighbours), got {connectivity!r}")
    if int(min_overlap_voxels) < 1:
        raise ConfigError(f"min_overlap_voxels must be at least 1, got {min_overlap_voxels}")
    structure = ndimage.generate_binary_structure(3, connectivity)
    truth_labels, num_truth = ndimage.label(truth, structure=structure)
    pred_labels, num_pred = ndimage.label(pred, structure=structure)
    shared = np.flatnonzero(truth & pred)
    pairs = truth_labels.ravel()[shared].astype(np.int64) * (num_pred + 1) + pred_labels.ravel()[shared]
    overlap = np.bincount(pairs, minlength=(num_truth + 1) * (num_pred + 1)).reshape(num_truth + 1, num_pred + 1)
    overlap = overlap[1:, 1:]
    return LesionMatches(
        truth_labels=truth_labels,
        pred_labels=pred_labels,
        overlap=overlap,
        truth_sizes=np.bincount(truth_labels.ravel(), minlength=num_truth + 1)[1:],
        pred_sizes=np.bincount(pred_labels.ravel(), minlength=num_pred + 1)[1:],
        matched=overlap >= int(min_overlap_voxels),
    )


def lesion_wise_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    connectivity: int = DEFAULT_LESION_CONNECTIVITY,
    min_overlap_voxels: int = 1,
) -> Dict[str, float]:
    """Lesion-wise detection counts, precision, sensitivity, F1 and lesion-wise Dice.

    With TP, FP, FN as in the module docstring:

    * ``lesion_precision`` = TP / (TP + FP), ``nan`` when there is neither;
    * ``lesion_sensitivity`` = TP / (TP + FN), ``nan`` without truth lesions;
    * ``lesion_f1`` = 2TP / (2TP + FP + FN), their harmonic mean; **1.0** when the truth and
      the prediction are both empty (nothing to find, nothing wrongly found);
    * ``lesion_dice`` (BraTS 2023 style): each truth lesion scores the Dice between it and the
      union of the predicted components matching it (0 if missed); each FP component scores 0;
      ``lesion_dice`` is the mean over all truth lesions and FP components, i.e.
      sum(lesion Dice) / (num truth lesions + FP). **1.0** when both masks are empty. Unlike
      the voxel Dice, a missed small lesion weighs as much as a missed large one.

    Args:
        pred, truth, connectivity, min_overlap_voxels: as in :func:`lesion_matches`.

    Returns:
        dict: ``lesion_tp``, ``lesion_fp``, ``lesion_fn``, ``num_truth_lesions``,
        ``num_pred_lesions`` (ints) and ``lesion_precision``, ``lesion_sensitivity``,
        ``lesion_f1``, ``lesion_dice`` (floats).

    Raises:
        ValueError, ConfigError: as :func:`lesion_matches`.
    """
    matches = lesion_matches(pred, truth, connectivity=connectivity, min_overlap_voxels=min_overlap_voxels)
    num_truth, num_pred = matches.overlap.shape
    tp = int(np.count_nonzero(matches.detected))
    fp = int(np.count_nonzero(matches.false_positive))
    fn = num_truth - tp
    empty = num_truth == 0 and num_pred == 0
    return {
        "lesion_tp": tp,
        "lesion_fp": fp,
        "lesion_fn": fn,
        "num_truth_lesions": num_truth,
        "num_pred_lesions": num_pred,
        "lesion_precision": safe_ratio(tp, tp + fp),
        "lesion_sensitivity": safe_ratio(tp, tp + fn),
        "lesion_f1": 1.0 if empty else safe_ratio(2 * tp, 2 * tp + fp + fn),
        "lesion_dice": 1.0 if empty else safe_ratio(float(matches.truth_dice().sum()), num_truth + fp),
    }
