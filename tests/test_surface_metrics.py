"""Surface metrics (HD95, ASSD, NSD) and the largest connected component: known answers, and
agreement with MONAI 1.6.1 (a test-only reference, see requirements.txt) on cubes, spheres and
shifted boxes, with isotropic and anisotropic spacing.

Where the conventions differ, the tests pin both numbers:

* HD95: brainseg pools the distances of both directions before the 95th percentile (medpy's
  ``hd95``); MONAI (``percentile=95``, symmetric) takes the larger of the two directed 95th
  percentiles. Equal when both directions have the same distances (shifted copies); for
  spheres of radius 15 and 18 mm with centres 6 mm apart at spacing (5.0, 0.9, 0.9) mm:
  8.95 mm vs 10.00 mm.
  The directed percentiles agree to float32 precision.
* NSD: both count surface voxels; MONAI's ``use_subvoxels=True`` (DeepMind's surfel areas)
  weighs them by area instead: 0.341 vs 0.488 at 1 mm for the anisotropic shifted boxes.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from monai import metrics as monai_metrics

from brainseg.evaluation.metrics import (
    average_symmetric_surface_distance,
    hausdorff_distance_95,
    largest_connected_component,
    normalized_surface_dice,
    surface_metrics,
    symmetric_surface_distances,
)

ANISOTROPIC = (5.0, 0.9, 0.9)
TOLERANCES = (1.0, 2.0, 5.0)  # 5.0: exact ties (one 5 mm slice, 3-4-5 voxel steps), counted as within


def box(shape, low, high):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(low, high))] = True
    return mask


def ellipsoid(shape, centre, radius_tenths, weights_tenths):
    """Voxels whose centre lies within ``radius`` mm of ``centre`` at spacing ``weights / 10``
    mm, in exact integer arithmetic (no rounding at the rim)."""
    grid = np.indices(shape)
    distance2 = sum(((grid[i] - centre[i]) * weights_tenths[i]) ** 2 for i in range(3))
    return distance2 <= radius_tenths**2


# (name, prediction, truth, directions have equal distances)
CASES = [
    ("shifted_boxes", box((12, 40, 40), (3, 10, 10), (8, 25, 22)), box((12, 40, 40), (4, 12, 9), (9, 27, 21)), True),
    ("cube_in_cube", box((20, 30, 30), (7, 12, 12), (13, 18, 18)), box((20, 30, 30), (2, 4, 4), (18, 26, 26)), False),
    (
        "spheres",
        ellipsoid((16, 64, 64), (8, 30, 32), 150, (50, 9, 9)),
        ellipsoid((16, 64, 64), (7, 33, 30), 180, (50, 9, 9)),
        False,
    ),
]


def monai(function, prediction, truth, spacing, **kwargs):
    """One MONAI metric of two single-channel volumes (batch and channel axes added)."""
    as_tensor = lambda m: torch.from_numpy(m[None, None].astype(np.float32))  # noqa: E731
    spacing = {} if spacing is None else {"spacing": list(spacing)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty masks; the tests check the values
        return float(function(as_tensor(prediction), as_tensor(truth), include_background=True, **spacing, **kwargs))


@pytest.mark.parametrize("spacing", [None, ANISOTROPIC], ids=["voxels", "anisotropic"])
@pytest.mark.parametrize("name,prediction,truth,symmetric", CASES, ids=[c[0] for c in CASES])
def test_agreement_with_monai(name, prediction, truth, symmetric, spacing):
    ours = surface_metrics(prediction, truth, spacing=spacing, tolerances=TOLERANCES)
    # ASSD: mean of the pooled distances, as MONAI's symmetric average surface distance.
    assd = monai(monai_metrics.compute_average_surface_distance, prediction, truth, spacing, symmetric=True)
    assert ours.assd == pytest.approx(assd, rel=1e-6)
    # NSD: fraction of surface voxels within tau (MONAI without sub-voxel areas).
    for tau, nsd in zip(TOLERANCES, ours.nsd):
        assert nsd == pytest.approx(
            monai(monai_metrics.compute_surface_dice, prediction, truth, spacing, class_thresholds=[tau]), abs=1e-6
        )
    # HD95: the directed 95th percentiles agree; the symmetric ones where both directions agree.
    to_truth, to_prediction = symmetric_surface_distances(prediction, truth, spacing)
    hd = monai_metrics.compute_hausdorff_distance
    directed = [
        monai(hd, prediction, truth, spacing, percentile=95, directed=True),
        monai(hd, truth, prediction, spacing, percentile=95, directed=True),
    ]
    assert np.percentile(to_truth, 95) == pytest.approx(directed[0], rel=1e-6)
    assert np.percentile(to_prediction, 95) == pytest.approx(directed[1], rel=1e-6)
    monai_hd95 = monai(hd, prediction, truth, spacing, percentile=95)
    assert monai_hd95 == pytest.approx(max(directed), rel=1e-6)
    assert ours.hd95 <= monai_hd95 * (1 + 1e-6)
    if symmetric:
        assert ours.hd95 == pytest.approx(monai_hd95, rel=1e-6)


def test_documented_differences_from_monai():
    _, prediction, truth, _ = CASES[2]
    assert hausdorff_distance_95(prediction, truth, ANISOTROPIC) == pytest.approx(8.949, abs=1e-3)
    hd = monai(monai_metrics.compute_hausdorff_distance, prediction, truth, ANISOTROPIC, percentile=95)
    assert hd == pytest.approx(10.0, abs=1e-4)
    _, prediction, truth, _ = CASES[0]
    assert normalized_surface_dice(prediction, truth, 1.0, ANISOTROPIC) == pytest.approx(87 / 255)
    subvoxel = monai(
        monai_metrics.compute_surface_dice,
        prediction,
        truth,
        ANISOTROPIC,
        class_thresholds=[1.0],
        use_subvoxels=True,
    )
    assert subvoxel == pytest.approx(0.488, abs=1e-3)


def test_agreement_with_monai_on_random_volumes():
    rng = np.random.default_rng(0)
    for _ in range(3):
        truth = box((10, 32, 32), (1, 5, 6), (8, 22, 25)) & (rng.random((10, 32, 32)) > 0.15)
        prediction = box((10, 32, 32), (2, 8, 3), (9, 26, 20)) & (rng.random((10, 32, 32)) > 0.15)
        ours = surface_metrics(prediction, truth, spacing=ANISOTROPIC, tolerances=TOLERANCES)
        assd = monai(monai_metrics.compute_average_surface_distance, prediction, truth, ANISOTROPIC, symmetric=True)
        assert ours.assd == pytest.approx(assd, rel=1e-6)
        for tau, nsd in zip(TOLERANCES, ours.nsd):
            reference = monai(
                monai_metrics.compute_surface_dice, prediction, truth, ANISOTROPIC, class_thresholds=[tau]
            )
            assert nsd == pytest.approx(reference, abs=1e-6)


def test_known_answers_offset_squares():
    # 10x10 squares shifted by 3 columns: pooled distances are 28 zeros, 8 ones, 8 twos and
    # 28 threes (see test_metrics.test_hd95_offset_squares).
    truth = np.zeros((40, 40), dtype=bool)
    truth[10:20, 10:20] = True
    prediction = np.roll(truth, 3, axis=1)
    result = surface_metrics(prediction, truth, tolerances=(0.0, 1.0, 2.0, 3.0))
    assert result.hd95 == pytest.approx(3.0)
    assert result.assd == pytest.approx((8 * 1 + 8 * 2 + 28 * 3) / 72)
    assert result.nsd == pytest.approx((28 / 72, 36 / 72, 44 / 72, 1.0))
    assert average_symmetric_surface_distance(prediction, truth) == pytest.approx(1.5)
    # A 2 mm spacing doubles every distance; the tolerance is in mm.
    assert average_symmetric_surface_distance(prediction, truth, spacing=(2.0, 2.0)) == pytest.approx(3.0)
    assert normalized_surface_dice(prediction, truth, 2.0, spacing=(2.0, 2.0)) == pytest.approx(36 / 72)


def test_known_answers_plates_across_slices():
    # One-slice plates are all surface; two slices apart at 5 mm every distance is 10 mm.
    truth = box((8, 16, 16), (2, 3, 4), (3, 12, 13))
    prediction = np.roll(truth, 2, axis=0)
    result = surface_metrics(prediction, truth, spacing=ANISOTROPIC, tolerances=(1.0, 9.99, 10.0))
    assert (result.hd95, result.assd) == (pytest.approx(10.0), pytest.approx(10.0))
    assert result.nsd == (0.0, 0.0, 1.0)
    identical = surface_metrics(truth, truth, spacing=ANISOTROPIC, tolerances=(0.0,))
    assert (identical.hd95, identical.assd, identical.nsd) == (0.0, 0.0, (1.0,))


def test_empty_volume_conventions():
    empty = np.zeros((4, 8, 8), dtype=bool)
    blob = box((4, 8, 8), (1, 2, 2), (3, 5, 5))
    both_empty = surface_metrics(empty, empty, tolerances=(1.0, 2.0))
    assert math.isnan(both_empty.hd95) and math.isnan(both_empty.assd)
    assert all(math.isnan(v) for v in both_empty.nsd)
    for prediction, truth in ((blob, empty), (empty, blob)):
        one_empty = surface_metrics(prediction, truth, spacing=ANISOTROPIC, tolerances=(1.0, 2.0))
        assert math.isnan(one_empty.hd95) and math.isnan(one_empty.assd)
        assert one_empty.nsd == (0.0, 0.0)
        assert math.isnan(average_symmetric_surface_distance(prediction, truth))
    # MONAI agrees on NSD: 0 with one empty mask, nan with both.
    assert monai(monai_metrics.compute_surface_dice, blob, empty, None, class_thresholds=[1.0]) == 0.0
    assert math.isnan(monai(monai_metrics.compute_surface_dice, empty, empty, None, class_thresholds=[1.0]))
    with pytest.raises(ValueError, match="tolerances must be finite and >= 0"):
        surface_metrics(blob, blob, tolerances=(-1.0,))


def test_largest_component_keeps_the_bigger_blob_across_slices():
    mask = np.zeros((6, 20, 20), dtype=bool)
    mask[0:4, 2:5, 2:5] = True  # 4 slices x 3x3 = 36 voxels, one component through the slices
    mask[1, 10:15, 10:15] = True  # 25 voxels, the largest blob of any single slice
    mask[5, 0:2, 0:2] = True  # 4 voxels
    kept = largest_connected_component(mask)
    assert kept.sum() == 36 and kept[0:4, 2:5, 2:5].all()
    assert not kept[1, 10:15, 10:15].any() and not kept[5].any()
    assert mask.sum() == 65  # the input is not modified


def test_largest_component_uses_face_connectivity():
    # Cubes touching only along an edge (across a slice boundary) are separate components.
    mask = np.zeros((6, 10, 10), dtype=bool)
    mask[0:3, 0:3, 0:3] = True  # 27 voxels
    mask[3:5, 3:5, 0:2] = True  # 8 voxels, diagonal neighbour of the first cube
    assert largest_connected_component(mask).sum() == 27
    mask[3:6, 2:5, 0:3] = True  # now sharing faces with the first cube: one component
    assert largest_connected_component(mask).sum() == mask.sum()


def test_largest_component_tie_and_empty():
    mask = np.zeros((3, 8, 8), dtype=bool)
    mask[0, 5:7, 5:7] = True
    mask[2, 0:2, 0:2] = True
    kept = largest_connected_component(mask)
    assert kept.sum() == 4 and kept[0, 5:7, 5:7].all()  # the one found first in raster order
    empty = np.zeros((3, 8, 8), dtype=bool)
    result = largest_connected_component(empty)
    assert not result.any() and result is not empty
