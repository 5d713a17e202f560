"""Medical-imaging evaluation of binary tumour segmentation on LGG: pooled, per-slice and
per-patient (3-D) Dice/IoU, HD95, slice-level tumour detection and the UNeXt-compatible
figures, as a detectron2 :class:`DatasetEvaluator`.
"""

import csv
import io
import itertools
import logging
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tabulate import tabulate

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from brainseg.utils.io import atomic_write

from .masks import MASK_SOURCES, describe_record, prediction_mask, truth_mask
from .metrics import (
    confusion_counts,
    dice_from_counts,
    hausdorff_distance_95,
    iou_from_counts,
    safe_ratio,
    seed_iou_dice,
)

__all__ = ["LGGEvaluator", "SliceResult", "summarize_slices"]


@dataclass(frozen=True)
class SliceResult:
    """Everything the evaluator keeps of one slice: confusion counts and, for HD95, both masks
    bit-packed (``None`` when the mask is empty), i.e. at most 16 KB per 256x256 slice."""

    patient_id: str
    slice_index: int
    height: int
    width: int
    tp: int
    fp: int
    fn: int
    packed_truth: Optional[np.ndarray]
    packed_prediction: Optional[np.ndarray]

    @property
    def truth_area(self) -> int:
        return self.tp + self.fn

    @property
    def prediction_area(self) -> int:
        return self.tp + self.fp

    def masks(self) -> Tuple[np.ndarray, np.ndarray]:
        """Return the (truth, prediction) bool masks of shape (height, width)."""
        return _unpack(self.packed_truth, self.height, self.width), _unpack(
            self.packed_prediction, self.height, self.width
        )


def _pack(mask: np.ndarray) -> Optional[np.ndarray]:
    return np.packbits(mask.ravel()) if mask.any() else None


def _unpack(packed: Optional[np.ndarray], height: int, width: int) -> np.ndarray:
    if packed is None:
        return np.zeros((height, width), dtype=bool)
    return np.unpackbits(packed, count=height * width).reshape(height, width).astype(bool)


