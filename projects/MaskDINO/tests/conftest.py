"""Shared helpers for the Mask DINO project tests: a tiny model built from the project's own
model config, and synthetic detectron2 inputs."""
import os
import sys

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec
from detectron2.structures import BitMasks, Instances

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_DIR = os.path.dirname(os.path.dirname(PROJECT_DIR))
if PROJECT_DIR not in sys.path:
    sys.path.insert(0, PROJECT_DIR)

IMAGE_SIZE = 64


def tiny_model_config():
    """The R50 model config shrunk to a few thousand parameters' worth of compute."""
    cfg = LazyConfig.load(os.path.join(PROJECT_DIR, "configs", "common", "maskdino_r50.py"))
    model = cfg.model
    model.backbone.update(depth=18, width=8)
    model.pixel_decoder.input_shape = {f"res{i}": ShapeSpec(channels=8 * 2 ** (i - 2), stride=2**i) for i in range(2, 6)}
    model.pixel_decoder.update(
        conv_dim=32, mask_dim=32, num_heads=2, num_points=2, dim_feedforward=64, num_encoder_layers=1,
        total_num_feature_levels=3,
    )
    model.transformer_decoder.update(num_queries=8, num_heads=2, num_points=2, dim_feedforward=64, num_layers=2, dn_num_queries=6)
    model.criterion.matcher.num_points = 256
    model.criterion.num_points = 256
    model.pixel_mean = [20.0, 20.0, 20.0]
    model.pixel_std = [40.0, 40.0, 40.0]
    return model


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return instantiate(tiny_model_config())


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
