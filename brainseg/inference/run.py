"""Segment a list of slices batch by batch and write masks, overlays and the volume summary.

For each input ``<stem>.tif`` (at ``<rel>/<stem>.tif`` under the input PATH) it writes
``<out>/<rel>/<stem>_mask.tif`` (uint8 0/255, the dataset's own convention) and
``<out>/<rel>/<stem>_overlay.png`` (prediction contour red, ground-truth contour green when a
``<stem>_mask.tif`` sits next to the input), then ``<out>/summary.{csv,json}``.

Streaming: one batch of images is read, predicted and written before the next is read, so a
whole ``kaggle_3m`` tree (3,929 slices) runs in the memory of one batch. Every file is written
atomically (temporary file + rename).
"""
import io
import logging
import os
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from brainseg.data import LGGDataError, normalize_intensities, read_lgg_image, read_lgg_mask
from brainseg.data.normalization import check_normalization, patient_folder_intensity_range
from brainseg.modeling.postprocessing import DEFAULT_MASK_THRESHOLD, tumour_mask
from brainseg.utils.io import atomic_write
from brainseg.visualization.overlay import save_overlay_png

from .grid import InPlaneGrid, resize_image
from .inputs import SliceInput
from .summary import VolumeSummary

__all__ = ["encode_mask_tiff", "encode_probability_tiff", "check_output_folder", "predict_to_folder"]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def encode_mask_tiff(mask: np.ndarray) -> bytes:
    """A binary (H, W) mask as an uint8 0/255 single-channel TIFF file's bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(buffer, format="TIFF")
    return buffer.getvalue()


def check_output_folder(input_path: PathLike, out_dir: PathLike) -> None:
    """Refuse an output folder where predicted masks would replace the input's ground truth.

    Raises:
        LGGDataError: ``out_dir`` is the input folder (or the folder of an input file).
    """
    input_path = Path(input_path).expanduser().resolve()
    base = input_path.parent if input_path.is_file() else input_path
    if Path(out_dir).expanduser().resolve() == base:
        raise LGGDataError(f"output folder {out_dir} is the input folder: predicted *_mask.tif files would "
                           "overwrite the ground truth; choose another --output")


def _batches(items: Sequence[SliceInput], size: int) -> Iterator[Sequence[SliceInput]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def encode_probability_tiff(probabilities: np.ndarray) -> bytes:
    """(H, W) tumour probabilities as a float32 single-channel TIFF file's bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(probabilities, dtype=np.float32), mode="F").save(buffer, format="TIFF")
    return buffer.getvalue()


def _read_batch(batch: Sequence[SliceInput], summary: VolumeSummary,
                normalization: str) -> List[Tuple[SliceInput, np.ndarray]]:
    """Read (and normalise) the images of a batch; unreadable ones are recorded as failures and skipped."""
    loaded = []
    for item in batch:
        try:
            image = read_lgg_image(item.image_path)
            if normalization == "volume":
                image = normalize_intensities(image, patient_folder_intensity_range(str(item.image_path.parent)))
            loaded.append((item, image))
        except LGGDataError as e:
            logger.error(str(e))
            summary.add_failure(item.image_path, item.patient_id, str(e))
    return loaded


def _read_truth(item: SliceInput, shape: Tuple[int, int], summary: VolumeSummary) -> Optional[np.ndarray]:
    """The ground truth next to the input, or None (a bad truth file is recorded as a failure)."""
    if item.truth_path is None:
        return None
    try:
        return read_lgg_mask(item.truth_path, expected_shape=shape).astype(bool)
    except LGGDataError as e:
        logger.error(str(e))
        summary.add_failure(item.truth_path, item.patient_id, str(e))
        return None


def predict_to_folder(
    predictor: Callable[..., List[torch.Tensor]],
    slices: Sequence[SliceInput],
    out_dir: PathLike,
    summary: VolumeSummary,
    *,
    batch_size: int = 8,
    threshold: float = DEFAULT_MASK_THRESHOLD,
    normalization: str = "none",
    grid: InPlaneGrid = InPlaneGrid(),
    save_probabilities: bool = False,
    overlays: bool = True,
    progress: bool = True,
) -> VolumeSummary:
    """Predict every slice and write its outputs, then the summary files.

    Args:
        predictor: maps a batch of (h, w, 3) images and their ``output_sizes`` to (H, W) tumour
            probabilities, e.g. a :class:`~brainseg.inference.SlicePredictor`.
        slices: from :func:`brainseg.inference.resolve_inputs`.
        out_dir: output folder (mirrors the input layout).
        summary: collects areas and failures (created with the spacing and run metadata).
        batch_size: slices per forward pass.
        threshold: the model's ``mask_threshold`` (see :func:`brainseg.modeling.postprocessing.tumour_mask`).
        normalization: the config's ``intensity_normalization`` ("none" or "volume": per patient
            folder, see :mod:`brainseg.data.normalization`).
        grid: the model's in-plane grid (slices are resampled to it; probabilities come back on
            the slice's own grid).
        save_probabilities: also write ``<stem>_prob.tif`` (float32 probabilities).
        overlays: also write ``<stem>_overlay.png``.
        progress: show a tqdm progress bar.

    Returns:
        ``summary``, filled; ``summary.failures`` lists the inputs that could not be used.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1; got {batch_size}")
    tumour_mask(torch.zeros(1), threshold)  # a bad threshold fails before anything is written
    out_dir = Path(out_dir)
    with tqdm(total=len(slices), unit="slice", desc="predict", disable=not progress) as bar:
        for batch in _batches(slices, batch_size):
            loaded = _read_batch(batch, summary, check_normalization(normalization))
            sizes = [image.shape[:2] for _, image in loaded]
            probabilities = predictor([resize_image(image, grid.shape_for(*size)) for (_, image), size in
                                       zip(loaded, sizes)], output_sizes=sizes)
            for (item, image), probs in zip(loaded, probabilities):
                mask = tumour_mask(probs, threshold).numpy()
                target = out_dir / item.output_stem
                atomic_write(target.with_name(f"{target.name}_mask.tif"), encode_mask_tiff(mask))
                if save_probabilities:
                    atomic_write(target.with_name(f"{target.name}_prob.tif"), encode_probability_tiff(probs.numpy()))
                if overlays:
                    truth = _read_truth(item, mask.shape, summary)
                    save_overlay_png(target.with_name(f"{target.name}_overlay.png"),
                                     np.clip(image, 0, 255).astype(np.uint8), mask, truth, label=item.name)
                summary.add_slice(item.patient_id, item.name, item.slice_index, int(mask.sum()))
            bar.update(len(batch))
    summary.write(out_dir)
    return summary
