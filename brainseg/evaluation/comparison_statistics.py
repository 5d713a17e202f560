"""Statistics over patients for comparing models: bootstrap confidence intervals, paired
Wilcoxon signed-rank tests and Holm's correction for testing every pair of models.

The unit of analysis is the patient (one value per patient, e.g. per-volume Dice), never the
slice: slices of one patient are not independent. Everything scipy has is taken from scipy
(``scipy.stats.bootstrap``, ``scipy.stats.wilcoxon``); only Holm's adjustment is written here
(see :func:`holm_adjust`). Values must be finite: drop ``nan`` Dice (empty truth and empty
prediction, see :mod:`brainseg.evaluation.metrics`) before calling these functions.
"""
import itertools
import warnings
from typing import Callable, Dict, List, Mapping, NamedTuple, Sequence, Tuple

import numpy as np
from scipy import stats

from ..utils.errors import ConfigError

__all__ = [
    "BOOTSTRAP_METHODS",
    "PairedTest",
    "bootstrap_ci",
    "summarize",
    "paired_wilcoxon",
    "holm_adjust",
    "pairwise_wilcoxon_holm",
]

BOOTSTRAP_METHODS = ("BCa", "percentile", "basic")


def _finite_values(values: Sequence[float], name: str = "values") -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise ValueError(f"{name} has {bad} non-finite value(s) out of {array.size}; drop them first")
    return array