class LGGEvaluator(DatasetEvaluator):
    """Evaluate binary tumour segmentation per pixel, per slice and per patient.

    The prediction of a slice is ``tumour probability > threshold`` from the output's
    ``sem_seg`` (2, H, W) (background, tumour) scores, or, for models that only give
    ``instances``, the union of ``pred_masks`` whose score is >= ``score_threshold``.
    The truth comes from the input's ``sem_seg`` tensor (values 0/1) when it has the
    prediction's size, otherwise from ``sem_seg_file_name`` (0/255 or 0/1 on disk).

    Results (``{"lgg": {...}}``; overlap metrics are fractions in [0, 1]):

    * ``dice_global``, ``iou_global``, ``sensitivity``, ``precision``, ``pixel_accuracy``:
      pooled over all pixels of the split.
    * ``dice_slice_mean``, ``iou_slice_mean``: mean over slices where truth or prediction is
      non-empty; empty-empty slices are not scored and counted in ``n_empty_slices``.
    * ``dice_volume_mean``, ``dice_volume_median``, ``iou_volume_mean``: per-patient 3-D
      overlap (Buda et al.); patients with empty truth and empty prediction are skipped and
      counted in ``n_empty_patients``.
    * ``hd95``, ``hd95_median``: per-patient 3-D HD95 over the slices stacked by
      ``slice_index``, in voxels (slice gap = 1) or in mm when a ``spacing`` is given;
      patients with one or both masks empty are excluded and counted in ``n_hd95_excluded``.
    * ``presence_accuracy``, ``presence_sensitivity``, ``presence_specificity``: slice-level
      tumour detection; a slice is positive when its truth has >= 1 pixel and its prediction
      >= ``min_presence_area`` pixels.
    * ``seed_iou``, ``seed_dice``: the UNeXt seed code's figures (intersection/union pooled
      over each ``process`` batch, smoothed by 1e-5, Dice = 2·IoU/(IoU+1), batch-size-weighted
      mean over batches); with batch size 1 an empty-empty slice scores 1.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        threshold: float = 0.5,
        score_threshold: float = 0.5,
        min_presence_area: int = 1,
        mask_source: str = "auto",
        spacing: Optional[Sequence[float]] = None,
        compute_hd95: bool = True,
    ):
        """
        Args:
            dataset_name: name of the evaluated dataset (its metadata may give ``spacing``).
            distributed: gather results from all processes and evaluate on the main one.
            output_dir: where to write ``lgg_per_patient.csv`` (nothing written if None).
            threshold: tumour-probability threshold for ``sem_seg`` outputs.
            score_threshold: minimum instance score kept for ``instances`` outputs.
            min_presence_area: minimum predicted area (pixels) for a slice to count as
                "tumour present" in the presence metrics.
            mask_source: "auto" (``sem_seg`` if present, else ``instances``), "sem_seg" or
                "instances".
            spacing: voxel size (slice, row, col) in mm for HD95; default: the dataset
                metadata's ``spacing`` if set, else distances in voxels.
            compute_hd95: set False to skip the (slowest) HD95 computation.
        """
        if mask_source not in MASK_SOURCES:
            raise ValueError(f"mask_source must be one of {MASK_SOURCES}; got {mask_source!r}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1]; got {threshold}")
        if min_presence_area < 1:
            raise ValueError(f"min_presence_area must be >= 1 pixel; got {min_presence_area}")
        self._logger = logging.getLogger(__name__)
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._threshold = threshold
        self._score_threshold = score_threshold
        self._min_presence_area = int(min_presence_area)
        self._mask_source = mask_source
        if spacing is None:
            spacing = MetadataCatalog.get(dataset_name).get("spacing", None)
        if spacing is not None and len(spacing) != 3:
            raise ValueError(f"spacing must be (slice, row, col); got {tuple(spacing)}")
        self._spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self._compute_hd95 = compute_hd95
        self.reset()

    def reset(self) -> None:
        self._slices: List[SliceResult] = []
        self._seed_batches: List[Tuple[float, float, int]] = []

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        """Score a batch: one :class:`SliceResult` per slice and one seed-compatible
        (IoU, Dice, batch size) entry for the batch.

        Args:
            inputs: dataset records (``patient_id``, ``slice_index``, ``file_name`` and
                ``sem_seg`` or ``sem_seg_file_name``).
            outputs: model outputs with ``sem_seg`` and/or ``instances``.
        """
        intersection = union = 0
        for record, output in zip(inputs, outputs):
            for key in ("patient_id", "slice_index"):
                if key not in record:
                    raise KeyError(f"LGGEvaluator needs '{key}' in the dataset record of {describe_record(record)}")
            prediction = prediction_mask(
                record,
                output,
                mask_source=self._mask_source,
                threshold=self._threshold,
                score_threshold=self._score_threshold,
            )
            truth = truth_mask(record, prediction.shape)
            tp, fp, fn, _ = confusion_counts(prediction, truth)
            self._slices.append(
                SliceResult(
                    patient_id=str(record["patient_id"]),
                    slice_index=int(record["slice_index"]),
                    height=prediction.shape[0],
                    width=prediction.shape[1],
                    tp=tp,
                    fp=fp,
                    fn=fn,
                    packed_truth=_pack(truth),
                    packed_prediction=_pack(prediction),
                )
            )
            intersection += tp
            union += tp + fp + fn
        if len(inputs):
            self._seed_batches.append((*seed_iou_dice(intersection, union), len(inputs)))

    def evaluate(self) -> "OrderedDict[str, OrderedDict[str, float]]":
        """Gather the slices of all processes and compute the metrics on the main process.

        Returns:
            ``{"lgg": {metric: value}}`` on the main process, ``{}`` elsewhere or when
            nothing was processed.
        """
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather((self._slices, self._seed_batches), dst=0)
            if not comm.is_main_process():
                return OrderedDict()
            slices = list(itertools.chain(*(g[0] for g in gathered)))
            seed_batches = list(itertools.chain(*(g[1] for g in gathered)))
        else:
            slices, seed_batches = self._slices, self._seed_batches
        if not slices:
            self._logger.warning("[LGGEvaluator] no predictions were processed.")
            return OrderedDict()
        metrics, per_patient = summarize_slices(
            slices,
            seed_batches,
            min_presence_area=self._min_presence_area,
            spacing=self._spacing,
            compute_hd95=self._compute_hd95,
        )
        if self._output_dir:
            path = os.path.join(self._output_dir, "lgg_per_patient.csv")
            atomic_write(path, _to_csv(per_patient))
            self._logger.info(f"Per-patient LGG metrics written to {path}")
        self._logger.info(f"LGG evaluation on {self._dataset_name}:\n" + self._format_table(metrics))
        return OrderedDict(lgg=metrics)

    def _format_table(self, metrics: Dict[str, float]) -> str:
        unit = "mm" if self._spacing else "voxels (slice gap = 1)"
        rows = [(k, f"{v:.4f}" if isinstance(v, float) else v) for k, v in metrics.items()]
        notes = (
            "Overlap metrics are fractions in [0, 1]; hd95 is in {unit}.\n"
            "*_slice_mean: over slices with truth or prediction non-empty "
            "(n_empty_slices empty-empty slices not scored).\n"
            "*_volume_*: per-patient 3-D; patients with empty truth and prediction skipped (n_empty_patients).\n"
            "hd95: mean over patients with both masks non-empty (n_hd95_excluded excluded).\n"
            "seed_*: UNeXt convention (per-batch pooled, smooth 1e-5, batch-weighted mean)."
        ).format(unit=unit)
        return (
            tabulate(rows, headers=["metric (fractions in [0,1])", "value"], tablefmt="pipe", disable_numparse=True)
            + "\n"
            + notes
        )


def summarize_slices(
    slices: Sequence[SliceResult],
    seed_batches: Sequence[Tuple[float, float, int]],
    *,
    min_presence_area: int = 1,
    spacing: Optional[Sequence[float]] = None,
    compute_hd95: bool = True,
) -> Tuple["OrderedDict[str, float]", List[Dict[str, Any]]]:
    """Compute the LGG metrics from per-slice results (any order, any process split).

    Args:
        slices: one :class:`SliceResult` per evaluated slice.
        seed_batches: (iou, dice, batch size) per processed batch.
        min_presence_area: minimum predicted area for a slice to be called positive.
        spacing: (slice, row, col) voxel size for HD95, or None for voxel units.
        compute_hd95: whether to compute HD95 (``nan`` otherwise).

    Returns:
        (metrics, per-patient rows): the metrics dict of :class:`LGGEvaluator` and one dict per
        patient (sorted by patient id) for ``lgg_per_patient.csv``.
    """
    slices = sorted(slices, key=lambda s: (s.patient_id, s.slice_index))
    for a, b in zip(slices, slices[1:]):
        if (a.patient_id, a.slice_index) == (b.patient_id, b.slice_index):
            raise ValueError(f"slice {a.slice_index} of patient {a.patient_id} was evaluated twice")
    tp, fp, fn, pixels = np.array([(s.tp, s.fp, s.fn, s.height * s.width) for s in slices], dtype=np.int64).T
    union = tp + fp + fn
    scored = union > 0
    truth_present = tp + fn > 0
    pred_area = tp + fp
    pred_present = pred_area >= min_presence_area
    n = len(slices)
    tp_sum, fp_sum, fn_sum = int(tp.sum()), int(fp.sum()), int(fn.sum())

    per_patient = _per_patient_rows(slices, spacing=spacing, compute_hd95=compute_hd95)
    volume_dice = np.array([r["dice"] for r in per_patient])
    volume_iou = np.array([r["iou"] for r in per_patient])
    hd95 = np.array([r["hd95"] for r in per_patient])
    n_samples = sum(b[2] for b in seed_batches)

    metrics = OrderedDict()
    metrics["dice_volume_mean"] = _nanmean(volume_dice)
    metrics["dice_volume_median"] = _nanmedian(volume_dice)
    metrics["iou_volume_mean"] = _nanmean(volume_iou)
    metrics["hd95"] = _nanmean(hd95)
    metrics["hd95_median"] = _nanmedian(hd95)
    metrics["dice_global"] = dice_from_counts(tp_sum, fp_sum, fn_sum)
    metrics["iou_global"] = iou_from_counts(tp_sum, fp_sum, fn_sum)
    metrics["dice_slice_mean"] = _nanmean(2 * tp[scored] / (2 * tp[scored] + fp[scored] + fn[scored]))
    metrics["iou_slice_mean"] = _nanmean(tp[scored] / union[scored])
    metrics["sensitivity"] = safe_ratio(tp_sum, tp_sum + fn_sum)
    metrics["precision"] = safe_ratio(tp_sum, tp_sum + fp_sum)
    metrics["pixel_accuracy"] = safe_ratio(int(pixels.sum()) - fp_sum - fn_sum, int(pixels.sum()))
    metrics["presence_accuracy"] = safe_ratio(int(np.count_nonzero(truth_present == pred_present)), n)
    metrics["presence_sensitivity"] = safe_ratio(
        int(np.count_nonzero(truth_present & pred_present)), int(np.count_nonzero(truth_present))
    )
    metrics["presence_specificity"] = safe_ratio(
        int(np.count_nonzero(~truth_present & ~pred_present)), int(np.count_nonzero(~truth_present))
    )
    metrics["seed_iou"] = safe_ratio(math.fsum(iou * size for iou, _, size in seed_batches), n_samples)
    metrics["seed_dice"] = safe_ratio(math.fsum(dice * size for _, dice, size in seed_batches), n_samples)
    metrics["n_slices"] = n
    metrics["n_empty_slices"] = int(np.count_nonzero(~scored))
    metrics["n_patients"] = len(per_patient)
    metrics["n_empty_patients"] = int(np.count_nonzero(np.isnan(volume_dice)))
    metrics["n_hd95_excluded"] = int(np.count_nonzero(np.isnan(hd95))) if compute_hd95 else len(per_patient)
    return metrics, per_patient


def _per_patient_rows(
    slices: Sequence[SliceResult], *, spacing: Optional[Sequence[float]], compute_hd95: bool
) -> List[Dict[str, Any]]:
    """One row of 3-D metrics per patient; ``slices`` must be sorted by (patient, slice)."""
    rows = []
    for patient_id, group in itertools.groupby(slices, key=lambda s: s.patient_id):
        group = list(group)
        tp, fp, fn = (sum(getattr(s, name) for s in group) for name in ("tp", "fp", "fn"))
        hd95 = math.nan
        if compute_hd95 and tp + fn > 0 and tp + fp > 0:
            hd95 = hausdorff_distance_95(*_stack_volumes(patient_id, group), spacing=spacing)
        rows.append(
            OrderedDict(
                patient_id=patient_id,
                n_slices=len(group),
                truth_slices=sum(s.truth_area > 0 for s in group),
                prediction_slices=sum(s.prediction_area > 0 for s in group),
                truth_voxels=tp + fn,
                prediction_voxels=tp + fp,
                tp=tp,
                dice=dice_from_counts(tp, fp, fn),
                iou=iou_from_counts(tp, fp, fn),
                sensitivity=safe_ratio(tp, tp + fn),
                precision=safe_ratio(tp, tp + fp),
                hd95=hd95,
            )
        )
    return rows


def _stack_volumes(patient_id: str, group: Sequence[SliceResult]) -> Tuple[np.ndarray, np.ndarray]:
    """(prediction, truth) volumes (slices, H, W) of one patient, slices in the given order."""
    shapes = {(s.height, s.width) for s in group}
    if len(shapes) != 1:
        raise ValueError(f"slices of patient {patient_id} have different sizes {sorted(shapes)}; cannot stack a volume")
    truths, predictions = zip(*(s.masks() for s in group))
    return np.stack(predictions), np.stack(truths)


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]


def _nanmean(values: np.ndarray) -> float:
    """Mean of the finite entries (``nan`` if there are none), without numpy's warning."""
    finite = _finite(values)
    return float(finite.mean()) if finite.size else math.nan


def _nanmedian(values: np.ndarray) -> float:
    """Median of the finite entries (``nan`` if there are none)."""
    finite = _finite(values)
    return float(np.median(finite)) if finite.size else math.nan


def _to_csv(rows: Sequence[Dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()})
    return buffer.getvalue()
