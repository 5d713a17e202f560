"""Mask DINO for brainseg (a detectron2 project). Importing this package registers the
``MaskDINO`` meta-architecture in detectron2's ``META_ARCH_REGISTRY``."""

from .backbone import build_resnet
from .criterion import SetCriterion
from .matcher import HungarianMatcher
from .meta_arch import MaskDINO
from .pixel_decoder import MaskDINOPixelDecoder
from .transformer_decoder import MaskDINODecoder

__all__ = [
    "build_resnet",
    "HungarianMatcher",
    "MaskDINO",
    "MaskDINODecoder",
    "MaskDINOPixelDecoder",
    "SetCriterion",
]
