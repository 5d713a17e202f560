"""Medical-imaging evaluation of binary tumour segmentation on LGG: pooled, per-slice and
per-patient (3-D) Dice/IoU, surface metrics (HD95, ASSD, NSD) in mm, Buda et al.'s
largest-component variant, slice-level tumour detection and the UNeXt-compatible figures, as a
detectron2 :class:`DatasetEvaluator`.
"""

import csv
import io
import itertools
import logging
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from tabulate import tabulate

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from brainseg.modeling.postprocessing import DEFAULT_MASK_THRESHOLD
from brainseg.utils.io import atomic_write

from .lesions import lesion_wise_metrics
from .masks import MASK_SOURCES, describe_record, prediction_mask, truth_mask
from .metrics import (
    confusion_counts,
    dice_from_counts,
    iou_from_counts,
    largest_connected_component,
    safe_ratio,
    seed_iou_dice,
    surface_metrics,
)
from .spacing import PatientSpacingSource, Spacing, load_patient_spacing, spacing_for

__all__ = ["LGGEvaluator", "SliceResult", "summarize_slices", "nsd_key", "LESION_COLUMNS"]

# the per-patient lesion-wise columns (brainseg.evaluation.lesions.lesion_wise_metrics)
LESION_COLUMNS = ("lesion_tp", "lesion_fp", "lesion_fn", "lesion_f1", "lesion_dice")


