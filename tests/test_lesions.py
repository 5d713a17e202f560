"""Lesion-wise metrics on hand-made 3-D volumes (brainseg.evaluation.lesions)."""
import math

import numpy as np
import pytest
from scipy import ndimage

from brainseg.evaluation.lesions import lesion_matches, lesion_wise_metrics
from brainseg.utils.errors import ConfigError


def volume(*boxes, shape=(20, 20, 20)):
    mask = np.zeros(shape, dtype=bool)
    for box in boxes:
        mask[tuple(slice(a, b) for a, b in box)] = True
    return mask


CUBE_A = ((2, 6), (2, 6), (2, 6))  # 64 voxels
CUBE_B = ((12, 16), (12, 16), (12, 16))  # 64 voxels


def test_one_hit_one_miss_one_false_positive():
    truth = volume(CUBE_A, CUBE_B)
    # shifted copy of A by one voxel (overlap 3*4*4 = 48 of 64 + 64) and a separate 8-voxel blob
    pred = volume(((3, 7), (2, 6), (2, 6)), ((10, 12), (2, 4), (2, 4)))
    m = lesion_wise_metrics(pred, truth)
    assert (m["lesion_tp"], m["lesion_fp"], m["lesion_fn"]) == (1, 1, 1)
    assert (m["num_truth_lesions"], m["num_pred_lesions"]) == (2, 2)
    assert m["lesion_f1"] == 0.5
    assert m["lesion_precision"] == 0.5 and m["lesion_sensitivity"] == 0.5
    # lesion A: Dice 2*48 / (64 + 64) = 0.75; lesion B missed: 0; the FP blob: 0 -> mean over 3
    assert m["lesion_dice"] == pytest.approx(0.75 / 3)
    matches = lesion_matches(pred, truth)
    assert matches.overlap.shape == (2, 2) and matches.overlap.sum() == 48
    assert matches.detected.tolist().count(True) == 1 and matches.false_positive.sum() == 1
    assert sorted(matches.truth_dice().tolist()) == [0.0, 0.75]


def test_diagonal_voxels_join_under_26_but_not_6_connectivity():
    truth = np.zeros((4, 4, 4), dtype=np.uint8)
    truth[1, 1, 1] = truth[2, 2, 2] = 1  # corner neighbours
    pred = np.zeros_like(truth)
    pred[1, 1, 1] = 1
    m26 = lesion_wise_metrics(pred, truth)  # default: 26-connectivity
    assert (m26["num_truth_lesions"], m26["lesion_tp"], m26["lesion_fn"]) == (1, 1, 0)
    assert m26["lesion_dice"] == pytest.approx(2 / 3)  # 2*1 / (2 + 1)
    for connectivity in (1, 2):  # face (6) and face+edge (18) neighbours only
        m = lesion_wise_metrics(pred, truth, connectivity=connectivity)
        assert (m["num_truth_lesions"], m["lesion_tp"], m["lesion_fn"]) == (2, 1, 1)
        assert m["lesion_dice"] == 0.5 and m["lesion_f1"] == pytest.approx(2 / 3)


def test_empty_volumes():
    empty = np.zeros((5, 5, 5), dtype=bool)
    m = lesion_wise_metrics(empty, empty)
    assert (m["lesion_tp"], m["lesion_fp"], m["lesion_fn"]) == (0, 0, 0)
    assert m["lesion_f1"] == 1.0 and m["lesion_dice"] == 1.0
    assert math.isnan(m["lesion_precision"]) and math.isnan(m["lesion_sensitivity"])
    blob = volume(((1, 3), (1, 3), (1, 3)), shape=(5, 5, 5))
    only_pred = lesion_wise_metrics(blob, empty)
    assert (only_pred["lesion_fp"], only_pred["lesion_f1"], only_pred["lesion_dice"]) == (1, 0.0, 0.0)
    assert only_pred["lesion_precision"] == 0.0 and math.isnan(only_pred["lesion_sensitivity"])
    only_truth = lesion_wise_metrics(empty, blob)
    assert (only_truth["lesion_fn"], only_truth["lesion_f1"], only_truth["lesion_dice"]) == (1, 0.0, 0.0)
    assert math.isnan(only_truth["lesion_precision"]) and only_truth["lesion_sensitivity"] == 0.0


