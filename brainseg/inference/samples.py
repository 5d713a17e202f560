"""Sample slices to check exported models on: real (or demo) LGG slices when available,
otherwise generated LGG-like slices (a head with a bright FLAIR lesion)."""
import logging
import os
from typing import Optional, Tuple, Union

import numpy as np

from brainseg.data import LGGDataError, read_lgg_image

from .inputs import resolve_inputs

__all__ = ["synthetic_slices", "load_sample_slices"]

logger = logging.getLogger(__name__)


def synthetic_slices(count: int, height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """LGG-like uint8 slices: a dark background, an elliptic head with smooth tissue texture in
    three contrasts (pre-contrast, FLAIR, post-contrast), a lesion bright in FLAIR, and noise.

    Returns:
        np.ndarray: (count, 3, height, width) uint8.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    shape = (count, 1, 1, 1)
    radii = rng.uniform(0.6, 0.9, (2, *shape))
    head = (yy / radii[0]) ** 2 + (xx / radii[1]) ** 2 <= 1.0
    frequencies = rng.uniform(1.0, 4.0, (2, *shape))
    phases = rng.uniform(0, 2 * np.pi, (2, *shape))
    texture = np.sin(frequencies[0] * np.pi * yy + phases[0]) * np.cos(frequencies[1] * np.pi * xx + phases[1])
    base = rng.uniform([70, 90, 80], [110, 130, 120], (count, 3)).reshape(count, 3, 1, 1)
    center = rng.uniform(-0.3, 0.3, (2, *shape))
    lesion = np.exp(-((yy - center[0]) ** 2 + (xx - center[1]) ** 2) / (2 * rng.uniform(0.05, 0.15, shape) ** 2))
    contrast = np.array([-30.0, 110.0, 20.0]).reshape(1, 3, 1, 1)  # lesion: dark T1, bright FLAIR
    image = head * (base + 25 * texture + contrast * lesion) + rng.normal(0, 4, (count, 3, height, width))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def load_sample_slices(
    source: Optional[Union[str, os.PathLike]],
    height: int,
    width: int,
    count: int = 3,
    *,
    seed: int = 0,
) -> Tuple[np.ndarray, str]:
    """Up to ``count`` slices of size ``height`` x ``width`` from ``source`` (any PATH that
    :func:`brainseg.inference.resolve_inputs` accepts), topped up with :func:`synthetic_slices`.

    Args:
        source: an image, folder or LGG tree; None for generated slices only.
        height, width: the slice size wanted; slices of other sizes are skipped.
        count: number of slices.
        seed: seed of the generated slices.

    Returns:
        ((count, 3, height, width) uint8, a description of where they came from).

    Raises:
        LGGDataError: ``source`` does not exist or holds no images.
    """
    found = []
    if source is not None:
        for item in resolve_inputs(source):
            if len(found) == count:
                break
            try:
                image = read_lgg_image(item.image_path)
            except LGGDataError as e:
                logger.warning(f"skipping sample {e}")
                continue
            if image.shape[:2] == (height, width):
                found.append(image.transpose(2, 0, 1))
    missing = count - len(found)
    parts = [f"{len(found)} slices from {source}"] if found else []
    if missing:
        found.extend(synthetic_slices(missing, height, width, seed=seed))
        parts.append(f"{missing} generated LGG-like slices")
    return np.stack(found), " + ".join(parts)
