"""Segmentation nets: modules mapping a normalised image batch (B, C, H, W) to per-pixel logits
(B, K, H, W); configs build them with LazyCall, e.g. ``L(UNeXt)(out_channels=1)``."""

from .base import SegmentationNet
from .resunet import ResUNet
from .unet import UNet
from .unext import UNeXt

__all__ = ["SegmentationNet", "UNet", "ResUNet", "UNeXt"]
