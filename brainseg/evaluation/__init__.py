"""Evaluation of brainseg models: LGG medical metrics (per-pixel, per-slice, per-patient Dice,
IoU, HD95, tumour presence, UNeXt-compatible figures) and COCO AP through detectron2."""

from .build import build_evaluators, resolve_dataset_name
from .coco_evaluation import LGGCOCOEvaluator
from .lgg_evaluation import LGGEvaluator, SliceResult, summarize_slices
from .masks import MASK_SOURCES, describe_record, prediction_mask, truth_mask
from .metrics import (
    ConfusionCounts,
    confusion_counts,
    dice_from_counts,
    dice_score,
    hausdorff_distance_95,
    iou_from_counts,
    iou_score,
    safe_ratio,
    seed_iou_dice,
    surface_voxels,
    symmetric_surface_distances,
    tumour_probability,
)

__all__ = [k for k in globals().keys() if not k.startswith("_")]
