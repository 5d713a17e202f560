"""Helpers of the Mask DINO project tests (a module name of its own: brainseg's tests have a
``conftest`` too): a tiny model built from the project's own model config, and synthetic
detectron2 inputs."""

import os

import torch
from detectron2.config import LazyConfig
from detectron2.layers import ShapeSpec
from detectron2.structures import BitMasks, Instances

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

IMAGE_SIZE = 64


def tiny_model_config():
    """The R50 model config shrunk to a tiny width (a few hundred thousand parameters)."""
    cfg = LazyConfig.load(os.path.join(PROJECT_DIR, "configs", "common", "maskdino_r50.py"))
    model = cfg.model
    model.backbone.update(depth=18, width=8)
    model.pixel_decoder.input_shape = {
        f"res{i}": ShapeSpec(channels=8 * 2 ** (i - 2), stride=2**i) for i in range(2, 6)
    }
    model.pixel_decoder.update(
        conv_dim=32,
        mask_dim=32,
        num_heads=2,
        num_points=2,
        dim_feedforward=64,
        num_encoder_layers=1,
        total_num_feature_levels=3,
    )
    model.transformer_decoder.update(
        num_queries=8, num_heads=2, num_points=2, dim_feedforward=64, num_layers=2, dn_num_queries=6
    )
    model.criterion.matcher.num_points = 256
    model.criterion.num_points = 256
    model.pixel_mean = [20.0, 20.0, 20.0]
    model.pixel_std = [40.0, 40.0, 40.0]
    return model


def blob_masks(boxes_yx, size=IMAGE_SIZE):
    """Boolean (N, size, size) rectangles from (y0, y1, x0, x1) tuples."""
    masks = torch.zeros(len(boxes_yx), size, size, dtype=torch.bool)
    for k, (y0, y1, x0, x1) in enumerate(boxes_yx):
        masks[k, y0:y1, x0:x1] = True
    return masks


def make_input(boxes_yx, *, size=IMAGE_SIZE, seed=0):
    """A mapper-style input: dark noisy image with bright rectangles at the objects."""
    generator = torch.Generator().manual_seed(seed)
    masks = blob_masks(boxes_yx, size)
    image = torch.randint(0, 30, (3, size, size), generator=generator, dtype=torch.uint8)
    image[:, masks.any(0)] = 200
    instances = Instances((size, size))
    instances.gt_masks = BitMasks(masks)
    instances.gt_boxes = BitMasks(masks).get_bounding_boxes()
    instances.gt_classes = torch.zeros(len(masks), dtype=torch.int64)
    return {"image": image, "instances": instances, "sem_seg": masks.any(0).long(), "height": size, "width": size}