def test_one_component_covering_two_lesions_detects_both():
    truth = volume(((2, 4), (2, 4), (2, 4)), ((2, 4), (6, 8), (2, 4)))  # 8 + 8 voxels, apart
    pred = volume(((2, 4), (2, 8), (2, 4)))  # one 24-voxel bar over both
    m = lesion_wise_metrics(pred, truth)
    assert (m["lesion_tp"], m["lesion_fp"], m["lesion_fn"], m["num_pred_lesions"]) == (2, 0, 0, 1)
    assert m["lesion_f1"] == 1.0 and m["lesion_precision"] == 1.0
    # each lesion against the whole bar: 2*8 / (8 + 24) = 0.5
    assert m["lesion_dice"] == pytest.approx(0.5)


def test_two_components_on_one_lesion_form_one_union():
    truth = volume(((2, 10), (2, 4), (2, 4)))  # 32 voxels
    pred = volume(((2, 4), (2, 4), (2, 4)), ((6, 8), (2, 4), (2, 4)))  # 8 + 8, not touching
    m = lesion_wise_metrics(pred, truth)
    assert (m["lesion_tp"], m["lesion_fp"], m["lesion_fn"], m["num_pred_lesions"]) == (1, 0, 0, 2)
    assert m["lesion_dice"] == pytest.approx(2 * 16 / (32 + 16))


def test_min_overlap_voxels():
    truth = volume(((2, 6), (2, 6), (2, 6)))
    pred = volume(((5, 8), (5, 8), (5, 8)))  # shares the single voxel (5, 5, 5)
    assert lesion_wise_metrics(pred, truth)["lesion_tp"] == 1
    strict = lesion_wise_metrics(pred, truth, min_overlap_voxels=2)
    assert (strict["lesion_tp"], strict["lesion_fp"], strict["lesion_fn"], strict["lesion_dice"]) == (0, 1, 1, 0.0)


def _loop_reference(pred, truth, structure):
    """Lesion Dice with explicit loops over lesions (the definition, written plainly)."""
    t_lab, n_t = ndimage.label(truth, structure)
    p_lab, n_p = ndimage.label(pred, structure)
    dices, hit_components = [], set()
    for i in range(1, n_t + 1):
        lesion = t_lab == i
        hits = set(np.unique(p_lab[lesion & (p_lab > 0)]).tolist())
        hit_components |= hits
        union = np.isin(p_lab, list(hits)) if hits else np.zeros_like(lesion)
        dices.append(2 * np.count_nonzero(lesion & union) / (lesion.sum() + union.sum()))
    fp = n_p - len(hit_components)
    tp = sum(d > 0 for d in dices)
    return tp, fp, sum(dices) / (n_t + fp)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_volumes_match_a_loop_over_lesions(seed):
    rng = np.random.default_rng(seed)
    blobs = [ndimage.gaussian_filter(rng.random((24, 24, 12)), 1.5) for _ in range(2)]
    truth, noise = (b > np.quantile(b, 0.9) for b in blobs)
    half = np.arange(24)[:, None, None] < 12
    pred = noise | (truth & half & (rng.random(truth.shape) > 0.5))  # partial hits, misses and FPs
    structure = ndimage.generate_binary_structure(3, 3)
    tp, fp, dice = _loop_reference(pred, truth, structure)
    m = lesion_wise_metrics(pred.astype(np.uint8), truth)
    assert m["lesion_tp"] > 3 and m["lesion_fn"] > 0 and m["lesion_fp"] > 0
    assert (m["lesion_tp"], m["lesion_fp"]) == (tp, fp)
    assert m["lesion_dice"] == pytest.approx(dice)


def test_input_errors():
    a = np.zeros((4, 4, 4), dtype=bool)
    with pytest.raises(ValueError, match=r"pred \(4, 4, 4\) and truth \(4, 4, 5\)"):
        lesion_wise_metrics(a, np.zeros((4, 4, 5), dtype=bool))
    with pytest.raises(ValueError, match="3-D masks"):
        lesion_wise_metrics(a[0], a[0])
    with pytest.raises(ValueError, match="truth must be a bool or 0/1 array"):
        lesion_wise_metrics(a, np.full((4, 4, 4), 255, dtype=np.uint8))
    with pytest.raises(ConfigError, match="connectivity must be 1, 2 or 3"):
        lesion_wise_metrics(a, a, connectivity=26)
    with pytest.raises(ConfigError, match="min_overlap_voxels must be at least 1"):
        lesion_wise_metrics(a, a, min_overlap_voxels=0)
