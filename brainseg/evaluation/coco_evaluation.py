"""detectron2's COCO evaluation, with a model that detects nothing scored as AP 0."""

import math
from typing import Dict, Optional, Sequence

import numpy as np
from pycocotools.cocoeval import Params

from detectron2.evaluation import COCOEvaluator

__all__ = ["LGGCOCOEvaluator"]

# detectron2's metric names -> index into COCOeval's area ranges ("all", "small", "medium", "large").
_METRIC_AREA_INDEX = {"AP": 0, "AP50": 0, "AP75": 0, "APs": 1, "APm": 2, "APl": 3}


class LGGCOCOEvaluator(COCOEvaluator):
    """:class:`detectron2.evaluation.COCOEvaluator` (segm/bbox AP in percent, official
    pycocotools COCOeval) that scores a split without a single detection as AP 0.

    detectron2 reports ``nan`` for every metric when a model returns no instance at all on
    the split, because pycocotools cannot load empty results; but with ground-truth objects
    present, no detections means precision 0 at every recall, i.e. AP 0. Metrics whose
    object-size range has no ground truth stay ``nan``, as COCOeval itself reports them.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Optional[Sequence[str]] = None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        **kwargs,
    ):
        """
        Args:
            dataset_name, tasks, distributed, output_dir: as in detectron2's COCOEvaluator.
            **kwargs: other keyword arguments of COCOEvaluator; ``use_fast_impl`` defaults to
                False (the official COCOeval).
        """
        kwargs.setdefault("use_fast_impl", False)
        super().__init__(dataset_name, tasks, distributed, output_dir, **kwargs)

    def _derive_coco_results(self, coco_eval, iou_type: str, class_names=None) -> Dict[str, float]:
        if coco_eval is not None:
            return super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)
        self._logger.warning(f"No {iou_type} detections from the model: AP is 0 where ground truth exists.")
        area_ranges = Params(iouType=iou_type).areaRng
        annotations = [a for a in self._coco_api.dataset.get("annotations", []) if not a.get("iscrowd", 0)]
        areas = np.array([a["area"] for a in annotations], dtype=np.float64)

        def zero_if_objects(area_index: int, mask: np.ndarray) -> float:
            low, high = area_ranges[area_index]
            return 0.0 if np.any(mask & (areas >= low) & (areas <= high)) else math.nan

        everything = np.ones(len(annotations), dtype=bool)
        results = {name: zero_if_objects(index, everything) for name, index in _METRIC_AREA_INDEX.items()}
        if class_names is not None and len(class_names) > 1:
            category_ids = np.array([a["category_id"] for a in annotations])
            for name, category_id in zip(class_names, sorted(self._coco_api.getCatIds())):
                results["AP-" + name] = zero_if_objects(0, category_ids == category_id)
        return results
