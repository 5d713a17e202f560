"""The in-plane grid a model is run on, for slices of any matrix size and pixel spacing.

LGG slices are 256x256 and cover the whole head (about 0.8-0.95 mm pixels); scans come at
240x240 (1 mm, BraTS), 512x512 (0.45 mm) and more. Each axial slice is resampled so that its
larger physical side spans the model's grid (``size`` pixels, square pixels), or to a pixel
``spacing`` in mm; the model returns probabilities on the slice's original grid (it is given
the original height and width, exactly as in evaluation), so thresholding happens there.

The default grid is the model's evaluation grid: the ``T.Resize`` of the config's
``dataloader.test.mapper.augmentations`` (128 for the demo configs), else 256 (the LGG slices).
Resampling uses detectron2's ``ResizeTransform`` (bilinear), the transform of the evaluation
mapper, so ``tools/predict.py`` and ``tools/train_net.py --eval-only`` see the same pixels.
"""
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from detectron2.data import transforms as T
from omegaconf import DictConfig
from PIL import Image

from brainseg.utils.errors import ConfigError

__all__ = ["DEFAULT_GRID_SIZE", "InPlaneGrid", "model_grid", "resize_image"]

DEFAULT_GRID_SIZE = 256


@dataclass(frozen=True)
class InPlaneGrid:
    """A target grid: ``size`` pixels along the larger physical side, or ``spacing`` mm pixels.

    Attributes:
        size: pixels spanning the larger side of the slice (used when ``spacing`` is None).
        spacing: target pixel size in mm (wins over ``size``).
    """

    size: Optional[int] = DEFAULT_GRID_SIZE
    spacing: Optional[float] = None

    def __post_init__(self):
        if self.spacing is None and (self.size is None or self.size < 1):
            raise ConfigError(f"in-plane grid needs a size >= 1 or a spacing in mm; got size {self.size}")
        if self.spacing is not None and not self.spacing > 0:
            raise ConfigError(f"in-plane grid spacing must be > 0 mm; got {self.spacing}")

    def shape_for(self, height: int, width: int, pixel_spacing: Sequence[float] = (1.0, 1.0)) -> Tuple[int, int]:
        """The (rows, columns) a (height, width) slice with (row, column) ``pixel_spacing`` in mm
        is resampled to (square pixels)."""
        extent_h, extent_w = height * float(pixel_spacing[0]), width * float(pixel_spacing[1])
        pixel = self.spacing if self.spacing is not None else max(extent_h, extent_w) / self.size
        return max(1, int(round(extent_h / pixel))), max(1, int(round(extent_w / pixel)))


def model_grid(cfg: DictConfig, *, size: Optional[int] = None, spacing: Optional[float] = None) -> InPlaneGrid:
    """The grid to run the model of ``cfg`` on: ``spacing`` or ``size`` when given, else the
    config's evaluation resize, else :data:`DEFAULT_GRID_SIZE`."""
    if spacing is not None or size is not None:
        return InPlaneGrid(size=size, spacing=spacing)
    try:
        augmentations = cfg.dataloader.test.mapper.augmentations or []
    except (AttributeError, KeyError):
        augmentations = []
    for aug in augmentations:
        if isinstance(aug, T.Resize) and len(set(aug.shape)) == 1:
            return InPlaneGrid(size=int(aug.shape[0]))
    return InPlaneGrid()


def resize_image(image: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """(H, W, C) image resampled to ``shape`` (bilinear; uint8 through PIL, float through torch, as
    detectron2's ``ResizeTransform`` does in the evaluation mapper); unchanged at its own size."""
    height, width = image.shape[:2]
    if (height, width) == tuple(shape):
        return image
    return T.ResizeTransform(height, width, shape[0], shape[1], Image.BILINEAR).apply_image(image)