@dataclass(frozen=True)
class SliceResult:
    """Everything the evaluator keeps of one slice: confusion counts and, for the 3-D surface and
    largest-component metrics, both masks bit-packed (``None`` when the mask is empty), i.e. at
    most 16 KB per 256x256 slice."""

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
    * ``hd95``, ``hd95_median``, ``assd``: per-patient 3-D HD95 (mean and median over
      patients) and average symmetric surface distance (mean) over the slices stacked by
      ``slice_index``; patients with one or both masks empty are excluded and counted in
      ``n_hd95_excluded``. HD95 is the 95th percentile of the distances of both directions
      pooled (prediction surface -> truth surface and back), as medpy's ``hd95``; ASSD is
      their mean. Surfaces are the voxels with a face-connected background neighbour;
      :func:`~brainseg.evaluation.metrics.surface_metrics` states the conventions and how
      they differ from MONAI's.
    * ``nsd_<tau>mm`` (``nsd_1mm``, ``nsd_2mm`` by default): per-patient normalised surface
      Dice at tolerance tau (the fraction of both surfaces' voxels within tau of the other
      surface), mean over patients; a patient with exactly one empty mask scores 0, one with
      both empty is skipped (``n_empty_patients``). Without any spacing the keys are
      ``nsd_<tau>vox`` and tau is in voxels.
    * ``lesion_f1_mean``, ``lesion_dice_mean``: per-patient lesion-wise F1 and BraTS-style
      lesion Dice (lesions = 26-connected 3-D components, see
      :func:`~brainseg.evaluation.lesions.lesion_wise_metrics`), mean over patients; a patient
      with both masks empty scores 1.
    * Units: surface metrics are in mm when a spacing is known (``patient_spacing`` row of
      the patient, else ``spacing``), otherwise in voxels with slice gap 1; ``surface_in_mm``
      is 1 or 0 accordingly (results are numbers only, so the unit is a flag).
    * With ``largest_component=True``, also ``dice_volume_mean_lcc``,
      ``dice_volume_median_lcc``, ``iou_volume_mean_lcc``, ``hd95_lcc``, ``assd_lcc`` and
      ``nsd_<tau>mm_lcc``: the same per-patient metrics after reducing each patient's
      predicted volume to its largest 3-D connected component (6-connectivity: voxels sharing
      a face, across slices too; slices are adjacent when their ``slice_index`` values are
      consecutive in the patient's sorted list; on a size tie the component first in raster
      order is kept; an empty prediction stays empty), as Buda et al. do with medpy before
      their per-volume Dice. The plain keys keep their values.
    * ``presence_accuracy``, ``presence_sensitivity``, ``presence_specificity``: slice-level
      tumour detection; a slice is positive when its truth has >= 1 pixel and its prediction
      >= ``min_presence_area`` pixels.
    * ``seed_iou``, ``seed_dice``: the UNeXt seed code's figures (intersection/union pooled
      over each ``process`` batch, smoothed by 1e-5, Dice = 2·IoU/(IoU+1), batch-size-weighted
      mean over batches); with batch size 1 an empty-empty slice scores 1.

    ``lgg_per_patient.csv`` (when ``output_dir`` is set) has one row per patient with the
    per-patient values of all these metrics (``dice``, ``iou``, ``lesion_tp``, ``lesion_fp``,
    ``lesion_fn``, ``lesion_f1``, ``lesion_dice``, ``hd95``, ``assd``,
    ``nsd_*``, their ``*_lcc`` versions), the spacing used and ``surface_units``.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        threshold: float = DEFAULT_MASK_THRESHOLD,
        score_threshold: float = 0.5,
        min_presence_area: int = 1,
        mask_source: str = "auto",
        spacing: Optional[Sequence[float]] = None,
        patient_spacing: Optional[PatientSpacingSource] = None,
        compute_hd95: bool = True,
        nsd_tolerances: Sequence[float] = (1.0, 2.0),
        largest_component: bool = False,
    ):
        """
        Args:
            dataset_name: name of the evaluated dataset (its metadata may give ``spacing``).
            distributed: gather results from all processes and evaluate on the main one.
            output_dir: where to write ``lgg_per_patient.csv`` (nothing written if None).
            threshold: the tumour-probability threshold, i.e. the model's ``mask_threshold`` (the
                configs interpolate it: ``lgg_options.threshold="${....model.mask_threshold}"``).
            score_threshold: minimum instance score kept for ``instances`` outputs.
            min_presence_area: minimum predicted area (pixels) for a slice to count as
                "tumour present" in the presence metrics.
            mask_source: "auto" (``sem_seg`` if present, else ``instances``), "sem_seg" or
                "instances".
            spacing: voxel size (slice, row, col) in mm for the surface metrics; default: the
                dataset metadata's ``spacing`` if set, else distances in voxels.
            patient_spacing: per-patient voxel sizes in mm, a CSV file with the header
                ``patient,spacing_z,spacing_y,spacing_x`` or a dict ``{patient_id: (z, y, x)}``;
                patients not in it use ``spacing`` (an error if there is none); default: the
                dataset metadata's ``patient_spacing`` if set.
            compute_hd95: set False to skip the surface metrics (HD95, ASSD, NSD), the slowest
                part.
            nsd_tolerances: the tolerances tau of the normalised surface Dice, in mm (in voxels
                without any spacing).
            largest_component: also report the per-patient metrics after keeping only the
                largest 3-D connected component of each patient's prediction (``*_lcc`` keys).
        """
        if mask_source not in MASK_SOURCES:
            raise ValueError(f"mask_source must be one of {MASK_SOURCES}; got {mask_source!r}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1); got {threshold}")
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
        if patient_spacing is None:
            patient_spacing = MetadataCatalog.get(dataset_name).get("patient_spacing", None)
        self._patient_spacing = None if patient_spacing is None else load_patient_spacing(patient_spacing)
        self._compute_hd95 = compute_hd95
        self._nsd_tolerances = tuple(float(t) for t in nsd_tolerances)
        if any(not (math.isfinite(t) and t >= 0) for t in self._nsd_tolerances):
            raise ValueError(f"nsd_tolerances must be finite and >= 0; got {list(nsd_tolerances)}")
        if len({nsd_key(t, True) for t in self._nsd_tolerances}) != len(self._nsd_tolerances):
            raise ValueError(f"nsd_tolerances must be distinct; got {list(nsd_tolerances)}")
        self._largest_component = bool(largest_component)
        self.reset()

    def reset(self) -> None:
        self._slices: List[SliceResult] = []
        self._seed_batches: List[Tuple[float, float, int]] = []
        self._record_spacing: Dict[str, Spacing] = {}

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
            if "spacing" in record:  # NIfTI slices carry their volume's spacing
                self._record_spacing.setdefault(str(record["patient_id"]), tuple(float(s) for s in record["spacing"]))
            else:
                spacing_for(str(record["patient_id"]), patient_spacing=self._patient_spacing, spacing=self._spacing)
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
            gathered = comm.gather((self._slices, self._seed_batches, self._record_spacing), dst=0)
            if not comm.is_main_process():
                return OrderedDict()
            slices = list(itertools.chain(*(g[0] for g in gathered)))
            seed_batches = list(itertools.chain(*(g[1] for g in gathered)))
            record_spacing = {k: v for g in gathered for k, v in g[2].items()}
        else:
            slices, seed_batches, record_spacing = self._slices, self._seed_batches, self._record_spacing
        # a table given by the user wins over the spacing the records carry
        patient_spacing = {**record_spacing, **(self._patient_spacing or {})} or None
        if not slices:
            self._logger.warning("[LGGEvaluator] no predictions were processed.")
            return OrderedDict()
        metrics, per_patient = summarize_slices(
            slices,
            seed_batches,
            min_presence_area=self._min_presence_area,
            spacing=self._spacing,
            patient_spacing=patient_spacing,
            compute_hd95=self._compute_hd95,
            nsd_tolerances=self._nsd_tolerances,
            largest_component=self._largest_component,
        )
        if self._output_dir:
            path = os.path.join(self._output_dir, "lgg_per_patient.csv")
            atomic_write(path, _to_csv(per_patient))
            self._logger.info(f"Per-patient LGG metrics written to {path}")
        self._logger.info(f"LGG evaluation on {self._dataset_name}:\n" + self._format_table(metrics))
        return OrderedDict(lgg=metrics)

    def _format_table(self, metrics: Dict[str, float]) -> str:
        unit = "mm" if metrics["surface_in_mm"] else "voxels (slice gap = 1)"
        rows = [(k, f"{v:.4f}" if isinstance(v, float) else v) for k, v in metrics.items()]
        notes = [
            f"Overlap metrics are fractions in [0, 1]; hd95, assd and the NSD tolerances are in {unit}.",
            "*_slice_mean: over slices with truth or prediction non-empty "
            "(n_empty_slices empty-empty slices not scored).",
            "*_volume_*: per-patient 3-D; patients with empty truth and prediction skipped (n_empty_patients).",
            "hd95 (pooled 95th percentile of both directions), assd: means over patients with both masks "
            "non-empty (n_hd95_excluded excluded).",
            "nsd_*: surface voxels within the tolerance; one mask empty scores 0, both empty skipped.",
            "lesion_*_mean: per-patient lesion-wise F1 / Dice (26-connected 3-D lesions), both empty scoring 1.",
            "seed_*: UNeXt convention (per-batch pooled, smooth 1e-5, batch-weighted mean).",
        ]
        if self._largest_component:
            notes.append("*_lcc: each patient's prediction reduced to its largest 3-D 6-connected component.")
        return (
            tabulate(rows, headers=["metric", "value"], tablefmt="pipe", disable_numparse=True)
            + "\n"
            + "\n".join(notes)
        )


