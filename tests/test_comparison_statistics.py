"""Statistics over patients for model comparisons (brainseg.evaluation.comparison_statistics)."""
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from brainseg.evaluation.comparison_statistics import (
    bootstrap_ci,
    holm_adjust,
    paired_wilcoxon,
    pairwise_wilcoxon_holm,
    summarize,
)
from brainseg.utils.errors import ConfigError

DICE = np.random.default_rng(11).normal(0.8, 0.08, size=40).clip(0, 1)


@pytest.mark.parametrize("method", ["BCa", "percentile"])
def test_bootstrap_ci_is_scipy_bootstrap_with_the_same_seed(method):
    low, high = bootstrap_ci(DICE, n_resamples=2000, seed=5, method=method, confidence=0.9)
    expected = stats.bootstrap(
        (DICE,), np.mean, n_resamples=2000, confidence_level=0.9, method=method, rng=np.random.default_rng(5)
    ).confidence_interval
    assert (low, high) == (float(expected.low), float(expected.high))
    assert bootstrap_ci(DICE, n_resamples=2000, seed=5, method=method, confidence=0.9) == (low, high)
    assert bootstrap_ci(DICE, n_resamples=2000, seed=6, method=method, confidence=0.9) != (low, high)


def test_bootstrap_ci_other_statistic():
    low, high = bootstrap_ci(DICE, statistic=np.median, n_resamples=1000, method="percentile")
    assert low <= np.median(DICE) <= high


def test_bootstrap_ci_covers_the_true_mean_of_a_normal_sample():
    sample = np.random.default_rng(3).normal(0.7, 0.1, size=200)
    low, high = bootstrap_ci(sample)
    assert low < 0.7 < high
    # about the normal-theory interval mean +- 1.96 sd / sqrt(n)
    half_width = 1.96 * np.std(sample, ddof=1) / math.sqrt(200)
    assert high - low == pytest.approx(2 * half_width, rel=0.1)


def test_bootstrap_ci_degenerate_data():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        low, high = bootstrap_ci([0.8] * 6)  # statistic(values) twice, no scipy warning
        assert low == high == np.mean([0.8] * 6)
        assert all(math.isnan(v) for v in bootstrap_ci([0.8]))
        assert all(math.isnan(v) for v in bootstrap_ci([]))


def test_bootstrap_ci_errors():
    with pytest.raises(ValueError, match="1 non-finite value"):
        bootstrap_ci([0.5, float("nan"), 0.7])
    with pytest.raises(ConfigError, match="method must be one of"):
        bootstrap_ci(DICE, method="jackknife")
    with pytest.raises(ConfigError, match=r"confidence must be in \(0, 1\), got 95"):
        bootstrap_ci(DICE, confidence=95)


def test_summarize():
    s = summarize(DICE, n_resamples=1000)
    assert s["n"] == 40
    assert s["mean"] == pytest.approx(DICE.mean()) and s["median"] == pytest.approx(np.median(DICE))
    assert s["sd"] == pytest.approx(np.std(DICE, ddof=1))
    assert (s["ci_low"], s["ci_high"]) == bootstrap_ci(DICE, n_resamples=1000)
    one = summarize([0.5])
    assert one["n"] == 1 and one["mean"] == 0.5 and math.isnan(one["sd"]) and math.isnan(one["ci_low"])


def test_paired_wilcoxon_is_scipy():
    a = np.array([0.91, 0.85, 0.78, 0.88, 0.62, 0.75, 0.81, 0.69, 0.95, 0.83])
    b = np.array([0.87, 0.86, 0.70, 0.80, 0.65, 0.66, 0.80, 0.60, 0.90, 0.84])
    expected = stats.wilcoxon(a, b)
    result = paired_wilcoxon(a, b)
    assert result == (float(expected.statistic), float(expected.pvalue))
    assert result.p_value < 0.2


def test_paired_wilcoxon_known_answer_and_zeros():
    # five positive differences: W- = 0, exact two-sided p = 2 / 2**5
    assert paired_wilcoxon([2, 3, 4, 5, 6], [1, 1, 1, 1, 1]) == (0.0, 0.0625)
    # zero differences are dropped (zero_method="wilcox"): same as without the tied patients
    assert paired_wilcoxon([2, 3, 4, 5, 6, 7, 7], [1, 1, 1, 1, 1, 7, 7]) == (0.0, 0.0625)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert paired_wilcoxon([0.5, 0.7, 0.9], [0.5, 0.7, 0.9]) == (0.0, 1.0)
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        paired_wilcoxon([0.1, 0.2, 0.3], [0.1, 0.2])


def test_holm_hand_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    adjusted = holm_adjust([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm_adjust([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    assert holm_adjust([]).shape == (0,)
    with pytest.raises(ValueError, match=r"p-values must be in \[0, 1\]"):
        holm_adjust([0.1, 1.5])


def test_holm_is_monotone_and_at_least_the_raw_p():
    p = np.random.default_rng(0).uniform(0, 0.2, size=30)
    adjusted = holm_adjust(p)
    order = np.argsort(p)
    assert np.all(np.diff(adjusted[order]) >= 0)
    assert np.all(adjusted >= p) and np.all(adjusted <= 1)
    assert adjusted.min() == pytest.approx(30 * p.min())  # the smallest is Bonferroni-adjusted


def test_pairwise_wilcoxon_holm_three_models():
    rng = np.random.default_rng(4)
    patients = [f"P{i}" for i in range(12)]
    base = rng.uniform(0.6, 0.9, size=12)
    per_patient = {
        "unet": dict(zip(patients, base)),
        "resunet": dict(zip(patients, base + rng.uniform(0.0, 0.05, size=12))),
        "unext": dict(zip(patients[:10], base[:10] + rng.normal(0, 0.03, size=10))),
    }
    per_patient["unext"]["P11"] = float("nan")  # not counted as shared
    rows = pairwise_wilcoxon_holm(per_patient)
    assert [(r["model_a"], r["model_b"], r["n"]) for r in rows] == [
        ("unet", "resunet", 12),
        ("unet", "unext", 10),
        ("resunet", "unext", 10),
    ]
    for row in rows:
        a, b = per_patient[row["model_a"]], per_patient[row["model_b"]]
        shared = patients[: row["n"]]  # unext: P0-P9 (and nan for P11)
        x, y = [a[p] for p in shared], [b[p] for p in shared]
        assert (row["statistic"], row["p_value"]) == paired_wilcoxon(x, y)
        assert row["median_difference"] == pytest.approx(np.median(np.subtract(x, y)))
        assert row["p_value"] <= row["p_holm"] <= 1
    np.testing.assert_allclose([r["p_holm"] for r in rows], holm_adjust([r["p_value"] for r in rows]))
    assert rows[0]["median_difference"] < 0 and rows[0]["p_value"] < 0.001


def test_pairwise_wilcoxon_holm_too_few_shared_patients():
    per_patient = {"a": {"p1": 0.8, "p2": 0.7, "p3": 0.6}, "b": {"p1": 0.7, "p2": 0.5, "p3": 0.65}, "c": {"p1": 0.9}}
    with pytest.warns(UserWarning, match="share 1 patient"):
        rows = pairwise_wilcoxon_holm(per_patient)
    assert [r["n"] for r in rows] == [3, 1, 1]
    assert all(math.isnan(r["p_value"]) and math.isnan(r["p_holm"]) for r in rows[1:])
    assert rows[0]["p_holm"] == rows[0]["p_value"]  # a family of one test
    with pytest.raises(ConfigError, match="at least two models"):
        pairwise_wilcoxon_holm({"a": {"p1": 0.8}})
