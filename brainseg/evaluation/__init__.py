"""Evaluation of brainseg models: LGG medical metrics (per-pixel, per-slice, per-patient Dice,
IoU, HD95/ASSD/NSD in mm, Buda et al.'s largest-component variant, tumour presence,
UNeXt-compatible figures), COCO AP through detectron2, and calibration on the validation split
(ECE, threshold choice, temperature scaling)."""

from .build import build_evaluators, resolve_dataset_name
from .calibration import DEFAULT_NUM_BINS, ReliabilityBins, bin_indices, expected_calibration_error
from .calibration_evaluation import CalibrationEvaluator
from .coco_evaluation import LGGCOCOEvaluator
from .comparison_statistics import (
    PairedTest,
    bootstrap_ci,
    holm_adjust,
    paired_wilcoxon,
    pairwise_wilcoxon_holm,
    summarize,
)
from .lesions import DEFAULT_LESION_CONNECTIVITY, LesionMatches, lesion_matches, lesion_wise_metrics
from .lgg_evaluation import LGGEvaluator, SliceResult, nsd_key, summarize_slices
from .masks import MASK_SOURCES, describe_record, prediction_mask, truth_mask
from .metrics import (
    ConfusionCounts,
    SurfaceMetrics,
    average_symmetric_surface_distance,
    confusion_counts,
    dice_from_counts,
    dice_score,
    hausdorff_distance_95,
    iou_from_counts,
    iou_score,
    largest_connected_component,
    normalized_surface_dice,
    safe_ratio,
    seed_iou_dice,
    surface_metrics,
    surface_voxels,
    symmetric_surface_distances,
)
from .saved_probabilities import ProbabilityWriter, load_probability, probability_path, recompute_lgg_metrics
from .spacing import load_patient_spacing, spacing_for
from .temperature import LogitHistogram, fit_temperature, probability_logits
from .threshold_choice import DEFAULT_THRESHOLD_GRID, THRESHOLD_CRITERIA, ThresholdChoice, ThresholdDiceCounts

__all__ = [k for k in globals().keys() if not k.startswith("_")]
