"""The semantic meta-architecture shared by the LGG nets (LazyConfig); a model config sets
``model.net``. Pixel statistics are those of LGG slices (uint8, channels pre-contrast,
FLAIR, post-contrast), from :mod:`brainseg.data.statistics`."""
from detectron2.config import LazyCall as L

from brainseg.data.statistics import LGG_PIXEL_MEAN, LGG_PIXEL_STD
from brainseg.modeling import BCEDiceLoss, BrainSegSemantic
from brainseg.modeling.postprocessing import DEFAULT_MASK_THRESHOLD

model = L(BrainSegSemantic)(
    net=None,
    loss=L(BCEDiceLoss)(),
    pixel_mean=list(LGG_PIXEL_MEAN),
    pixel_std=list(LGG_PIXEL_STD),
    mask_threshold=DEFAULT_MASK_THRESHOLD,
    channels_last=True,
    compile_inference=False,
)