def nsd_key(tolerance: float, in_mm: bool) -> str:
    """Result key of the NSD at ``tolerance``: ``nsd_1mm`` (``nsd_1vox`` when not in mm)."""
    return f"nsd_{tolerance:g}{'mm' if in_mm else 'vox'}"


def summarize_slices(
    slices: Sequence[SliceResult],
    seed_batches: Sequence[Tuple[float, float, int]],
    *,
    min_presence_area: int = 1,
    spacing: Optional[Sequence[float]] = None,
    patient_spacing: Optional[Mapping[str, Spacing]] = None,
    compute_hd95: bool = True,
    nsd_tolerances: Sequence[float] = (1.0, 2.0),
    largest_component: bool = False,
) -> Tuple["OrderedDict[str, float]", List[Dict[str, Any]]]:
    """Compute the LGG metrics from per-slice results (any order, any process split).

    Args:
        slices: one :class:`SliceResult` per evaluated slice.
        seed_batches: (iou, dice, batch size) per processed batch.
        min_presence_area: minimum predicted area for a slice to be called positive.
        spacing: (slice, row, col) voxel size in mm for the surface metrics, or None.
        patient_spacing: ``{patient_id: (z, y, x)}`` in mm, taking precedence over ``spacing``;
            with neither, surface metrics are in voxels.
        compute_hd95: whether to compute the surface metrics (``nan`` otherwise).
        nsd_tolerances: NSD tolerances, in the unit of the surface metrics.
        largest_component: also compute the ``*_lcc`` metrics (largest 3-D component).

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

    in_mm = spacing is not None or patient_spacing is not None
    nsd_keys = [nsd_key(t, in_mm) for t in nsd_tolerances]
    per_patient = [
        _patient_row(
            patient_id,
            list(group),
            spacing=spacing_for(patient_id, patient_spacing=patient_spacing, spacing=spacing),
            compute_surface=compute_hd95,
            nsd_tolerances=nsd_tolerances,
            nsd_keys=nsd_keys,
            largest_component=largest_component,
        )
        for patient_id, group in itertools.groupby(slices, key=lambda s: s.patient_id)
    ]
    volume_dice = _column(per_patient, "dice")
    hd95 = _column(per_patient, "hd95")
    n_samples = sum(b[2] for b in seed_batches)

    metrics = OrderedDict()
    metrics["dice_volume_mean"] = _nanmean(volume_dice)
    metrics["dice_volume_median"] = _nanmedian(volume_dice)
    metrics["iou_volume_mean"] = _nanmean(_column(per_patient, "iou"))
    metrics["hd95"] = _nanmean(hd95)
    metrics["hd95_median"] = _nanmedian(hd95)
    metrics["assd"] = _nanmean(_column(per_patient, "assd"))
    for key in nsd_keys:
        metrics[key] = _nanmean(_column(per_patient, key))
    metrics["lesion_f1_mean"] = _nanmean(_column(per_patient, "lesion_f1"))
    metrics["lesion_dice_mean"] = _nanmean(_column(per_patient, "lesion_dice"))
    if largest_component:
        metrics["dice_volume_mean_lcc"] = _nanmean(_column(per_patient, "dice_lcc"))
        metrics["dice_volume_median_lcc"] = _nanmedian(_column(per_patient, "dice_lcc"))
        metrics["iou_volume_mean_lcc"] = _nanmean(_column(per_patient, "iou_lcc"))
        for key in ("hd95", "assd", *nsd_keys):
            metrics[f"{key}_lcc"] = _nanmean(_column(per_patient, f"{key}_lcc"))
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
    metrics["surface_in_mm"] = int(in_mm)
    return metrics, per_patient


def _patient_row(
    patient_id: str,
    group: Sequence[SliceResult],
    *,
    spacing: Optional[Spacing],
    compute_surface: bool,
    nsd_tolerances: Sequence[float],
    nsd_keys: Sequence[str],
    largest_component: bool,
) -> Dict[str, Any]:
    """The 3-D metrics of one patient from its slices, sorted by slice index."""
    tp, fp, fn = (sum(getattr(s, name) for s in group) for name in ("tp", "fp", "fn"))
    row = OrderedDict(
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
    )
    prediction, truth = _stack_volumes(patient_id, group)
    lesions = lesion_wise_metrics(prediction, truth)
    row.update((key, lesions[key]) for key in LESION_COLUMNS)
    volumes = (prediction, truth) if tp + fp + fn else None
    surface = dict(spacing=spacing, tolerances=nsd_tolerances, nsd_keys=nsd_keys)
    row.update(_surface_columns(volumes if compute_surface else None, **surface))
    if largest_component:
        row.update(_largest_component_columns(volumes, row, compute_surface=compute_surface, **surface))
    row.update(zip(("spacing_z", "spacing_y", "spacing_x"), spacing or (math.nan,) * 3))
    row["surface_units"] = "mm" if spacing else "voxels"
    return row


def _surface_columns(
    volumes: Optional[Tuple[np.ndarray, np.ndarray]],
    *,
    spacing: Optional[Spacing],
    tolerances: Sequence[float],
    nsd_keys: Sequence[str],
) -> "OrderedDict[str, float]":
    """``hd95``, ``assd`` and the NSD columns of (prediction, truth) volumes; all ``nan``
    without volumes (surface metrics off, or nothing to compare)."""
    if volumes is None:
        hd95 = assd = math.nan
        nsd = (math.nan,) * len(nsd_keys)
    else:
        hd95, assd, nsd = surface_metrics(*volumes, spacing=spacing, tolerances=tolerances)
    return OrderedDict([("hd95", hd95), ("assd", assd), *zip(nsd_keys, nsd)])


def _largest_component_columns(
    volumes: Optional[Tuple[np.ndarray, np.ndarray]],
    plain: Dict[str, Any],
    *,
    compute_surface: bool,
    **surface: Any,
) -> "OrderedDict[str, Any]":
    """The ``*_lcc`` columns: the prediction reduced to its largest 3-D component, scored like
    the ``plain`` row (whose values are reused when that component is the whole prediction)."""
    names = ("prediction_voxels", "dice", "iou", "hd95", "assd", *surface["nsd_keys"])
    kept = None if volumes is None else largest_connected_component(volumes[0])
    if kept is None or np.count_nonzero(kept) == plain["prediction_voxels"]:
        values = {name: plain[name] for name in names}
    else:
        truth = volumes[1]
        tp, fp, fn, _ = confusion_counts(kept, truth)
        values = dict(prediction_voxels=tp + fp, dice=dice_from_counts(tp, fp, fn), iou=iou_from_counts(tp, fp, fn))
        values.update(_surface_columns((kept, truth) if compute_surface else None, **surface))
    return OrderedDict((f"{name}_lcc", values[name]) for name in names)


def _stack_volumes(patient_id: str, group: Sequence[SliceResult]) -> Tuple[np.ndarray, np.ndarray]:
    """(prediction, truth) volumes (slices, H, W) of one patient, slices in the given order."""
    shapes = {(s.height, s.width) for s in group}
    if len(shapes) != 1:
        raise ValueError(f"slices of patient {patient_id} have different sizes {sorted(shapes)}; cannot stack a volume")
    truths, predictions = zip(*(s.masks() for s in group))
    return np.stack(predictions), np.stack(truths)


def _column(rows: Sequence[Dict[str, Any]], name: str) -> np.ndarray:
    """One per-patient column as a float array."""
    return np.array([row[name] for row in rows], dtype=np.float64)


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
