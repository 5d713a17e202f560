"""Denoising queries: shapes, known assignment, noise bounds and the attention mask."""

import torch
from torch import nn

from maskdino.box_ops import box_cxcywh_to_xyxy
from maskdino.denoising import build_denoising_queries, denoising_attention_mask


def test_attention_mask_two_groups_exact_pattern():
    mask = denoising_attention_mask(2, 2, 3)
    expected = torch.tensor(
        [
            # g0  g0  g1  g1  m   m   m
            [0, 0, 1, 1, 0, 0, 0],
            [0, 0, 1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


def _targets():
    return [
        {
            "labels": torch.tensor([1, 0, 2]),
            "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2], [0.7, 0.6, 0.3, 0.1]]),
        },
        {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.2, 0.8, 0.1, 0.1]])},
    ]


def test_denoising_query_shapes_and_indices():
    torch.manual_seed(0)
    embedding = nn.Embedding(3, 16)
    dn = build_denoising_queries(
        _targets(), label_embedding=embedding, num_classes=3, num_dn_queries=7, noise_scale=0.4, num_matching_queries=5
    )
    assert (dn.num_groups, dn.group_size, dn.num_queries) == (2, 3, 6)
    assert dn.content.shape == (3, 6, 16)
    assert dn.boxes_unsigmoid.shape == (3, 6, 4)
    assert dn.attn_mask.shape == (11, 11)
    queries, gts = dn.indices[0]
    assert queries.tolist() == [0, 1, 2, 3, 4, 5] and gts.tolist() == [0, 1, 2, 0, 1, 2]
    assert dn.indices[1][0].numel() == 0
    assert dn.indices[2][0].tolist() == [0, 3] and dn.indices[2][1].tolist() == [0, 0]
    # padding slots (image 1 everywhere, image 2 after its single object) are zero queries
    assert torch.all(dn.content[1] == 0) and torch.all(dn.content[2, [1, 2, 4, 5]] == 0)
    assert torch.all(dn.boxes_unsigmoid[1] == 0)


def test_denoising_without_noise_reproduces_ground_truth():
    embedding = nn.Embedding(3, 8)
    targets = _targets()
    dn = build_denoising_queries(
        targets, label_embedding=embedding, num_classes=3, num_dn_queries=6, noise_scale=0.0, num_matching_queries=4
    )
    for group in range(dn.num_groups):
        rows = slice(group * 3, group * 3 + 3)
        assert torch.allclose(dn.boxes_unsigmoid[0, rows].sigmoid(), targets[0]["boxes"], atol=1e-5)
        assert torch.allclose(dn.content[0, rows], embedding(targets[0]["labels"]))


def test_box_noise_keeps_boxes_overlapping():
    torch.manual_seed(1)
    targets = [{"labels": torch.zeros(1, dtype=torch.long), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]])}]
    dn = build_denoising_queries(
        targets,
        label_embedding=nn.Embedding(1, 4),
        num_classes=1,
        num_dn_queries=200,
        noise_scale=0.4,
        num_matching_queries=2,
    )
    noised = dn.boxes_unsigmoid[0].sigmoid()
    # centre shift <= 0.4 * size / 2, size change <= 0.4 * size
    assert torch.all((noised[:, :2] - targets[0]["boxes"][:, :2]).abs() <= 0.2 * targets[0]["boxes"][:, 2:] + 1e-5)
    assert torch.all((noised[:, 2:] - targets[0]["boxes"][:, 2:]).abs() <= 0.4 * targets[0]["boxes"][:, 2:] + 1e-5)
    assert noised.std(0).min() > 0  # the noise is real
    assert box_cxcywh_to_xyxy(noised).shape == (200, 4)


def test_no_denoising_without_objects_or_budget():
    embedding = nn.Embedding(1, 4)
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    assert (
        build_denoising_queries(
            empty, label_embedding=embedding, num_classes=1, num_dn_queries=10, noise_scale=0.4, num_matching_queries=3
        )
        is None
    )
    many = [{"labels": torch.zeros(5, dtype=torch.long), "boxes": torch.full((5, 4), 0.3)}]
    assert (
        build_denoising_queries(
            many, label_embedding=embedding, num_classes=1, num_dn_queries=4, noise_scale=0.4, num_matching_queries=3
        )
        is None
    )
