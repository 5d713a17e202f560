"""Reading and validating LGG slices (3-channel MRI TIFFs and their binary masks).

Every function here raises :class:`LGGDataError` with a one-line message naming the offending
file, so that the dataset catalog, the COCO converter and the CLIs report bad input clearly.
"""
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..utils.errors import LGGDataError

__all__ = ["LGGDataError", "read_lgg_image", "read_lgg_mask"]

PathLike = Union[str, os.PathLike]


def _read_tiff(path: PathLike) -> np.ndarray:
    """Decode an image file fully into a numpy array, turning every decoder failure into
    an :class:`LGGDataError` that names the file.

    Truncated or garbled files fail to decode; the callers then check shape, dtype and values.
    Damage that leaves a well-formed file (bit flips inside uncompressed pixel data) cannot be
    told from real data by any reader."""
    path = Path(path)
    if not path.is_file():
        raise LGGDataError(f"file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            array = np.array(img)  # a writable copy (transforms write in place)
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise LGGDataError(f"cannot read image {path}: {e}") from None
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return array


def read_lgg_image(path: PathLike) -> np.ndarray:
    """Read an LGG slice as an (H, W, 3) uint8 array, channels in file order
    (pre-contrast, FLAIR, post-contrast).

    Args:
        path: the slice's TIFF (or PNG) file.

    Returns:
        np.ndarray: (H, W, 3) uint8.

    Raises:
        LGGDataError: unreadable file, grayscale image, wrong channel count or dtype.
    """
    image = _read_tiff(path)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        raise LGGDataError(f"image {path} is grayscale; expected 3 channels (pre-contrast, FLAIR, post-contrast)")
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise LGGDataError(f"image {path} has shape {image.shape}; expected (H, W, 3)")
    if image.dtype != np.uint8:
        raise LGGDataError(f"image {path} has dtype {image.dtype}; expected uint8")
    return np.ascontiguousarray(image[:, :, :3])


def read_lgg_mask(path: PathLike, expected_shape: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Read a tumour mask and remap it to {0, 1}.

    Masks on disk are 0/255 (Kaggle) or 0/1; 255 is detectron2's ignore label, so it is never
    passed on.

    Args:
        path: the ``*_mask.tif`` file.
        expected_shape: (H, W) of the matching image; a different mask size is an error.

    Returns:
        np.ndarray: (H, W) uint8 with values in {0, 1}.

    Raises:
        LGGDataError: unreadable file, more than one channel, values other than {0,255}/{0,1},
            or a size that does not match the image.
    """
    mask = _read_tiff(path)
    if mask.ndim == 3:
        channels_equal = all(np.array_equal(mask[:, :, 0], mask[:, :, c]) for c in range(1, mask.shape[2]))
        if not channels_equal:
            raise LGGDataError(f"mask {path} has {mask.shape[2]} different channels; expected a single-channel mask")
        mask = mask[:, :, 0]
    if mask.ndim != 2:
        raise LGGDataError(f"mask {path} has shape {mask.shape}; expected (H, W)")
    if expected_shape is not None and tuple(mask.shape) != tuple(expected_shape):
        raise LGGDataError(f"mask {path} is {mask.shape[0]}x{mask.shape[1]} but its image is "
                           f"{expected_shape[0]}x{expected_shape[1]}")
    if mask.dtype != np.uint8:
        raise LGGDataError(f"mask {path} has dtype {mask.dtype}; expected uint8 with values 0/255 or 0/1")
    # Binary check by a 256-bin histogram: one pass, no per-pixel Python.
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    if not (set(present.tolist()) <= {0, 255} or set(present.tolist()) <= {0, 1}):
        shown = ", ".join(str(v) for v in present[:6]) + (", ..." if len(present) > 6 else "")
        raise LGGDataError(f"mask {path} has values {{{shown}}}; expected {{0, 255}} or {{0, 1}}")
    return (mask > 0).astype(np.uint8)
