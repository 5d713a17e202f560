"""Overlay figures of tumour segmentations on MRI slices.

* :func:`save_overlay_png`: one PNG per slice (the slice with the truth contour in green and
  the prediction contour in red), as written by ``make demo`` and ``tools/predict.py``.
* :func:`save_overlay_figure`: a panel figure, one row per chosen slice: image | ground truth
  | prediction | overlay, with the slice's Dice as the overlay panel's title.
* :func:`write_dataset_overlays`: runs a model over a test loader and writes one such figure
  per patient (its slices with the most tumour), titled with the patient's 3-D Dice.

Images are (H, W, 3) uint8 slices in file channel order (pre-contrast, FLAIR,
post-contrast) or (H, W) grayscale; by default the FLAIR channel is shown. Every file is
written atomically (temporary file + rename).
"""

import io
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

from brainseg.data import read_record_image
from brainseg.utils.io import atomic_write
from brainseg.evaluation.masks import prediction_mask, truth_mask
from brainseg.modeling.postprocessing import DEFAULT_MASK_THRESHOLD
from brainseg.evaluation.metrics import dice_score, surface_voxels

__all__ = [
    "FLAIR_CHANNEL",
    "TRUTH_COLOR",
    "PREDICTION_COLOR",
    "OverlaySample",
    "display_image",
    "draw_overlay",
    "save_overlay_png",
    "save_overlay_figure",
    "write_dataset_overlays",
]

FLAIR_CHANNEL = 1
TRUTH_COLOR = (0, 255, 0)  # RGB green
PREDICTION_COLOR = (255, 0, 0)  # RGB red
PathLike = Union[str, os.PathLike]


