"""Segment NIfTI cases (one folder per patient, one file per sequence) and write NIfTI masks.

Per case ``<case>`` it writes into the output folder:

* ``<case>_mask.nii.gz``: uint8 0/1 on the input's grid (its array order, shape, affine and
  sform/qform codes), so it opens aligned over the scan in 3D Slicer or ITK-SNAP;
* ``<case>_prob.nii.gz`` with ``save_probabilities``: float32 tumour probabilities, same grid;
* ``<case>_overlay.png``: the FLAIR slice with the largest predicted tumour, prediction contour
  red (ground truth green when the case has a segmentation);
* a row of ``summary.{csv,json}`` with the tumour volume in mm^3 from the header's voxel size.

Each case is read (:func:`brainseg.data.load_case`), normalised per volume
(:mod:`brainseg.data.normalization`), cut into axial slices, resampled to the model's grid
(:mod:`brainseg.inference.grid`), predicted batch by batch with the probabilities returned on the
original grid, thresholded and written back. A case that fails (corrupt file, disagreeing
sequences, no FLAIR, ...) is reported in one line and skipped; the other cases go on.
"""
import logging
import os
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

from brainseg.data import VolumeCase, find_case, load_case, normalize_intensities, save_like
from brainseg.data.normalization import volume_intensity_range
from brainseg.modeling.postprocessing import DEFAULT_MASK_THRESHOLD, tumour_mask
from brainseg.utils.errors import UserError
from brainseg.visualization.overlay import save_overlay_png

from .grid import InPlaneGrid, resize_image
from .summary import VolumeSummary

__all__ = ["case_probabilities", "predict_cases"]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def case_probabilities(
    predictor: Callable[..., List[torch.Tensor]],
    image: np.ndarray,
    pixel_spacing: Tuple[float, float],
    grid: InPlaneGrid,
    *,
    batch_size: int = 8,
) -> np.ndarray:
    """Tumour probabilities of every axial slice of a case.

    Args:
        predictor: a :class:`~brainseg.inference.SlicePredictor` (called with the resampled slices
            and ``output_sizes``, the original slice size).
        image: (K, H, W, 3) slices, normalised per volume.
        pixel_spacing: (row, column) pixel size in mm.
        grid: the model's in-plane grid.
        batch_size: slices per forward pass.

    Returns:
        (K, H, W) float32 probabilities on the case's slice grid.
    """
    depth, height, width = image.shape[:3]
    shape = grid.shape_for(height, width, pixel_spacing)
    probabilities = np.empty((depth, height, width), dtype=np.float32)
    for start in range(0, depth, batch_size):
        batch = [resize_image(s, shape) for s in image[start:start + batch_size]]
        outputs = predictor(batch, output_sizes=[(height, width)] * len(batch))
        probabilities[start:start + len(batch)] = torch.stack(outputs).numpy()
    return probabilities


def _predict_case(predictor, case: VolumeCase, out_dir: Path, summary: VolumeSummary, written: List[Path], *,
                  grid: InPlaneGrid, threshold: float, batch_size: int, save_probabilities: bool,
                  overlays: bool) -> None:
    loaded = load_case(case, with_truth=overlays)
    image = normalize_intensities(loaded.image, volume_intensity_range(loaded.image))
    probabilities = case_probabilities(predictor, image, loaded.spacing[1:], grid, batch_size=batch_size)
    mask = tumour_mask(torch.from_numpy(probabilities), threshold).numpy()
    written.append(save_like(out_dir / f"{case.case_id}_mask.nii.gz", mask, loaded.reference, np.uint8))
    if save_probabilities:
        written.append(save_like(out_dir / f"{case.case_id}_prob.nii.gz", probabilities, loaded.reference,
                                 np.float32))
    areas = mask.reshape(len(mask), -1).sum(1)
    if overlays:
        k = int(areas.argmax())
        truth = None if loaded.truth is None else loaded.truth[k]
        path = out_dir / f"{case.case_id}_overlay.png"
        save_overlay_png(path, np.clip(image[k], 0, 255).astype(np.uint8), mask[k], truth,
                         label=f"{case.case_id} slice {k}")
        written.append(path)
    dz, dy, dx = loaded.spacing
    summary.set_spacing(case.case_id, (dx, dy, dz))
    for k, area in enumerate(areas):
        summary.add_slice(case.case_id, f"{case.case_id}_slice{k}", k, int(area))


def predict_cases(
    predictor: Callable[..., List[torch.Tensor]],
    folders: Sequence[PathLike],
    out_dir: PathLike,
    summary: VolumeSummary,
    *,
    grid: InPlaneGrid,
    mapping: Optional[Mapping[str, str]] = None,
    threshold: float = DEFAULT_MASK_THRESHOLD,
    batch_size: int = 8,
    save_probabilities: bool = False,
    overlays: bool = True,
    progress: bool = True,
) -> VolumeSummary:
    """Predict every case and write its outputs (see the module docstring), then the summary.

    Args:
        predictor: a :class:`~brainseg.inference.SlicePredictor`.
        folders: case folders, from :func:`brainseg.data.find_case_folders`.
        out_dir: output folder.
        summary: collects per-case volumes and failures.
        grid: the model's in-plane grid (:func:`brainseg.inference.grid.model_grid`).
        mapping: sequence file names (see :func:`brainseg.data.find_case`); default BraTS names.
        threshold: the model's ``mask_threshold``.
        batch_size: slices per forward pass.
        save_probabilities: also write ``<case>_prob.nii.gz``.
        overlays: also write ``<case>_overlay.png``.
        progress: show a tqdm progress bar over cases.

    Returns:
        ``summary``, filled; ``summary.failures`` lists the cases that could not be used.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1; got {batch_size}")
    tumour_mask(torch.zeros(1), threshold)  # a bad threshold fails before anything is written
    out_dir = Path(out_dir)
    for folder in tqdm(folders, unit="case", desc="predict", disable=not progress):
        written: List[Path] = []
        case_id = Path(folder).name
        try:
            case = find_case(folder, mapping=mapping)
            _predict_case(predictor, case, out_dir, summary, written, grid=grid, threshold=threshold,
                          batch_size=batch_size, save_probabilities=save_probabilities, overlays=overlays)
        except UserError as e:
            logger.error(str(e))
            summary.add_failure(folder, case_id, str(e))
            for path in written:  # no half-done case is left behind
                path.unlink(missing_ok=True)
    summary.write(out_dir)
    return summary