def bootstrap_ci(
    values: Sequence[float],
    *,
    confidence: float = 0.95,
    n_resamples: int = 10000,
    seed: int = 0,
    statistic: Callable[..., float] = np.mean,
    method: str = "BCa",
) -> Tuple[float, float]:
    """Two-sided bootstrap confidence interval of a statistic of one sample.

    Calls ``scipy.stats.bootstrap((values,), statistic, rng=numpy.random.default_rng(seed))``;
    scipy vectorises the resampling when ``statistic`` takes an ``axis`` keyword (``np.mean``,
    ``np.median`` do). Two cases scipy cannot handle are answered directly:

    * fewer than 2 values: ``(nan, nan)`` (no interval from one patient);
    * constant values (all equal): ``(s, s)`` with ``s = statistic(values)``, since every
      resample gives ``s`` (scipy's BCa would return ``nan`` with a warning).

    Args:
        values: one finite value per patient.
        confidence: confidence level in (0, 1).
        n_resamples: number of bootstrap resamples.
        seed: seed of the resampling generator: same values and seed, same interval.
        statistic: function of a 1-D array (with an optional ``axis`` keyword).
        method: ``"BCa"`` (bias-corrected and accelerated, scipy's default), ``"percentile"``
            or ``"basic"``.

    Returns:
        (low, high) as python floats.

    Raises:
        ConfigError: bad ``confidence``, ``n_resamples`` or ``method``.
        ValueError: non-finite values.
    """
    if not 0.0 < float(confidence) < 1.0:
        raise ConfigError(f"bootstrap confidence must be in (0, 1), got {confidence}")
    if int(n_resamples) < 1:
        raise ConfigError(f"bootstrap n_resamples must be at least 1, got {n_resamples}")
    if str(method).lower() not in {m.lower() for m in BOOTSTRAP_METHODS}:
        raise ConfigError(f"bootstrap method must be one of {BOOTSTRAP_METHODS}, got {method!r}")
    array = _finite_values(values)
    if array.size < 2:
        return float("nan"), float("nan")
    if np.ptp(array) == 0:
        value = float(statistic(array))
        return value, value
    result = stats.bootstrap(
        (array,),
        statistic,
        n_resamples=int(n_resamples),
        confidence_level=float(confidence),
        method=method,
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def summarize(
    values: Sequence[float], *, confidence: float = 0.95, n_resamples: int = 10000, seed: int = 0
) -> Dict[str, float]:
    """Summary of per-patient values: count, mean, SD, median and a bootstrap CI of the mean.

    Args:
        values: one finite value per patient.
        confidence, n_resamples, seed: passed to :func:`bootstrap_ci` (BCa, mean).

    Returns:
        dict: ``n`` (int), ``mean``, ``sd`` (ddof=1; ``nan`` below 2 values), ``median``,
        ``ci_low``, ``ci_high`` (``nan`` when undefined, e.g. no values).
    """
    array = _finite_values(values)
    low, high = bootstrap_ci(array, confidence=confidence, n_resamples=n_resamples, seed=seed)
    nan = float("nan")
    return {
        "n": int(array.size),
        "mean": float(np.mean(array)) if array.size else nan,
        "sd": float(np.std(array, ddof=1)) if array.size > 1 else nan,
        "median": float(np.median(array)) if array.size else nan,
        "ci_low": low,
        "ci_high": high,
    }


class PairedTest(NamedTuple):
    """Result of a paired test: the test statistic and its two-sided p-value."""

    statistic: float
    p_value: float


def paired_wilcoxon(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test of paired per-patient values (e.g. Dice of two models).

    ``scipy.stats.wilcoxon(a, b)`` with its defaults: ``zero_method="wilcox"`` (patients whose
    two values are equal are dropped before ranking), exact p-value up to 50 differences without
    ties or zeros, else the normal approximation. The statistic is scipy's, the smaller of the
    positive- and negative-difference rank sums. When every difference is zero there is nothing
    to rank: this returns ``PairedTest(0.0, 1.0)`` instead of scipy's warning.

    Args:
        a: values of model A, one per patient.
        b: values of model B for the same patients, in the same order.

    Returns:
        PairedTest: (statistic, p_value) as python floats.

    Raises:
        ValueError: different lengths, no pairs, or non-finite values.
    """
    x, y = _finite_values(a, "a"), _finite_values(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired values must have the same length, got {x.size} and {y.size}")
    if x.size == 0:
        raise ValueError("paired Wilcoxon test needs at least one pair of values")
    if np.all(x == y):
        return PairedTest(0.0, 1.0)
    result = stats.wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
    return PairedTest(float(result.statistic), float(result.pvalue))


def holm_adjust(p_values: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni step-down adjusted p-values (family-wise error rate control).

    With the ``m`` p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted values are
    ``max_{j <= k} min(1, (m - j + 1) * p_(j))``, returned in the input order; rejecting where
    the adjusted value is below alpha is Holm's procedure at level alpha. Written here because
    scipy has no Holm: ``scipy.stats.false_discovery_control`` only offers the FDR procedures
    ``"bh"`` and ``"by"`` (checked with scipy 1.17.1). Same definition as statsmodels'
    ``multipletests(method="holm")[1]`` (statsmodels is not a brainseg dependency).

    Args:
        p_values: p-values in [0, 1].

    Returns:
        np.ndarray: float adjusted p-values, same length and order, each >= its p-value.

    Raises:
        ValueError: a p-value outside [0, 1] or ``nan``.
    """
    p = np.asarray(p_values, dtype=float).ravel()
    if np.any(~((p >= 0) & (p <= 1))):
        raise ValueError(f"p-values must be in [0, 1], got {p.tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    adjusted = np.empty(m)
    adjusted[order] = stepped
    return adjusted


def pairwise_wilcoxon_holm(per_patient: Mapping[str, Mapping[str, float]]) -> List[dict]:
    """Paired Wilcoxon tests between every pair of models, Holm-adjusted over all pairs.

    Each pair is compared on the patients both models have a finite value for. A pair with
    fewer than 2 such patients gets ``nan`` statistic and p-values (with a warning) and is left
    out of the Holm family; the other pairs form the family.

    Args:
        per_patient: ``{model: {patient: value}}``, e.g. per-volume Dice; pairs follow the
            mapping's model order (``model_a`` before ``model_b``).

    Returns:
        list[dict]: one row per pair with ``model_a``, ``model_b``, ``n`` (shared patients),
        ``median_difference`` (median of ``a - b``), ``statistic``, ``p_value``, ``p_holm``.

    Raises:
        ConfigError: fewer than two models.
    """
    models = list(per_patient)
    if len(models) < 2:
        raise ConfigError(f"a pairwise comparison needs at least two models, got {models}")
    rows = []
    for model_a, model_b in itertools.combinations(models, 2):
        a, b = per_patient[model_a], per_patient[model_b]
        shared = sorted(p for p in a.keys() & b.keys() if np.isfinite(a[p]) and np.isfinite(b[p]))
        x = np.array([a[p] for p in shared], dtype=float)
        y = np.array([b[p] for p in shared], dtype=float)
        row = {"model_a": model_a, "model_b": model_b, "n": len(shared)}
        if len(shared) < 2:
            warnings.warn(f"models {model_a} and {model_b} share {len(shared)} patient(s): no Wilcoxon test")
            row.update(median_difference=float(np.median(x - y)) if shared else float("nan"))
            row.update(statistic=float("nan"), p_value=float("nan"))
        else:
            test = paired_wilcoxon(x, y)
            row.update(median_difference=float(np.median(x - y)), statistic=test.statistic, p_value=test.p_value)
        rows.append(row)
    tested = [i for i, row in enumerate(rows) if np.isfinite(row["p_value"])]
    adjusted = holm_adjust([rows[i]["p_value"] for i in tested])
    for row in rows:
        row["p_holm"] = float("nan")
    for i, p_holm in zip(tested, adjusted):
        rows[i]["p_holm"] = float(p_holm)
    return rows
