"""Tiny LGG trees written on the fly in the kaggle_3m layout, their registration, and tiny
training settings, and a tiny UNet with hand-set weights, for tests."""
import contextlib
from pathlib import Path
from typing import Dict, Iterator, List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from brainseg.data import register_lgg_dataset

import numpy as np
import torch
from PIL import Image


def write_lgg_tree(
    root: Path,
    *,
    patients: Sequence[str] = ("TCGA_CS_4941_19960909", "TCGA_DU_5851_19950428", "TCGA_FG_6690_20020226"),
    num_slices: int = 12,
    size: int = 32,
    seed: int = 0,
) -> Dict[str, np.ndarray]:
    """Write ``root/kaggle_3m/<patient>/<patient>_<k>.tif`` (+ ``_mask.tif``), k = 1..num_slices.

    Images are random uint8 RGB; masks are 0/255 with one or two blobs on about half the slices.

    Returns:
        dict: image file path -> the (H, W) 0/1 mask written for it.
    """
    rng = np.random.default_rng(seed)
    written = {}
    yy, xx = np.mgrid[:size, :size]
    for patient in patients:
        folder = root / "kaggle_3m" / patient
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(1, num_slices + 1):
            image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            mask = np.zeros((size, size), np.uint8)
            for _ in range(int(rng.integers(0, 3)) if k % 2 else 0):
                cy, cx, r = rng.integers(4, size - 4), rng.integers(4, size - 4), rng.integers(2, 5)
                mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
            Image.fromarray(image).save(folder / f"{patient}_{k}.tif")
            Image.fromarray(mask * 255).save(folder / f"{patient}_{k}_mask.tif")
            written[str(folder / f"{patient}_{k}.tif")] = mask
    return written


def tiny_unext_overrides(dataset_prefix: str) -> List[str]:
    """train_net overrides for a few-second UNeXt run on ``<prefix>_{train,val,test}``."""
    return [
        "model.net.conv_channels=[4,8,16]", "model.net.token_channels=[16,24]",
        f"dataloader.train.dataset.names={dataset_prefix}_train", f"dataloader.val.dataset.names={dataset_prefix}_val",
        f"dataloader.test.dataset.names={dataset_prefix}_test", "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=0", "dataloader.val.num_workers=0", "dataloader.test.num_workers=0",
        "train.log_period=1",
    ]


@contextlib.contextmanager
def registered_lgg_splits(root: Path, prefix: str, splits: Sequence[str] = ("train", "val", "test"),
                          **split_options) -> Iterator[None]:
    """Register ``<prefix>_<split>`` (and its ``_coco`` twin) for the tree at ``root`` while the
    block runs, then remove them from detectron2's catalogs."""
    for split in splits:
        register_lgg_dataset(f"{prefix}_{split}", root, split, **split_options)
    try:
        yield
    finally:
        for split in splits:
            for name in (f"{prefix}_{split}", f"{prefix}_{split}_coco"):
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)


# Hand-set weights of the tiny UNet (base_channels=4, depth=1): the FLAIR channel, normalised
# by the config's pixel statistics, passes through channel 0 of every block on the centre tap of
# each 3x3 kernel; everything else is zero. Logit = GAIN * relu(flair_norm - CUT) - OFFSET.
# Tumour pixels (FLAIR 230) get a logit of about +16, background (FLAIR < 80) exactly -5: no
# optimisation is involved, so the masks are exact on every CPU and kernel path.
CUT, GAIN, OFFSET = 3.6, 10.0, 5.0


def perfect_tiny_unet(model: torch.nn.Module) -> torch.nn.Module:
    """Set ``model`` (the config's UNet with ``TINY``) to the hand-made weights above."""
    net = model.net
    with torch.no_grad():
        for tensor in net.state_dict().values():
            tensor.zero_()
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.fill_(1.0)
                module.weight.fill_(1.0)
        flair = 1  # image channels: pre-contrast, FLAIR, post-contrast
        first, second = net.encoders[0][0], net.encoders[0][2]
        first.conv.weight[0, flair, 1, 1] = 1.0
        first.norm.bias[0] = -CUT
        second.conv.weight[0, 0, 1, 1] = 1.0
        for conv_bn in (net.decoders[0].conv[0], net.decoders[0].conv[2]):
            conv_bn.conv.weight[0, 0, 1, 1] = 1.0  # channel 0 of the skip (concatenated first)
        net.head.weight[0, 0] = GAIN
        net.head.bias[0] = -OFFSET
    return model
