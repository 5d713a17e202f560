"""brainseg models: the semantic meta-architecture, its nets and losses.

Importing this package registers :class:`BrainSegSemantic` in detectron2's
``META_ARCH_REGISTRY``; configs build the nets with LazyCall.
"""

from .losses import BCEDiceLoss, DiceLoss, FocalLoss
from .meta_arch import BrainSegSemantic
from .nets import ResUNet, UNet, UNeXt
from .postprocessing import probabilities_to_instances, probabilities_to_sem_seg

__all__ = [
    "BrainSegSemantic",
    "BCEDiceLoss",
    "DiceLoss",
    "FocalLoss",
    "UNet",
    "ResUNet",
    "UNeXt",
    "probabilities_to_instances",
    "probabilities_to_sem_seg",
]
