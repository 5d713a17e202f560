"""Per-volume intensity normalisation: the one function training, evaluation, predict and export use.

MR intensities have no fixed unit: each scan (and each vendor, sequence and 12/16-bit export)
has its own scale. Per patient and per channel, the volume's own foreground percentiles are
mapped to a fixed range (:func:`volume_intensity_range`, :func:`normalize_intensities`):

    out = max(0, (x - p_low) / (p_high - p_low)) * 255

with ``p_low``/``p_high`` the :data:`FOREGROUND_PERCENTILES` of the voxels above the volume's
minimum. The result is on the scale of the Kaggle LGG slices (background 0, brain up to about
255; brighter voxels, e.g. a hyperintense tumour, keep values above 255), so models and their
``pixel_mean``/``pixel_std`` see the same scale whatever the scanner.

The foreground is "above the minimum", not "above 0": after a positive gain and offset
(``3 * a + 50``) the background is no longer 0, but it is still the minimum, the same voxels are
foreground and the percentiles move with the intensities, so the output does not change
(up to float rounding). Buda et al. normalised the LGG volumes with percentiles too; the
choice of percentile mapping over nnU-Net's foreground z-score and its effect on the demo Dice
are recorded in BENCHMARKS.md.

:data:`INTENSITY_NORMALIZATIONS`: ``"none"`` keeps the uint8 intensities of a TIFF tree (as
before), ``"volume"`` applies the mapping per patient. NIfTI volumes are always normalised
(their raw units mean nothing to a model).
"""
import functools
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .io import read_lgg_image

__all__ = ["INTENSITY_NORMALIZATIONS", "FOREGROUND_PERCENTILES", "NORMALIZED_HIGH", "check_normalization",
           "config_normalization",
           "volume_intensity_range", "normalize_intensities", "patient_folder_intensity_range"]

INTENSITY_NORMALIZATIONS = ("none", "volume")
FOREGROUND_PERCENTILES = (0.5, 99.5)
NORMALIZED_HIGH = 255.0


def check_normalization(name: Optional[str]) -> str:
    """``name`` if it is one of :data:`INTENSITY_NORMALIZATIONS` (None means "none").

    Raises:
        ValueError: any other value.
    """
    name = "none" if name is None else name
    if name not in INTENSITY_NORMALIZATIONS:
        raise ValueError(f"intensity_normalization must be one of {INTENSITY_NORMALIZATIONS}; got {name!r}")
    return name


def config_normalization(cfg) -> str:
    """The intensity normalisation a LazyConfig's models were trained and evaluated with: its
    ``dataloader.test.mapper.intensity_normalization`` ("none" when absent)."""
    try:
        name = cfg.dataloader.test.mapper.get("intensity_normalization", "none")
    except (AttributeError, KeyError):
        name = "none"
    return check_normalization(name)


def volume_intensity_range(volume: np.ndarray) -> np.ndarray:
    """Per-channel foreground percentiles of one patient's volume.

    Args:
        volume: (..., C) intensities of every voxel of the patient (all slices), any real dtype.

    Returns:
        (C, 2) float64 ``[p_low, p_high]`` per channel, over the voxels above the channel's
        minimum (all voxels when none is); ``p_high > p_low`` always (a constant channel gets
        ``p_high = p_low + 1``).
    """
    volume = np.asarray(volume)
    channels = volume.reshape(-1, volume.shape[-1])
    ranges = np.empty((channels.shape[1], 2), dtype=np.float64)
    for c in range(channels.shape[1]):
        values = channels[:, c]
        foreground = values[values > values.min()]
        low, high = np.percentile(foreground if foreground.size else values, FOREGROUND_PERCENTILES)
        ranges[c] = (low, high if high > low else low + 1.0)
    return ranges


def normalize_intensities(image: np.ndarray, intensity_range: Union[np.ndarray, Sequence]) -> np.ndarray:
    """Map intensities with their volume's range (see the module docstring).

    Args:
        image: (..., C) intensities (a slice or a whole volume).
        intensity_range: (C, 2) from :func:`volume_intensity_range` of the image's volume.

    Returns:
        float32 array of the image's shape, >= 0.
    """
    ranges = np.asarray(intensity_range, dtype=np.float64)
    low, high = ranges[:, 0], ranges[:, 1]
    scaled = (np.asarray(image, dtype=np.float64) - low) * (NORMALIZED_HIGH / (high - low))
    return np.maximum(scaled, 0.0).astype(np.float32)


@functools.lru_cache(maxsize=64)
def patient_folder_intensity_range(folder: Union[str, Path]) -> np.ndarray:
    """:func:`volume_intensity_range` of an LGG patient folder (every ``<patient>_<k>.tif`` in it;
    cached per process).

    Raises:
        LGGDataError: an unreadable slice (it names the file).
    """
    folder = Path(folder)
    images = sorted(p for p in folder.iterdir()
                    if p.suffix.lower() in (".tif", ".tiff", ".png") and not p.stem.endswith(("_mask", "_overlay")))
    volume = np.stack([read_lgg_image(p) for p in images])
    ranges = volume_intensity_range(volume)
    ranges.flags.writeable = False
    return ranges
