"""Hungarian matcher and set criterion on crafted predictions."""

import math

import torch

from detectron2.projects.point_rend.point_features import point_sample

from maskdino import criterion as criterion_module
from maskdino.criterion import SetCriterion, sample_masks_at_points, uncertain_points
from maskdino.matcher import HungarianMatcher, pairwise_mask_costs

from maskdino_testing import blob_masks


def _box(cx, cy=0.5, w=0.2, h=0.2):
    return [cx, cy, w, h]


def test_matcher_finds_global_optimum_not_greedy():
    # L1 costs [[0.1, 0.2], [0.15, 0.45]]: greedy would take (0,0) + (1,1) = 0.55, optimum is 0.35.
    matcher = HungarianMatcher(cost_class=0.0, cost_box=1.0, cost_giou=0.0, cost_mask=0.0, cost_dice=0.0)
    outputs = {"pred_logits": torch.zeros(1, 2, 1), "pred_boxes": torch.tensor([[_box(0.5), _box(0.75)]])}
    targets = [{"labels": torch.zeros(2, dtype=torch.long), "boxes": torch.tensor([_box(0.6), _box(0.3)])}]
    cost = matcher.cost_matrix(outputs["pred_logits"][0], outputs["pred_boxes"][0], None, targets[0])
    assert torch.allclose(cost, torch.tensor([[0.1, 0.2], [0.15, 0.45]]), atol=1e-6)
    ((queries, gts),) = matcher(outputs, targets)
    assert queries.tolist() == [0, 1] and gts.tolist() == [1, 0]


def test_matcher_matches_crafted_predictions_with_all_costs():
    torch.manual_seed(0)
    size = 32
    masks = blob_masks([(2, 12, 2, 12), (16, 30, 18, 28)], size)  # target 0, target 1
    boxes = torch.tensor([[7 / 32, 7 / 32, 10 / 32, 10 / 32], [23 / 32, 23 / 32, 10 / 32, 14 / 32]])
    target = {"labels": torch.zeros(2, dtype=torch.long), "boxes": boxes, "masks": masks}
    # query 0 = target 1, query 1 = nothing, query 2 = target 0
    pred_masks = torch.stack([masks[1], torch.zeros(size, size, dtype=torch.bool), masks[0]]).float() * 20 - 10
    outputs = {
        "pred_logits": torch.tensor([[[4.0], [-4.0], [4.0]]]),
        "pred_boxes": torch.stack([boxes[1], torch.tensor([0.5, 0.5, 0.9, 0.9]), boxes[0]])[None],
        "pred_masks": pred_masks[None],
    }
    ((queries, gts),) = HungarianMatcher(num_points=512)(outputs, [target])
    assert queries.tolist() == [0, 2] and gts.tolist() == [1, 0]


def test_matcher_empty_targets():
    outputs = {
        "pred_logits": torch.zeros(2, 3, 1),
        "pred_boxes": torch.rand(2, 3, 4),
        "pred_masks": torch.zeros(2, 3, 8, 8),
    }
    empty = {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 32, 32)}
    indices = HungarianMatcher()(outputs, [empty, empty])
    assert all(q.numel() == 0 and t.numel() == 0 for q, t in indices)


