"""The semantic meta-architecture shared by the LGG nets (LazyConfig); a model config sets
``model.net``. Pixel statistics are those of LGG slices (uint8, channels pre-contrast,
FLAIR, post-contrast): most of a slice is black background."""
from detectron2.config import LazyCall as L

from brainseg.modeling import BCEDiceLoss, BrainSegSemantic
from brainseg.modeling.postprocessing import DEFAULT_MASK_THRESHOLD

model = L(BrainSegSemantic)(
    net=None,
    loss=L(BCEDiceLoss)(),
    pixel_mean=[24.0, 24.0, 24.0],
    pixel_std=[36.0, 36.0, 36.0],
    mask_threshold=DEFAULT_MASK_THRESHOLD,
    channels_last=True,
    compile_inference=False,
)
