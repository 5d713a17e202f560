"""brainseg models: the semantic meta-architecture, its nets and losses.

Importing this package registers :class:`BrainSegSemantic` in detectron2's
``META_ARCH_REGISTRY`` and the nets in :data:`brainseg.modeling.nets.NET_REGISTRY`.
"""

from .losses import BCEDiceLoss, DiceLoss, FocalLoss
from .meta_arch import BrainSegSemantic
from .nets import NET_REGISTRY, ResUNet, UNet, UNeXt, build_net
from .postprocessing import probabilities_to_instances, probabilities_to_sem_seg

__all__ = [
    "BrainSegSemantic",
    "BCEDiceLoss",
    "DiceLoss",
    "FocalLoss",
    "NET_REGISTRY",
    "build_net",
    "UNet",
    "ResUNet",
    "UNeXt",
    "probabilities_to_instances",
    "probabilities_to_sem_seg",
]