def test_pairwise_mask_costs_known_values():
    logits = torch.tensor([[10.0, 10.0, -10.0, -10.0], [0.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    bce, dice = pairwise_mask_costs(logits, target)
    assert bce[0, 0] < 1e-4 and math.isclose(bce[1, 0].item(), math.log(2), rel_tol=1e-5)
    # logits 0 -> prob 0.5 everywhere: dice = 1 - (2 * 1 + 1) / (2 + 2 + 1)
    assert dice[0, 0] < 1e-4 and math.isclose(dice[1, 0].item(), 1 - 3 / 5, rel_tol=1e-5)


def _criterion():
    return SetCriterion(
        num_classes=1,
        matcher=HungarianMatcher(num_points=256),
        weight_dict={"loss_class": 4.0, "loss_bbox": 5.0, "loss_giou": 2.0, "loss_mask": 5.0, "loss_dice": 5.0},
        num_points=256,
    )


def _outputs(batch, queries, size, requires_grad=True):
    out = {
        "pred_logits": torch.randn(batch, queries, 1),
        "pred_boxes": torch.rand(batch, queries, 4) * 0.5 + 0.25,
        "pred_masks": torch.randn(batch, queries, size // 4, size // 4),
    }
    return {k: v.requires_grad_(requires_grad) for k, v in out.items()}


def test_criterion_zero_targets_only_class_loss():
    torch.manual_seed(0)
    outputs = _outputs(2, 5, 32)
    outputs["aux_outputs"] = [_outputs(2, 5, 32)]
    empty = {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 32, 32)}
    losses = _criterion()(outputs, [empty, empty])
    assert set(losses) == {
        f"{n}{s}" for n in ("loss_class", "loss_bbox", "loss_giou", "loss_mask", "loss_dice") for s in ("", "_0")
    }
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_class"] > 0
    assert all(losses[k] == 0 for k in losses if not k.startswith("loss_class"))
    sum(losses.values()).backward()
    assert torch.isfinite(outputs["pred_logits"].grad).all() and outputs["pred_logits"].grad.abs().sum() > 0


def test_criterion_perfect_prediction_has_near_zero_loss():
    size = 32
    masks = blob_masks([(4, 20, 8, 24)], size)
    target = {
        "labels": torch.zeros(1, dtype=torch.long),
        "boxes": torch.tensor([[0.5, 0.375, 0.5, 0.5]]),
        "masks": masks,
    }
    outputs = {
        "pred_logits": torch.tensor([[[12.0], [-12.0]]]),
        "pred_boxes": torch.tensor([[[0.5, 0.375, 0.5, 0.5], [0.2, 0.2, 0.1, 0.1]]]),
        # mask logits on the target's grid: every sampled point agrees with the target
        "pred_masks": torch.stack([masks[0].float() * 40 - 20, torch.full((size, size), -20.0)])[None],
    }
    losses = _criterion()(outputs, [target])
    assert losses["loss_bbox"] < 1e-6 and losses["loss_giou"] < 1e-6
    assert losses["loss_class"] < 1e-4
    # importance sampling puts most points on the border, where bilinear targets are
    # fractional: small but non-zero mask losses; an inverted mask costs far more
    assert losses["loss_dice"] < 1.0 and losses["loss_mask"] < 5.0
    wrong_box = {k: v.clone() for k, v in outputs.items()}
    wrong_box["pred_boxes"][0, 0] = torch.tensor([0.4, 0.4, 0.3, 0.3])
    # weight 5 x L1 (0.1 + 0.025 + 0.2 + 0.2), normalised by one target object
    assert math.isclose(_criterion()(wrong_box, [target])["loss_bbox"].item(), 5 * 0.525, rel_tol=1e-5)
    wrong_mask = {k: v.clone() for k, v in outputs.items()}
    wrong_mask["pred_masks"][0, 0] = -wrong_mask["pred_masks"][0, 0]
    wrong_losses = _criterion()(wrong_mask, [target])
    assert wrong_losses["loss_dice"] > 4.0 and wrong_losses["loss_mask"] > 10 * losses["loss_mask"]


def test_criterion_denoising_losses_use_known_indices():
    torch.manual_seed(0)
    size = 32
    target = {
        "labels": torch.zeros(1, dtype=torch.long),
        "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]]),
        "masks": blob_masks([(10, 22, 10, 22)], size),
    }
    outputs = _outputs(1, 4, size)
    dn_out = _outputs(1, 2, size)
    dn_out["pred_boxes"] = torch.tensor([[[0.5, 0.5, 0.4, 0.4], [0.5, 0.5, 0.4, 0.4]]])
    outputs["denoising"] = {
        "outputs": dn_out,
        "indices": [(torch.tensor([0, 1]), torch.tensor([0, 0]))],
        "num_groups": 2,
    }
    losses = _criterion()(outputs, [target])
    # both denoising queries predict the exact box: zero box losses, independent of matching
    assert losses["loss_bbox_dn"] < 1e-6 and losses["loss_giou_dn"] < 1e-6
    assert losses["loss_mask_dn"] > 0 and torch.isfinite(losses["loss_dice_dn"])


def test_criterion_zero_denoising_losses_when_batch_has_no_denoising_queries():
    torch.manual_seed(0)
    outputs = _outputs(1, 4, 32)
    outputs["aux_outputs"] = [_outputs(1, 4, 32), _outputs(1, 4, 32)]
    outputs["denoising"] = None
    empty = {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 32, 32)}
    losses = _criterion()(outputs, [empty])
    dn = {k: v for k, v in losses.items() if "_dn" in k}
    assert len(dn) == 5 * 3 and all(v == 0 for v in dn.values())
    assert {k.replace("_dn", "") for k in dn} == {k for k in losses if "_dn" not in k}


def test_sample_masks_at_points_equals_point_sample_of_the_indexed_masks():
    torch.manual_seed(0)
    masks = torch.rand(3, 20, 28)
    rows = torch.tensor([2, 0, 0, 1, 2])
    points = torch.rand(5, 300, 2) * 1.2 - 0.1  # some points outside the image: zero padding
    expected = point_sample(masks[rows][:, None], points, align_corners=False)[:, 0]
    assert torch.allclose(sample_masks_at_points(masks, rows, points), expected, atol=1e-6)


def test_uncertain_points_keep_the_most_uncertain_candidates():
    torch.manual_seed(0)
    # logit 20 * (x - 0.5): uncertainty is highest on the vertical line x = 0.5
    x = (torch.arange(64) + 0.5) / 64
    logits = (20 * (x - 0.5)).expand(2, 64, 64)
    points = uncertain_points(logits, 400, oversample_ratio=3.0, importance_sample_ratio=0.75)
    assert points.shape == (2, 400, 2) and points.min() >= 0 and points.max() <= 1
    chosen, random = points[:, :300], points[:, 300:]
    # the 300 most uncertain of 1200 uniform candidates: |x - 0.5| < 1/8 (up to the few
    # candidates within half a pixel of the border, where zero padding pulls logits to 0)
    near = ((chosen[..., 0] - 0.5).abs() < 0.13).float().mean()
    assert near > 0.95
    assert ((random[..., 0] - 0.5).abs() < 0.13).float().mean() < 0.5


def test_criterion_mask_losses_of_all_sets_at_once_equal_one_set_at_a_time(monkeypatch):
    # fixed points (a grid, the same for every mask) take the randomness out
    grid = torch.stack(torch.meshgrid(torch.linspace(0.01, 0.99, 16), torch.linspace(0.01, 0.99, 16), indexing="xy"), -1)
    monkeypatch.setattr(
        criterion_module, "uncertain_points", lambda logits, num_points, *_: grid.reshape(1, -1, 2).expand(len(logits), -1, -1)
    )
    torch.manual_seed(0)
    size = 32
    targets = [
        {"labels": torch.zeros(2, dtype=torch.long), "boxes": torch.rand(2, 4),
         "masks": blob_masks([(2, 12, 2, 12), (16, 30, 18, 28)], size)},
        {"labels": torch.zeros(1, dtype=torch.long), "boxes": torch.rand(1, 4), "masks": blob_masks([(4, 20, 8, 24)], size)},
    ]
    sets = [
        criterion_module._MatchedSet(_outputs(2, 4, size), [(torch.tensor([0, 3]), torch.tensor([1, 0])),
                                                            (torch.tensor([2]), torch.tensor([0]))], 1.5, ""),
        criterion_module._MatchedSet(_outputs(2, 4, size), [(torch.tensor([1]), torch.tensor([0])),
                                                            (torch.tensor([0, 1]), torch.tensor([0, 0]))], 3.0, "_dn"),
        criterion_module._MatchedSet(_outputs(2, 4, size), [(torch.zeros(0, dtype=torch.long),) * 2] * 2, 1.5, "_1"),
    ]
    crit = _criterion()
    together = crit._mask_losses(sets, targets)
    for matched, losses in zip(sets, together):
        alone = crit.loss_masks(matched.outputs, targets, matched.indices, matched.num_masks)
        for name in ("loss_mask", "loss_dice"):
            assert torch.allclose(losses[name], alone[name], atol=1e-6), (matched.suffix, name)
    assert together[2]["loss_mask"] == 0 and together[0]["loss_dice"] > 0
    sum(v for losses in together for v in losses.values()).backward()
    assert sets[0].outputs["pred_masks"].grad.abs().sum() > 0