def display_image(image: np.ndarray, channel: Optional[int] = FLAIR_CHANNEL) -> np.ndarray:
    """RGB uint8 version of an MRI slice for display.

    Args:
        image: (H, W, 3) uint8 slice (pre-contrast, FLAIR, post-contrast) or (H, W) grayscale.
        channel: channel shown as grayscale (default FLAIR); None shows the three channels as RGB.

    Returns:
        np.ndarray: (H, W, 3) uint8.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8; got {image.dtype}")
    if image.ndim == 2:
        gray = image
    elif image.ndim == 3 and image.shape[2] == 3:
        if channel is None:
            return np.ascontiguousarray(image)
        gray = image[:, :, channel]
    else:
        raise ValueError(f"image must be (H, W) or (H, W, 3); got shape {image.shape}")
    return np.repeat(gray[:, :, None], 3, axis=2)


def _as_mask(mask: Optional[np.ndarray], shape: Tuple[int, int], what: str) -> np.ndarray:
    if mask is None:
        return np.zeros(shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"{what} mask has shape {mask.shape}; the image is {shape}")
    return mask.astype(bool)


def _contour(mask: np.ndarray, thickness: int) -> np.ndarray:
    """Inner boundary of ``mask``, thickened inwards-and-outwards to ``thickness`` pixels."""
    edge = surface_voxels(mask)
    if thickness > 1 and edge.any():
        kernel = np.ones((thickness, thickness), dtype=np.uint8)
        edge = cv2.dilate(edge.astype(np.uint8), kernel).astype(bool)
    return edge


def draw_overlay(
    image: np.ndarray,
    prediction: Optional[np.ndarray],
    truth: Optional[np.ndarray] = None,
    *,
    channel: Optional[int] = FLAIR_CHANNEL,
    thickness: int = 1,
) -> np.ndarray:
    """Draw the truth contour (green) and the prediction contour (red) on a slice.

    Where both contours coincide the prediction (red) is drawn on top.

    Args:
        image: (H, W, 3) uint8 slice or (H, W) grayscale.
        prediction: (H, W) binary predicted mask, or None.
        truth: (H, W) binary ground-truth mask, or None.
        channel: channel shown (default FLAIR); None for the RGB composite.
        thickness: contour width in pixels.

    Returns:
        np.ndarray: (H, W, 3) uint8 RGB overlay.
    """
    canvas = display_image(image, channel).copy()
    shape = canvas.shape[:2]
    canvas[_contour(_as_mask(truth, shape, "truth"), thickness)] = TRUTH_COLOR
    canvas[_contour(_as_mask(prediction, shape, "prediction"), thickness)] = PREDICTION_COLOR
    return canvas


def _dice_label(prediction: Optional[np.ndarray], truth: Optional[np.ndarray]) -> str:
    if truth is None or prediction is None:
        return ""
    dice = dice_score(prediction, truth)
    return "Dice n/a (both empty)" if math.isnan(dice) else f"Dice {dice:.3f}"


def save_overlay_png(
    path: PathLike,
    image: np.ndarray,
    prediction: Optional[np.ndarray],
    truth: Optional[np.ndarray] = None,
    *,
    channel: Optional[int] = FLAIR_CHANNEL,
    scale: int = 1,
    label: Optional[str] = None,
) -> None:
    """Write one overlay PNG of a slice (see :func:`draw_overlay`).

    Args:
        path: destination ``.png``; folders are created.
        image: (H, W, 3) uint8 slice or (H, W) grayscale.
        prediction: (H, W) binary predicted mask, or None.
        truth: (H, W) binary ground-truth mask, or None; when given, the Dice is printed on
            the image after ``label``.
        channel: channel shown (default FLAIR); None for the RGB composite.
        scale: integer upscaling (nearest neighbour) for readability.
        label: text printed in the top-left corner (e.g. the slice name).
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1; got {scale}")
    text = "  ".join(t for t in (label, _dice_label(prediction, truth)) if t)
    image, prediction, truth = (
        None if a is None else np.repeat(np.repeat(np.asarray(a), scale, axis=0), scale, axis=1)
        for a in (image, prediction, truth)
    )
    overlay = draw_overlay(image, prediction, truth, channel=channel, thickness=max(1, scale // 2))
    bgr = np.ascontiguousarray(overlay[:, :, ::-1])
    if text:
        font_scale = max(0.3, bgr.shape[1] / 700)
        origin = (4, 4 + int(22 * font_scale))
        for color, width in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # white text on a black outline
            cv2.putText(bgr, text, origin, cv2.FONT_HERSHEY_SIMPLEX, font_scale, color, width, cv2.LINE_AA)
    ok, encoded = cv2.imencode(".png", bgr)
    if not ok:
        raise RuntimeError(f"could not encode overlay PNG for {path}")
    atomic_write(path, encoded.tobytes())


@dataclass
class OverlaySample:
    """One row of :func:`save_overlay_figure`.

    Attributes:
        image: (H, W, 3) uint8 slice or (H, W) grayscale.
        truth: (H, W) binary ground truth.
        prediction: (H, W) binary prediction.
        title: row title (e.g. "TCGA_CS_4941_19960909 slice 12"); the Dice is appended.
    """

    image: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray
    title: str = ""


def save_overlay_figure(
    path: PathLike,
    samples: Sequence[OverlaySample],
    *,
    title: str = "",
    channel: Optional[int] = FLAIR_CHANNEL,
    panel_size: float = 2.4,
    dpi: int = 100,
) -> None:
    """Write a PNG with one row per sample: image | ground truth | prediction | overlay.

    Args:
        path: destination ``.png``; folders are created.
        samples: the chosen slices.
        title: figure title (the colour legend is appended).
        channel: channel shown (default FLAIR); None for the RGB composite.
        panel_size: size of one panel in inches.
        dpi: resolution of the PNG.
    """
    if not samples:
        raise ValueError("save_overlay_figure needs at least one sample")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4 * panel_size, len(samples) * (panel_size + 0.3)), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(samples), 4, squeeze=False)
    for row, sample in zip(axes, samples):
        shown = display_image(sample.image, channel)
        shape = shown.shape[:2]
        truth = _as_mask(sample.truth, shape, "truth")
        prediction = _as_mask(sample.prediction, shape, "prediction")
        row[0].imshow(shown)
        row[1].imshow(truth, cmap="gray", vmin=0, vmax=1)
        row[2].imshow(prediction, cmap="gray", vmin=0, vmax=1)
        row[3].imshow(draw_overlay(sample.image, prediction, truth, channel=channel))
        panel_titles = (sample.title or "image", "ground truth", "prediction", _dice_label(prediction, truth))
        for ax, panel_title in zip(row, panel_titles):
            ax.set_title(panel_title, fontsize=7)
            ax.axis("off")
    legend = "ground-truth contour green, prediction contour red"
    figure.suptitle(f"{title}\n{legend}" if title else legend, fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write(path, buffer.getvalue())


# what read_record_image needs of a record: a TIFF slice's file, or a NIfTI slice's volumes
_IMAGE_KEYS = ("file_name", "slice_index", "volume_files", "intensity_range")


def _display_slice(record: Dict[str, Any]) -> np.ndarray:
    """The record's slice as (H, W, 3) uint8: a TIFF as stored, a NIfTI slice normalised per
    volume as the model saw it, clipped to 0..255."""
    image = read_record_image(record)
    return image if image.dtype == np.uint8 else np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _patient_figure(
    path: str, patient_id: str, slices: List[Tuple[Dict[str, Any], np.ndarray, np.ndarray]], slices_per_patient: int
) -> None:
    """Figure of one patient's ``slices_per_patient`` slices with the largest truth (then
    predicted) area, in slice order, titled with the patient's 3-D Dice."""
    truths = np.stack([truth for _, truth, _ in slices])
    predictions = np.stack([prediction for _, _, prediction in slices])
    volume_dice = dice_score(predictions, truths)
    by_area = np.lexsort((-predictions.sum(axis=(1, 2)), -truths.sum(axis=(1, 2))))  # truth area first
    chosen = sorted(by_area[:slices_per_patient], key=lambda i: slices[i][0]["slice_index"])
    samples = [
        OverlaySample(
            image=_display_slice(slices[i][0]),
            truth=slices[i][1],
            prediction=slices[i][2],
            title=f"slice {slices[i][0]['slice_index']}",
        )
        for i in chosen
    ]
    dice_text = "n/a (no tumour in truth or prediction)" if math.isnan(volume_dice) else f"{volume_dice:.3f}"
    save_overlay_figure(path, samples, title=f"{patient_id}: 3-D Dice {dice_text}")


def write_dataset_overlays(
    model: torch.nn.Module,
    data_loader: Iterable[List[Dict[str, Any]]],
    output_dir: str,
    *,
    max_patients: int = 4,
    slices_per_patient: int = 4,
    threshold: float = DEFAULT_MASK_THRESHOLD,
    mask_source: str = "auto",
) -> List[str]:
    """Run ``model`` on the first ``max_patients`` patients of a test loader and write one
    overlay figure per patient, ``<output_dir>/<patient_id>.png``.

    The loader must yield each patient's slices contiguously (the dataset order); inference
    stops as soon as the patients are complete. The model is run in eval mode without
    gradients and restored to its previous mode.

    Args:
        model: a brainseg model (outputs ``sem_seg`` and/or ``instances``).
        data_loader: detectron2 test loader (batches of mapped records with ``patient_id``,
            ``slice_index``, ``file_name`` and ``sem_seg`` or ``sem_seg_file_name``).
        output_dir: folder of the PNGs (created).
        max_patients: number of patients drawn.
        slices_per_patient: rows per figure (the slices with the most tumour).
        threshold: the model's ``mask_threshold`` (as the evaluator uses it).
        mask_source: which output gives the prediction, as in the evaluator.

    Returns:
        list[str]: the written PNG paths, in loader order.
    """
    from detectron2.evaluation import inference_context

    paths: List[str] = []
    current: Optional[str] = None
    slices: List[Tuple[Dict[str, Any], np.ndarray, np.ndarray]] = []

    def finish_patient() -> None:
        if slices:
            path = os.path.join(output_dir, f"{current}.png")
            _patient_figure(path, current, sorted(slices, key=lambda s: s[0]["slice_index"]), slices_per_patient)
            paths.append(path)

    with inference_context(model), torch.no_grad():
        for batch in data_loader:
            outputs = model(batch)
            for record, output in zip(batch, outputs):
                if record["patient_id"] != current:
                    finish_patient()
                    if len(paths) == max_patients:
                        return paths
                    current, slices = record["patient_id"], []
                prediction = prediction_mask(record, output, mask_source=mask_source, threshold=threshold)
                kept = {k: record[k] for k in _IMAGE_KEYS if k in record}
                slices.append((kept, truth_mask(record, prediction.shape), prediction))
    finish_patient()
    return paths
