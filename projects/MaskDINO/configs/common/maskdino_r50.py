"""Mask DINO R50 model (4 levels, 300 queries, 6+6 layers, hidden 256) for LGG, from scratch.

Importing it imports the ``maskdino`` package (installed from projects/MaskDINO/maskdino by
setup.py), which registers the ``MaskDINO`` meta-architecture with detectron2.
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from brainseg.data.statistics import LGG_PIXEL_MEAN, LGG_PIXEL_STD
from brainseg.modeling.postprocessing import DEFAULT_MASK_THRESHOLD

from maskdino import (
    HungarianMatcher,
    MaskDINO,
    MaskDINODecoder,
    MaskDINOPixelDecoder,
    SetCriterion,
    build_resnet,
)

model = L(MaskDINO)(
    backbone=L(build_resnet)(depth=50, width=64, norm="BN", out_features=["res2", "res3", "res4", "res5"]),
    pixel_decoder=L(MaskDINOPixelDecoder)(
        # R50 output shapes (channels double per stage from 256 at res2).
        input_shape={f"res{i}": ShapeSpec(channels=256 * 2 ** (i - 2), stride=2**i) for i in range(2, 6)},
        transformer_in_features=["res3", "res4", "res5"],
        total_num_feature_levels=4,
        conv_dim=256,
        mask_dim=256,
        num_heads=8,
        num_points=4,
        dim_feedforward=1024,
        num_encoder_layers=6,
        norm="GN",
    ),
    transformer_decoder=L(MaskDINODecoder)(
        num_classes=2,  # "tumor" + the background stuff class (always last)
        num_stuff_classes=1,
        hidden_dim="${..pixel_decoder.conv_dim}",
        mask_dim="${..pixel_decoder.mask_dim}",
        num_levels="${..pixel_decoder.total_num_feature_levels}",
        num_queries=300,
        num_heads=8,
        num_points=4,
        dim_feedforward=2048,
        num_layers=6,
        dn_num_queries=100,
        dn_noise_scale=0.4,
        initial_box="proposal",
    ),
    criterion=L(SetCriterion)(
        num_classes="${..transformer_decoder.num_classes}",
        matcher=L(HungarianMatcher)(
            cost_class=4.0, cost_box=5.0, cost_giou=2.0, cost_mask=5.0, cost_dice=5.0, num_points=12544
        ),
        weight_dict={"loss_class": 4.0, "loss_bbox": 5.0, "loss_giou": 2.0, "loss_mask": 5.0, "loss_dice": 5.0},
        num_points=12544,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
    ),
    # LGG uint8 channel statistics (pre-contrast, FLAIR, post-contrast).
    pixel_mean=list(LGG_PIXEL_MEAN),
    pixel_std=list(LGG_PIXEL_STD),
    size_divisibility=32,
    test_topk_per_image=100,
    box_source="head",
    matrix_nms_sigma=None,  # NMS-free, as in the paper
    split_components=False,  # one instance per query, as in the paper
    mask_threshold=DEFAULT_MASK_THRESHOLD,
    instance_on=True,
    semantic_on=True,
)
