"""Choosing the tumour-probability threshold that maximises Dice on a (validation) split,
streaming: per patient and per candidate threshold only the counts |pred ∩ truth|, |pred| and
|truth| are kept, never a probability map.

A pixel is tumour at threshold ``t`` when ``p > t`` with both in float32, exactly as
:func:`brainseg.modeling.postprocessing.tumour_mask` decides for a float32 probability map, so
the Dice of the chosen threshold equals what :class:`~brainseg.evaluation.LGGEvaluator` reports
with that threshold.
"""
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from brainseg.modeling.postprocessing import DEFAULT_MASK_THRESHOLD

from .calibration import ArrayLike, _as_numpy

__all__ = ["DEFAULT_THRESHOLD_GRID", "THRESHOLD_CRITERIA", "ThresholdChoice", "ThresholdDiceCounts"]

# candidate thresholds 0.05, 0.10, ..., 0.95
DEFAULT_THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))
# dice_volume_mean: mean over patients of the per-patient 3-D Dice (Buda et al.; the default
# train.best_metric), skipping patients with empty truth and empty prediction, as LGGEvaluator;
# dice_global: Dice of all pixels of the split pooled.
THRESHOLD_CRITERIA = ("dice_volume_mean", "dice_global")


@dataclass(frozen=True)
class ThresholdChoice:
    """The chosen threshold, its score and the score of every candidate."""

    threshold: float
    score: float
    criterion: str
    thresholds: Tuple[float, ...]
    scores: Tuple[float, ...]


class ThresholdDiceCounts:
    """Per-patient, per-threshold intersection and sizes of predicted and true tumour."""

    def __init__(self, thresholds: Sequence[float] = DEFAULT_THRESHOLD_GRID):
        """
        Args:
            thresholds: the candidates, strictly increasing, in [0, 1).
        """
        grid = np.asarray(thresholds, dtype=np.float32)
        if grid.ndim != 1 or not len(grid) or np.any(np.diff(grid) <= 0) or grid[0] < 0 or grid[-1] >= 1:
            raise ValueError(f"thresholds must be strictly increasing values in [0, 1); got {list(thresholds)}")
        self.thresholds = tuple(float(t) for t in thresholds)
        self._grid = grid
        size = len(grid)
        # patient -> [intersection per threshold, prediction size per threshold, truth size]
        self.patients: Dict[str, list] = defaultdict(lambda: [np.zeros(size, np.int64), np.zeros(size, np.int64), 0])

    def update(self, patient_id: str, probabilities: ArrayLike, truth: ArrayLike) -> None:
        """Add one slice (or any pixels) of a patient.

        Args:
            patient_id: the patient the pixels belong to.
            probabilities: tumour probabilities (compared as float32).
            truth: the same shape, tumour where true / non-zero.
        """
        p = _as_numpy(probabilities).astype(np.float32).ravel()
        t = _as_numpy(truth).astype(bool).ravel()
        if p.shape != t.shape:
            raise ValueError(f"probabilities have {p.size} values, truth {t.size}")
        size = len(self._grid)
        # how many thresholds lie strictly below each p: the pixel is tumour at thresholds 0..k-1
        below = np.searchsorted(self._grid, p, side="left")
        entry = self.patients[str(patient_id)]
        entry[0] += _count_above(below[t], size)
        entry[1] += _count_above(below, size)
        entry[2] += int(np.count_nonzero(t))

    def merge(self, other: "ThresholdDiceCounts") -> None:
        """Add ``other``'s counts (e.g. another process's share of the split), in place."""
        if other.thresholds != self.thresholds:
            raise ValueError("cannot merge counts of different threshold grids")
        for patient, (inter, pred, truth) in other.patients.items():
            entry = self.patients[patient]
            entry[0] += inter
            entry[1] += pred
            entry[2] += truth

    def scores(self, criterion: str = "dice_volume_mean") -> np.ndarray:
        """The score of every candidate threshold (``nan`` where nothing is scored).

        Args:
            criterion: one of :data:`THRESHOLD_CRITERIA`.
        """
        if criterion not in THRESHOLD_CRITERIA:
            raise ValueError(f"criterion must be one of {THRESHOLD_CRITERIA}; got {criterion!r}")
        if not self.patients:
            return np.full(len(self.thresholds), np.nan)
        # (patients, thresholds), (patients, thresholds), (patients,)
        inter, pred, truth = (np.array(column, dtype=np.float64) for column in zip(*self.patients.values()))
        if criterion == "dice_global":  # one row: all patients pooled
            inter, pred, truth = inter.sum(0, keepdims=True), pred.sum(0, keepdims=True), truth.sum(keepdims=True)
        denominator = pred + truth[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            dice = np.where(denominator > 0, 2 * inter / denominator, np.nan)
        scored = np.isfinite(dice).sum(0)
        with np.errstate(invalid="ignore"):
            return np.where(scored > 0, np.nansum(dice, 0) / np.maximum(scored, 1), np.nan)

    def choose(self, criterion: str = "dice_volume_mean") -> Optional[ThresholdChoice]:
        """The candidate with the highest score; among equal scores the one closest to
        :data:`~brainseg.modeling.postprocessing.DEFAULT_MASK_THRESHOLD` (then the lower).

        Returns:
            the choice, or None when no threshold could be scored (no pixel, or no tumour and no
            prediction anywhere).
        """
        scores = self.scores(criterion)
        if not np.isfinite(scores).any():
            return None
        best = np.flatnonzero(scores == np.nanmax(scores))
        index = min(best, key=lambda i: (abs(self.thresholds[i] - DEFAULT_MASK_THRESHOLD), self.thresholds[i]))
        return ThresholdChoice(threshold=self.thresholds[index], score=float(scores[index]), criterion=criterion,
                               thresholds=self.thresholds, scores=tuple(float(s) for s in scores))


def _count_above(below: np.ndarray, size: int) -> np.ndarray:
    """For each threshold j, how many entries of ``below`` exceed j (pixels with p > t_j)."""
    counts = np.bincount(below, minlength=size + 1)
    return np.cumsum(counts[::-1])[::-1][1:]
