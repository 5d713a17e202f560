"""Browsing a registered dataset: ground truth and (optionally) predictions of its slices drawn
as overlay tiles (truth contour green, prediction contour red) and composed into grids.

Predictions come from a COCO results file (``coco_instances_results.json``, as detectron2's
COCOEvaluator writes it: per-instance ``image_id``, ``segmentation`` RLE, ``score``) or from a
folder of ``<slice>_mask.tif`` files (as ``tools/predict.py`` writes them).
"""
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from brainseg.data import LGGDataError, annotations_to_mask, read_lgg_mask
from brainseg.evaluation import dice_score, truth_mask

__all__ = ["PredictionMasks", "record_truth", "tile_title", "compose_grid", "parse_grid"]

TITLE_HEIGHT = 16


class PredictionMasks:
    """Predicted tumour masks of dataset records, from a COCO results json or a mask folder."""

    def __init__(self, path: Union[str, os.PathLike], *, score_threshold: float = 0.5):
        """
        Args:
            path: ``coco_instances_results.json`` or a folder holding ``<slice>_mask.tif`` files
                (searched recursively).
            score_threshold: COCO results with a lower score are ignored; the rest are united.

        Raises:
            LGGDataError: missing path, or a json that is not a COCO results list.
        """
        self.path = Path(path)
        self.score_threshold = score_threshold
        self._results: Optional[Dict[int, List[dict]]] = None
        self._mask_files: Optional[Dict[str, Path]] = None
        if self.path.is_dir():
            self._mask_files = {p.name: p for p in sorted(self.path.rglob("*_mask.tif"))}
        elif self.path.is_file():
            self._results = self._read_results(self.path)
        else:
            raise LGGDataError(f"predictions {self.path} do not exist")

    @staticmethod
    def _read_results(path: Path) -> Dict[int, List[dict]]:
        try:
            results = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LGGDataError(f"cannot read predictions {path}: {e}") from None
        if not isinstance(results, list) or not all(
            isinstance(r, dict) and "image_id" in r and "segmentation" in r for r in results
        ):
            raise LGGDataError(f"predictions {path} are not COCO instance results "
                               "(a list of {image_id, segmentation, score, ...})")
        by_image = defaultdict(list)
        for result in results:
            by_image[int(result["image_id"])].append(result)
        return dict(by_image)

    def mask(self, record: dict, shape: Tuple[int, int]) -> Optional[np.ndarray]:
        """The predicted (H, W) bool mask of ``record``; None when a mask folder lacks its file
        (a COCO image without results has an empty prediction)."""
        if self._results is not None:
            kept = [r for r in self._results.get(int(record["image_id"]), [])
                    if r.get("score", 1.0) >= self.score_threshold]
            return annotations_to_mask(kept, *shape).astype(bool)
        path = self._mask_files.get(f"{Path(record['file_name']).stem}_mask.tif")
        return None if path is None else read_lgg_mask(path, expected_shape=shape).astype(bool)


def record_truth(record: dict, shape: Tuple[int, int]) -> np.ndarray:
    """Ground truth of a record: its mask file, else its annotations."""
    if "sem_seg_file_name" in record:
        return truth_mask(record, shape)
    return annotations_to_mask(record.get("annotations", []), *shape).astype(bool)


def tile_title(record: dict, prediction: Optional[np.ndarray], truth: np.ndarray, has_predictions: bool) -> str:
    """``<patient> #<k>``, plus the slice's Dice when predictions are shown."""
    title = f"{record.get('patient_id', Path(record['file_name']).stem)} #{record.get('slice_index', '?')}"
    if not has_predictions:
        return title
    if prediction is None:
        return f"{title} no prediction"
    dice = dice_score(prediction, truth)
    return f"{title} Dice {'n/a' if math.isnan(dice) else f'{dice:.3f}'}"


def parse_grid(text: str) -> Tuple[int, int]:
    """``"4x4"`` -> (4, 4) (rows, columns)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"grid must look like ROWSxCOLS (e.g. 4x4); got {text!r}")
    return int(parts[0]), int(parts[1])


def compose_grid(tiles: Sequence[np.ndarray], titles: Sequence[str], rows: int, cols: int) -> np.ndarray:
    """Lay out RGB tiles row by row, each under a title strip; empty cells stay black.

    Args:
        tiles: up to rows * cols (H, W, 3) uint8 images (smaller ones sit top-left in their cell).
        titles: one per tile.
        rows, cols: grid size.

    Returns:
        np.ndarray: (rows * (TITLE_HEIGHT + Hmax), cols * Wmax, 3) uint8.
    """
    if len(tiles) > rows * cols or len(tiles) != len(titles):
        raise ValueError(f"{len(tiles)} tiles and {len(titles)} titles for a {rows}x{cols} grid")
    cell_h = max(t.shape[0] for t in tiles) + TITLE_HEIGHT
    cell_w = max(t.shape[1] for t in tiles)
    grid = np.zeros((rows * cell_h, cols * cell_w, 3), np.uint8)
    for index, (tile, title) in enumerate(zip(tiles, titles)):
        top, left = (index // cols) * cell_h, (index % cols) * cell_w
        grid[top + TITLE_HEIGHT:top + TITLE_HEIGHT + tile.shape[0], left:left + tile.shape[1]] = tile
        cv2.putText(grid, title, (left + 2, top + TITLE_HEIGHT - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return grid

