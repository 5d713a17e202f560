"""Known-answer tests of brainseg.evaluation.metrics."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from brainseg.evaluation.metrics import (
    confusion_counts,
    dice_from_counts,
    dice_score,
    hausdorff_distance_95,
    iou_score,
    seed_iou_dice,
    surface_voxels,
    symmetric_surface_distances,
)


def square(shape, top, left, size):
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


@pytest.mark.parametrize("size,offset", [(10, 3), (8, 1), (6, 5)])
def test_offset_squares_dice_iou(size, offset):
    truth = square((40, 40), 5, 5, size)
    prediction = square((40, 40), 5, 5 + offset, size)
    overlap = size * (size - offset)
    assert confusion_counts(prediction, truth) == (
        overlap,
        size * offset,
        size * offset,
        1600 - overlap - 2 * size * offset,
    )
    # Two n x n squares shifted by k: Dice = (n - k) / n, IoU = (n - k) / (n + k).
    assert dice_score(prediction, truth) == pytest.approx((size - offset) / size)
    assert iou_score(prediction, truth) == pytest.approx((size - offset) / (size + offset))


def test_empty_masks():
    empty = np.zeros((16, 16), dtype=bool)
    blob = square((16, 16), 2, 2, 3)
    assert math.isnan(dice_score(empty, empty))
    assert math.isnan(iou_score(empty, empty))
    assert dice_score(blob, empty) == 0.0 and iou_score(empty, blob) == 0.0
    assert math.isnan(hausdorff_distance_95(blob, empty))
    assert math.isnan(hausdorff_distance_95(empty, blob))
    assert math.isnan(dice_from_counts(0, 0, 0))
    with pytest.raises(ValueError, match="non-empty"):
        symmetric_surface_distances(blob, empty)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"\(4, 4\) != truth shape \(4, 5\)"):
        confusion_counts(np.zeros((4, 4)), np.zeros((4, 5)))


def test_surface_voxels():
    mask = square((7, 7), 1, 1, 5)
    surface = surface_voxels(mask)
    assert surface.sum() == 16  # the 5x5 ring; the 3x3 inside is interior
    assert not surface[2:5, 2:5].any()
    # Pixels on the array edge are boundary (the outside is background).
    assert surface_voxels(np.ones((3, 3), dtype=bool)).sum() == 8


def test_hd95_single_pixels_and_spacing():
    a = np.zeros((12, 12), dtype=bool)
    b = np.zeros((12, 12), dtype=bool)
    a[5, 2] = True
    b[5, 9] = True
    assert hausdorff_distance_95(a, b) == pytest.approx(7.0)
    assert hausdorff_distance_95(a, b, spacing=(2.0, 0.5)) == pytest.approx(3.5)


def test_hd95_offset_squares():
    # 10x10 squares shifted by 3 columns. Border distances A->B (36 border pixels): top and bottom
    # rows 3,2,1 then seven 0s; left column eight 3s; right column 1,2,3,3,3,3,2,1; B->A mirrors
    # it. Pooled: 28 zeros, 8 ones, 8 twos, 28 threes -> 95th percentile = 3.
    truth = square((40, 40), 10, 10, 10)
    prediction = square((40, 40), 10, 13, 10)
    to_truth, to_pred = symmetric_surface_distances(prediction, truth)
    pooled = np.sort(np.concatenate([to_truth, to_pred]))
    assert np.array_equal(np.unique(pooled, return_counts=True)[1], [28, 8, 8, 28])
    assert hausdorff_distance_95(prediction, truth) == pytest.approx(3.0)


def test_hd95_is_the_interpolated_95th_percentile_not_the_max():
    # Prediction {p}; truth {p, q} with |pq| = 10. Distances: p->truth [0], truth->p [0, 10];
    # pooled [0, 0, 10]; 95th percentile at rank 1.9 = 0 + 0.9 * 10 = 9.
    prediction = np.zeros((20, 20), dtype=bool)
    prediction[2, 3] = True
    truth = prediction.copy()
    truth[2, 13] = True
    assert hausdorff_distance_95(prediction, truth) == pytest.approx(9.0)


def test_hd95_slices_shifted_in_3d_uses_slice_spacing():
    # A single-slice blob is all surface; moving it 2 slices gives every distance exactly 2.
    truth = np.zeros((8, 16, 16), dtype=bool)
    truth[2, 4:9, 5:11] = True
    prediction = np.roll(truth, 2, axis=0)
    assert hausdorff_distance_95(prediction, truth) == pytest.approx(2.0)
    assert hausdorff_distance_95(prediction, truth, spacing=(3.0, 1.0, 1.0)) == pytest.approx(6.0)


def test_hd95_matches_brute_force_on_random_volumes():
    rng = np.random.default_rng(0)
    for _ in range(3):
        truth = np.zeros((6, 24, 24), dtype=bool)
        prediction = np.zeros_like(truth)
        truth[1:5, 4:15, 6:18] = True
        prediction[2:6, 7:20, 3:14] = True
        truth &= rng.random(truth.shape) > 0.2
        prediction &= rng.random(prediction.shape) > 0.2
        spacing = (2.5, 0.8, 1.1)
        pred_points = np.argwhere(surface_voxels(prediction)) * spacing
        truth_points = np.argwhere(surface_voxels(truth)) * spacing
        pairwise = cdist(pred_points, truth_points)
        expected = np.percentile(np.concatenate([pairwise.min(axis=1), pairwise.min(axis=0)]), 95)
        assert hausdorff_distance_95(prediction, truth, spacing=spacing) == pytest.approx(expected, abs=1e-9)


def test_seed_iou_dice_known_batch():
    # A batch of two 2x2 slices: prediction [[1,1],[0,0]] and [[0,0],[0,1]];
    # truth [[1,0],[0,0]] and [[0,0],[1,1]]: intersection 2, union 4.
    prediction = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 1]]], dtype=bool)
    truth = np.array([[[1, 0], [0, 0]], [[0, 0], [1, 1]]], dtype=bool)
    intersection = int((prediction & truth).sum())
    union = int((prediction | truth).sum())
    iou, dice = seed_iou_dice(intersection, union)
    assert (intersection, union) == (2, 4)
    assert iou == pytest.approx(0.5, abs=1e-5)
    assert dice == pytest.approx(2 / 3, abs=1e-5)
    assert iou == (2 + 1e-5) / (4 + 1e-5)
    assert seed_iou_dice(0, 0) == (1.0, 1.0)  # UNeXt's smoothing scores an empty batch as perfect
    assert seed_iou_dice(0, 7)[0] == 1e-5 / (7 + 1e-5)
    with pytest.raises(ValueError, match="intersection <= union"):
        seed_iou_dice(5, 4)
