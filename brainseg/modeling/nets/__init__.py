"""Segmentation nets, registered in :data:`NET_REGISTRY`."""

from .base import SegmentationNet
from .build import NET_REGISTRY, build_net
from .resunet import ResUNet
from .unet import UNet
from .unext import UNeXt

__all__ = ["NET_REGISTRY", "build_net", "SegmentationNet", "UNet", "ResUNet", "UNeXt"]
