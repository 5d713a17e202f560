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
    assert torch.allclose(
        generalized_box_iou(x[:, None], y[None]), torchvision.ops.generalized_box_iou(x, y), atol=1e-6
    )
    assert torch.allclose(
        generalized_box_iou(x[:4], y), torchvision.ops.generalized_box_iou(x[:4], y).diag(), atol=1e-6
    )


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
        [
            [0.25, 0.25, 0.05, 0.05],
            [0.75, 0.25, 0.05, 0.05],
            [0.25, 0.75, 0.05, 0.05],
            [0.75, 0.75, 0.05, 0.05],
            [0.5, 0.5, 0.1, 0.1],
        ]
    )
    assert valid.all()
    assert torch.allclose(proposals.sigmoid(), expected, atol=1e-6)
    _, valid = encoder_proposals(torch.tensor([[100, 100]]))
    assert not valid[0] and valid[101]  # centre 0.005 is outside (0.01, 0.99)


def test_query_selection_always_keeps_the_best_stuff_token():
    from torch import nn

    from maskdino.transformer_decoder import MaskDINODecoder

    class FixedLogits(nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, tokens):
            return self.logits.expand(tokens.shape[0], -1, -1)

    decoder = MaskDINODecoder(
        num_classes=2,
        num_stuff_classes=1,
        hidden_dim=8,
        mask_dim=8,
        num_queries=2,
        num_heads=2,
        num_points=1,
        dim_feedforward=8,
        num_layers=1,
        num_levels=1,
        dn_num_queries=0,
    )
    # object scores crowd the top of the ranking; the background (last class) peaks on token 3
    decoder.class_embed = FixedLogits(torch.tensor([[[5.0, -9.0], [4.0, -9.0], [3.0, -9.0], [-9.0, -5.0]]]))
    memory = torch.randn(1, 4, 8)
    _, _, interm = decoder._select_queries(memory, torch.tensor([[2, 2]]), torch.randn(1, 8, 4, 4))
    assert interm["pred_logits"][0].tolist() == [[5.0, -9.0], [-9.0, -5.0]]


def test_matrix_nms_decays_duplicates_only():
    from maskdino.matrix_nms import matrix_nms

    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True  # A
    masks[1, :4, :4] = True  # duplicate of A, lower score
    masks[2, 4:, 4:] = True  # B, disjoint
    masks[3, :4, :2] = True  # half of A (IoU 0.5), lowest score
    scores = torch.tensor([0.8, 0.9, 0.7, 0.6])
    labels = torch.zeros(4, dtype=torch.long)
    decayed = matrix_nms(masks, scores, labels, sigma=2.0)
    # order by score: 1 (0.9), 0 (0.8), 2, 3. Mask 0 has IoU 1 with mask 1: 0.8 * exp(-2).
    # Mask 3: IoU 0.5 with masks 1 and 0; mask 0 is itself suppressed (compensation 1):
    # min(exp(-2 * 0.25), exp(-2 * (0.25 - 1))) = exp(-0.5).
    expected = torch.tensor([0.8 * math.exp(-2.0), 0.9, 0.7, 0.6 * math.exp(-0.5)])
    assert torch.allclose(decayed, expected, atol=1e-6)
    # other classes do not suppress each other
    assert torch.allclose(matrix_nms(masks, scores, torch.arange(4), sigma=2.0), scores)
    assert matrix_nms(masks[:0], scores[:0], labels[:0]).numel() == 0
