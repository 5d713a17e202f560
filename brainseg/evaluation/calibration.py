"""Pixel-level calibration of tumour probabilities: reliability bins and the expected calibration
error (ECE), accumulated streaming so that no probability map is kept.

Binning convention: ``num_bins`` equal-width bins over [0, 1]; bin ``b`` holds the probabilities
``p`` with ``b / B <= p < (b + 1) / B``, except the last bin, which is closed and also holds
``p == 1`` (the index is ``min(floor(p * B), B - 1)``). Then

    ECE = sum_b (n_b / N) * | observed_b - confidence_b |

with ``n_b`` the pixels in bin ``b``, ``N`` all pixels, ``confidence_b`` their mean predicted
probability and ``observed_b`` the fraction of them that are tumour. Empty bins contribute 0.
"""
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

__all__ = ["DEFAULT_NUM_BINS", "ReliabilityBins", "bin_indices", "expected_calibration_error"]

# the usual choice since Guo et al. 2017, "On Calibration of Modern Neural Networks"
DEFAULT_NUM_BINS = 15

ArrayLike = Union[np.ndarray, torch.Tensor]


def _as_numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def bin_indices(probabilities: ArrayLike, num_bins: int = DEFAULT_NUM_BINS) -> np.ndarray:
    """The bin of each probability (see the module docstring for the convention).

    Args:
        probabilities: values in [0, 1], any shape.
        num_bins: number of equal-width bins.

    Returns:
        int64 array of the same shape, values in [0, num_bins).
    """
    p = _as_numpy(probabilities).astype(np.float64)
    return np.minimum(np.floor(p * num_bins), num_bins - 1).astype(np.int64)


@dataclass
class ReliabilityBins:
    """Per-bin pixel counts, sums of predicted probabilities and tumour counts.

    Counts are integers and probability sums float64, so adding slices one at a time gives the
    all-pixels result (counts exactly; sums up to float64 rounding, ~1e-16 relative).
    """

    counts: np.ndarray
    probability_sums: np.ndarray
    positives: np.ndarray

    @classmethod
    def empty(cls, num_bins: int = DEFAULT_NUM_BINS) -> "ReliabilityBins":
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1; got {num_bins}")
        return cls(np.zeros(num_bins, np.int64), np.zeros(num_bins, np.float64), np.zeros(num_bins, np.int64))

    @property
    def num_bins(self) -> int:
        return len(self.counts)

    def update(self, probabilities: ArrayLike, truth: ArrayLike) -> None:
        """Add the pixels of one slice (or any batch of pixels).

        Args:
            probabilities: predicted tumour probabilities in [0, 1].
            truth: the same shape, tumour where true / non-zero.

        Raises:
            ValueError: shapes differ, or probabilities outside [0, 1] (or nan).
        """
        p = _as_numpy(probabilities).astype(np.float64).ravel()
        t = _as_numpy(truth).astype(bool).ravel()
        if p.shape != t.shape:
            raise ValueError(f"probabilities have {p.size} values, truth {t.size}")
        if p.size and not (p.min() >= 0.0 and p.max() <= 1.0):
            raise ValueError(f"probabilities must be in [0, 1]; got values in [{p.min()}, {p.max()}]")
        index = bin_indices(p, self.num_bins)
        self.counts += np.bincount(index, minlength=self.num_bins)
        self.probability_sums += np.bincount(index, weights=p, minlength=self.num_bins)
        self.positives += np.bincount(index[t], minlength=self.num_bins)

    def merge(self, other: "ReliabilityBins") -> "ReliabilityBins":
        """The bins of both pixel sets (e.g. those of several processes)."""
        if other.num_bins != self.num_bins:
            raise ValueError(f"cannot merge {other.num_bins} bins into {self.num_bins}")
        return ReliabilityBins(self.counts + other.counts, self.probability_sums + other.probability_sums,
                               self.positives + other.positives)

    def mean_probability(self) -> np.ndarray:
        """Per-bin mean predicted probability (confidence); ``nan`` for empty bins."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.probability_sums / self.counts, np.nan)

    def observed_frequency(self) -> np.ndarray:
        """Per-bin fraction of tumour pixels; ``nan`` for empty bins."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.positives / self.counts, np.nan)

    def edges(self) -> np.ndarray:
        """The ``num_bins + 1`` bin edges 0, 1/B, ..., 1."""
        return np.linspace(0.0, 1.0, self.num_bins + 1)

    def ece(self) -> float:
        """The expected calibration error of the pixels added so far."""
        return expected_calibration_error(self)


def expected_calibration_error(bins: ReliabilityBins) -> float:
    """ECE = sum over bins of (n_b / N) * |observed_b - confidence_b| (see the module docstring).

    Args:
        bins: accumulated :class:`ReliabilityBins`.

    Returns:
        the ECE in [0, 1]; ``nan`` when no pixel was added.
    """
    total = int(bins.counts.sum())
    if total == 0:
        return float("nan")
    filled = bins.counts > 0
    gaps = np.abs(bins.positives[filled] - bins.probability_sums[filled])  # n_b * |observed_b - confidence_b|
    return float(gaps.sum() / total)
