"""Box utilities and positional encodings."""
import math

import torch
import torchvision

from maskdino.box_ops import (
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    inverse_sigmoid,
    masks_to_boxes,
)
from maskdino.position_encoding import PositionEmbeddingSine, sine_embedding


def test_box_format_round_trip():
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.05, 0.1]])
    xyxy = box_cxcywh_to_xyxy(boxes)
    assert torch.allclose(xyxy[0], torch.tensor([0.4, 0.3, 0.6, 0.7]))
    assert torch.allclose(box_xyxy_to_cxcywh(xyxy), boxes)


def test_generalized_box_iou_known_values_and_torchvision():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [4.0, 0.0, 6.0, 2.0]])
    giou = generalized_box_iou(a[:, None], b[None])[0]
    # overlap 1, union 7, hull 9 -> 1/7 - 2/9; identical -> 1; disjoint, hull 12, union 8 -> -1/3
    assert torch.allclose(giou, torch.tensor([1 / 7 - 2 / 9, 1.0, -1 / 3]))
    x = box_cxcywh_to_xyxy(torch.rand(5, 4) * 0.5 + 0.1)
    y = box_cxcywh_to_xyxy(torch.rand(4, 4) * 0.5 + 0.1)
    assert torch.allclose(generalized_box_iou(x[:, None], y[None]), torchvision.ops.generalized_box_iou(x, y), atol=1e-6)
    assert torch.allclose(generalized_box_iou(x[:4], y), torchvision.ops.generalized_box_iou(x[:4], y).diag(), atol=1e-6)


def test_masks_to_boxes_tight_and_empty():
    masks = torch.zeros(2, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    boxes = masks_to_boxes(masks)
    assert boxes.tolist() == [[3.0, 2.0, 9.0, 5.0], [0.0, 0.0, 0.0, 0.0]]
    assert masks_to_boxes(masks[:0]).shape == (0, 4)


def test_inverse_sigmoid_inverts_and_clamps():
    x = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(inverse_sigmoid(x).sigmoid(), x, atol=1e-6)
    assert torch.isfinite(inverse_sigmoid(torch.tensor([0.0, 1.0]))).all()


def test_sine_embedding_values():
    emb = sine_embedding(torch.tensor([[0.25]]), 4, temperature=100.0)
    # features: sin(2pi c), cos(2pi c), sin(2pi c / 10), cos(2pi c / 10)
    angle = 2 * math.pi * 0.25
    expected = torch.tensor([math.sin(angle), math.cos(angle), math.sin(angle / 10), math.cos(angle / 10)])
    assert torch.allclose(emb[0], expected, atol=1e-6)
    assert sine_embedding(torch.rand(2, 3, 4), 8).shape == (2, 3, 32)


def test_position_embedding_sine_map():
    pos = PositionEmbeddingSine(8)(torch.zeros(2, 5, 4, 6))
    assert pos.shape == (2, 16, 4, 6)
    # first channel: sin(2 pi y) with y the normalised row centre; constant along x
    ys = (torch.arange(4) + 0.5) / 4
    assert torch.allclose(pos[0, 0, :, 0], torch.sin(2 * math.pi * ys), atol=1e-6)
    assert torch.allclose(pos[1, 0], pos[1, 0, :, :1].expand(4, 6))


def test_encoder_proposals_centres_and_level_sizes():
    from maskdino.transformer_decoder import encoder_proposals

    proposals, valid = encoder_proposals(torch.tensor([[2, 2], [1, 1]]))
    expected = torch.tensor(
        [[0.25, 0.25, 0.05, 0.05], [0.75, 0.25, 0.05, 0.05], [0.25, 0.75, 0.05, 0.05], [0.75, 0.75, 0.05, 0.05], [0.5, 0.5, 0.1, 0.1]]
    )
    assert valid.all()
    assert torch.allclose(proposals.sigmoid(), expected, atol=1e-6)
    _, valid = encoder_proposals(torch.tensor([[100, 100]]))
    assert not valid[0] and valid[101]  # centre 0.005 is outside (0.01, 0.99)
