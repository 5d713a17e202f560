"""Evaluation of brainseg models: LGG medical metrics (per-pixel, per-slice, per-patient Dice,
IoU, HD95/ASSD/NSD in mm, Buda et al.'s largest-component variant, tumour presence,
UNeXt-compatible figures) and COCO AP through detectron2."""

from .build import build_evaluators, resolve_dataset_name
from .coco_evaluation import LGGCOCOEvaluator
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
from .spacing import load_patient_spacing, spacing_for

__all__ = [k for k in globals().keys() if not k.startswith("_")]
