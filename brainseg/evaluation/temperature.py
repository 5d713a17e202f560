"""Temperature scaling (Guo et al. 2017): one scalar ``T`` dividing the tumour logits, fitted by
minimising the pixel-level negative log-likelihood on the validation split.

The logits are streamed into a fine histogram (:class:`LogitHistogram`: per bin of width
``2 * LOGIT_RANGE / num_bins`` in logit space, the counts and logit sums of tumour and background
pixels), never kept. The NLL is evaluated at each bin's mean logit per class, which differs from the
all-pixels NLL only by the spread of logits inside a bin (bins of width 0.01 by default): the
fitted ``T`` agrees with an all-pixels fit to about 1e-3.
"""
from dataclasses import dataclass
from typing import Tuple

import numpy as np
from scipy.optimize import minimize_scalar

from .calibration import ArrayLike, _as_numpy

__all__ = ["LOGIT_RANGE", "TEMPERATURE_BOUNDS", "LogitHistogram", "probability_logits", "fit_temperature",
           "binary_nll"]

# float32 sigmoid(z) rounds to exactly 1 above z ~ 16.6: logits are clipped to +-LOGIT_RANGE
LOGIT_RANGE = 16.0
# the bounded search interval of T
TEMPERATURE_BOUNDS = (0.05, 20.0)


def probability_logits(probabilities: ArrayLike) -> np.ndarray:
    """The logits ``log(p / (1 - p))`` of probabilities (float64), clipped to +-:data:`LOGIT_RANGE`."""
    p = _as_numpy(probabilities).astype(np.float64)
    with np.errstate(divide="ignore"):
        z = np.log(p) - np.log1p(-p)
    return np.clip(z, -LOGIT_RANGE, LOGIT_RANGE)


def binary_nll(logits: np.ndarray, truth: np.ndarray, temperature: float, weights=None) -> float:
    """Mean negative log-likelihood of ``sigmoid(logits / T)`` for bool ``truth`` (optionally weighted)."""
    z = np.asarray(logits, np.float64) / temperature
    losses = np.logaddexp(0.0, np.where(truth, -z, z))  # softplus(-z) for tumour, softplus(z) else
    weights = np.ones_like(z) if weights is None else np.asarray(weights, np.float64)
    return float((weights * losses).sum() / weights.sum())


@dataclass
class LogitHistogram:
    """Per logit bin: tumour and background pixel counts and their logit sums."""

    counts: np.ndarray  # (2, num_bins) int64: background, tumour
    sums: np.ndarray  # (2, num_bins) float64

    @classmethod
    def empty(cls, num_bins: int = 3200) -> "LogitHistogram":
        return cls(np.zeros((2, num_bins), np.int64), np.zeros((2, num_bins), np.float64))

    @property
    def num_bins(self) -> int:
        return self.counts.shape[1]

    def update(self, probabilities: ArrayLike, truth: ArrayLike) -> None:
        """Add pixels given by their probabilities (the logits are recovered, see :func:`probability_logits`)."""
        z = probability_logits(probabilities).ravel()
        t = _as_numpy(truth).astype(bool).ravel()
        if z.shape != t.shape:
            raise ValueError(f"probabilities have {z.size} values, truth {t.size}")
        index = np.minimum(((z + LOGIT_RANGE) / (2 * LOGIT_RANGE) * self.num_bins).astype(np.int64), self.num_bins - 1)
        for label in (0, 1):
            inside = t == bool(label)
            self.counts[label] += np.bincount(index[inside], minlength=self.num_bins)
            self.sums[label] += np.bincount(index[inside], weights=z[inside], minlength=self.num_bins)

    def merge(self, other: "LogitHistogram") -> "LogitHistogram":
        """The histogram of both pixel sets."""
        return LogitHistogram(self.counts + other.counts, self.sums + other.sums)

    def points(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean logit, is tumour, pixel count) of every non-empty (class, bin)."""
        filled = self.counts > 0
        labels = np.broadcast_to(np.array([[False], [True]]), self.counts.shape)
        return self.sums[filled] / self.counts[filled], labels[filled], self.counts[filled]


def fit_temperature(histogram: LogitHistogram) -> float:
    """The ``T`` in :data:`TEMPERATURE_BOUNDS` minimising the NLL of ``sigmoid(z / T)`` over the
    histogram's pixels (scipy's bounded 1-D ``minimize_scalar``).

    Raises:
        ValueError: the histogram is empty.
    """
    logits, truth, counts = histogram.points()
    if not counts.size:
        raise ValueError("cannot fit a temperature without pixels")
    result = minimize_scalar(lambda t: binary_nll(logits, truth, t, counts), bounds=TEMPERATURE_BOUNDS,
                             method="bounded", options={"xatol": 1e-4})
    return float(result.x)
