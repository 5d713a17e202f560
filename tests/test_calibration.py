"""Pixel-level calibration: the ECE (hand-computed example, streaming vs all pixels at once), the
binning convention, the reliability diagram PNG, and temperature scaling (streamed fit vs an
all-pixels fit, applied by the model)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from PIL import Image
from scipy.optimize import minimize_scalar

from brainseg.evaluation.calibration import ReliabilityBins, bin_indices, expected_calibration_error
from brainseg.evaluation.temperature import (
    LOGIT_RANGE,
    TEMPERATURE_BOUNDS,
    LogitHistogram,
    binary_nll,
    fit_temperature,
    probability_logits,
)
from brainseg.modeling.postprocessing import TUMOUR_PROBABILITY
from brainseg.utils.config import load_config
from brainseg.visualization import save_reliability_diagram
from lgg_tree import tiny_unext_overrides


def test_ece_of_a_hand_computed_example():
    # 4 bins [0, .25) [.25, .5) [.5, .75) [.75, 1]:
    # bin 0: p .1 .2, truth 0 1 -> n 2, confidence .15, observed .5, gap .35
    # bin 1: p .3, truth 0      -> n 1, gap .3
    # bin 2: p .6, truth 1      -> n 1, gap .4
    # bin 3: p .9 1.0, truth 1 1 -> n 2, confidence .95, observed 1, gap .05
    # ECE = (2 * .35 + .3 + .4 + 2 * .05) / 6 = 0.25
    bins = ReliabilityBins.empty(4)
    bins.update(np.array([0.1, 0.2, 0.3, 0.6, 0.9, 1.0]), np.array([0, 1, 0, 1, 1, 1]))
    assert bins.counts.tolist() == [2, 1, 1, 2]
    assert bins.positives.tolist() == [1, 0, 1, 2]
    assert bins.mean_probability() == pytest.approx([0.15, 0.3, 0.6, 0.95])
    assert bins.ece() == pytest.approx(0.25, abs=1e-12)


def test_binning_convention_left_closed_last_bin_closed():
    assert bin_indices(np.array([0.0, 0.25, 0.4999, 0.5, 0.75, 0.999, 1.0]), 4).tolist() == [0, 1, 1, 2, 3, 3, 3]
    assert bin_indices(torch.tensor([0.0, 1 / 15, 1.0]), 15).tolist() == [0, 1, 14]


def test_perfectly_calibrated_bins_have_zero_ece_and_empty_input_nan():
    bins = ReliabilityBins.empty(2)
    bins.update(np.array([0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75]), np.array([1, 0, 0, 0, 1, 1, 1, 0]))
    assert bins.ece() == 0.0
    assert np.isnan(ReliabilityBins.empty().ece())


def _direct_ece(p: np.ndarray, truth: np.ndarray, num_bins: int) -> float:
    """ECE of all pixels at once, bin by bin with explicit edges."""
    total = 0.0
    for b in range(num_bins):
        lo, hi = b / num_bins, (b + 1) / num_bins
        inside = (p >= lo) & ((p < hi) if b < num_bins - 1 else (p <= 1.0))
        if inside.any():
            total += inside.sum() * abs(truth[inside].mean() - p[inside].mean())
    return total / p.size


def test_streamed_bins_equal_the_all_pixels_computation():
    rng = np.random.default_rng(0)
    slices = [rng.beta(0.5, 0.5, size=(32, 32)).astype(np.float32) for _ in range(7)]
    truths = [rng.random(s.shape) < s ** 1.5 for s in slices]  # over-confident on purpose
    streamed = ReliabilityBins.empty(15)
    for p, t in zip(slices, truths):
        streamed.update(torch.from_numpy(p), torch.from_numpy(t))
    p_all = np.concatenate([s.ravel() for s in slices]).astype(np.float64)
    t_all = np.concatenate([t.ravel() for t in truths])
    once = ReliabilityBins.empty(15)
    once.update(p_all, t_all)
    assert streamed.counts.tolist() == once.counts.tolist()  # integer counts: exact
    assert streamed.positives.tolist() == once.positives.tolist()
    # sums of floats in another order: equal up to float64 rounding
    assert streamed.probability_sums == pytest.approx(once.probability_sums, rel=1e-12)
    assert streamed.ece() == pytest.approx(_direct_ece(p_all, t_all, 15), abs=1e-12)
    assert 0.02 < streamed.ece() < 0.5  # the data are mis-calibrated: a non-trivial value
    merged = ReliabilityBins.empty(15)
    half = ReliabilityBins.empty(15)
    for p, t in zip(slices[:3], truths[:3]):
        merged.update(p, t)
    for p, t in zip(slices[3:], truths[3:]):
        half.update(p, t)
    assert expected_calibration_error(merged.merge(half)) == pytest.approx(streamed.ece(), abs=1e-12)


def test_update_rejects_probabilities_outside_zero_one():
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        ReliabilityBins.empty().update(np.array([0.5, 1.5]), np.array([0, 1]))


def test_reliability_diagram_is_a_png(tmp_path):
    bins = ReliabilityBins.empty(15)
    rng = np.random.default_rng(1)
    p = rng.random(2000)
    bins.update(p, rng.random(2000) < p)
    path = tmp_path / "sub" / "reliability.png"
    save_reliability_diagram(bins, path, title="val")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (500, 650)
    assert [p.name for p in path.parent.iterdir()] == ["reliability.png"]  # no temporary left


def test_temperature_fit_on_the_streamed_histogram_matches_an_all_pixels_fit():
    rng = np.random.default_rng(2)
    logits = rng.normal(0.0, 4.0, size=(8, 64, 64))
    truth = rng.random(logits.shape) < 1 / (1 + np.exp(-logits / 2.0))  # the model is 2x over-confident
    histogram = LogitHistogram.empty()
    for z, t in zip(logits, truth):  # streamed slice by slice, from float32 probabilities
        histogram.update(torch.sigmoid(torch.from_numpy(z).float()), t)
    fitted = fit_temperature(histogram)
    z_all = probability_logits(torch.sigmoid(torch.from_numpy(logits).float())).ravel()
    direct = minimize_scalar(lambda t: binary_nll(z_all, truth.ravel(), t), bounds=TEMPERATURE_BOUNDS,
                             method="bounded", options={"xatol": 1e-6}).x
    assert fitted == pytest.approx(direct, abs=2e-3)  # bins of width 0.01 in logit space
    assert fitted == pytest.approx(2.0, abs=0.1)  # and the true temperature, up to sampling
    assert binary_nll(z_all, truth.ravel(), fitted) < binary_nll(z_all, truth.ravel(), 1.0)


def test_probability_logits_invert_the_sigmoid_and_clip_saturated_values():
    z = torch.tensor([-8.0, -0.5, 0.0, 3.0, 40.0])
    assert probability_logits(torch.sigmoid(z)).tolist() == pytest.approx([-8.0, -0.5, 0.0, 3.0, LOGIT_RANGE], abs=1e-5)


def test_the_model_divides_its_logits_by_the_temperature():
    cfg = load_config(str(Path(__file__).resolve().parents[1] / "configs/lgg/unext.py"), tiny_unext_overrides("lgg"))
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    inputs = [{"image": torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)}]
    with torch.no_grad():
        plain = model(inputs)[0][TUMOUR_PROBABILITY]
        model.temperature = 2.0
        scaled = model(inputs)[0][TUMOUR_PROBABILITY]
    assert not torch.equal(plain, scaled)
    expected = torch.sigmoid(torch.logit(plain.double()) / 2.0)
    assert scaled.double().numpy() == pytest.approx(expected.numpy(), abs=1e-5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        type(model)(net=model.net, loss=model.loss, pixel_mean=[0, 0, 0], pixel_std=[1, 1, 1], temperature=0.0)
