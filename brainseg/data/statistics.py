"""Per-channel pixel statistics of the datasets (uint8 slices, channels pre-contrast, FLAIR,
post-contrast): one place per dataset, which the model configs import, and the function that
measures them.

* **LGG** (Kaggle ``kaggle_3m``): most of a slice is black background, so the mean is low. The
  values came with the project's first configs and could not be re-measured here (the real data
  cannot be downloaded on the development machine): measure them on your copy with
  ``pixel_statistics(DatasetCatalog.get("lgg_train"))``. The Mask DINO configs used 23/34 and
  the semantic ones 24/36; 23/34 was kept, so that the recorded Mask DINO demo runs stay valid
  (no recorded run used the semantic nets' real-LGG values).
* **LGG demo** (``datasets/prepare_lgg_demo.py``, seed 0, 24 patients): the values the demo
  configs were tuned and recorded with. Today's generator gives, with
  ``pixel_statistics(DatasetCatalog.get("lgg_demo_train"), every=5)``, mean (57.2, 45.1, 63.6)
  and std (69.0, 52.5, 73.5): within 1.4 intensity units, so the recorded values are kept.
"""
from typing import Iterable, Tuple

import numpy as np

from .io import read_lgg_image

__all__ = ["LGG_PIXEL_MEAN", "LGG_PIXEL_STD", "LGG_DEMO_PIXEL_MEAN", "LGG_DEMO_PIXEL_STD", "pixel_statistics"]

LGG_PIXEL_MEAN = (23.0, 23.0, 23.0)
LGG_PIXEL_STD = (34.0, 34.0, 34.0)
LGG_DEMO_PIXEL_MEAN = (56.8, 44.7, 62.2)
LGG_DEMO_PIXEL_STD = (70.1, 53.0, 73.5)


def pixel_statistics(records: Iterable[dict], *, every: int = 1) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and standard deviation over all pixels of every ``every``-th record.

    Args:
        records: dataset dicts with ``file_name`` (e.g. ``DatasetCatalog.get("lgg_train")``).
        every: use records 0, every, 2 * every, ...

    Returns:
        (mean, std), each a tuple of 3 floats rounded to 0.1 (intensity units 0..255).
    """
    total = np.zeros(3)
    squares = np.zeros(3)
    count = 0
    for record in list(records)[::every]:
        image = read_lgg_image(record["file_name"]).reshape(-1, 3).astype(np.float64)
        total += image.sum(0)
        squares += (image**2).sum(0)
        count += len(image)
    if count == 0:
        raise ValueError("pixel_statistics needs at least one record")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return tuple(round(float(m), 1) for m in mean), tuple(round(float(s), 1) for s in std)
