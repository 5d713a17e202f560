"""Ensembles of trained models: the mean of their tumour probabilities.

The K models of a K-fold cross-validation (``tools/compare.py --test-dataset``), or any weights
of one architecture (``tools/predict.py --weights a.pth b.pth``), predict each slice; the
ensemble's probability is the mean of theirs (not of their logits), thresholded like a single
model's (:func:`brainseg.modeling.postprocessing.tumour_mask`).

Example::

    predictors = [SlicePredictor(build_inference_model(cfg_file, w)[0]) for w in weights]
    probs = average_probabilities(predictors, images, [(256, 256)] * len(images))
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .predictor import SlicePredictor

__all__ = ["average_probabilities"]


def average_probabilities(
    predictors: Sequence[SlicePredictor],
    images: Sequence[np.ndarray],
    output_sizes: Optional[Sequence[Tuple[int, int]]] = None,
) -> List[torch.Tensor]:
    """The mean tumour probability of several predictors on a batch of slices.

    Args:
        predictors: one :class:`SlicePredictor` per model (each with its own TTA and precision).
        images: (H, W, 3) slices as :class:`SlicePredictor` takes them.
        output_sizes: (height, width) of each probability map; default: each image's own size.

    Returns:
        one float (H, W) probability tensor on the CPU per image.

    Raises:
        ValueError: no predictor.
    """
    if not predictors:
        raise ValueError("an ensemble needs at least one predictor")
    total = predictors[0](images, output_sizes)
    for predictor in predictors[1:]:
        total = [a + b for a, b in zip(total, predictor(images, output_sizes))]
    return [p / len(predictors) for p in total]
