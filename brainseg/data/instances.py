"""Binary tumour mask <-> instance annotations (one instance per connected component)."""
from typing import List

import cv2
import numpy as np
import pycocotools.mask as mask_util
from detectron2.structures import BoxMode

__all__ = ["connected_components", "mask_to_annotations", "mask_to_polygons", "annotations_to_mask"]


def connected_components(mask: np.ndarray) -> List[np.ndarray]:
    """Split a binary mask into its 8-connected components.

    Args:
        mask: (H, W) array, non-zero = foreground.

    Returns:
        list of (H, W) uint8 {0,1} masks, ordered by label (top-left first).
    """
    count, labels = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=8)
    return [(labels == i).astype(np.uint8) for i in range(1, count)]


def mask_to_polygons(component: np.ndarray) -> List[List[float]]:
    """Polygons (COCO ``[x1, y1, x2, y2, ...]``) that rasterise back to ``component`` exactly.

    Contours are traced along pixel boundaries (on a 2x-upsampled mask, each pixel a 2x2
    block, so vertices land on pixel corners). COCO unions the polygons of one annotation, so
    a hole cannot be a polygon of its own: each hole is spliced into its outer ring through a
    bridge traversed twice, which the even-odd fill of the rasteriser cancels out.

    Args:
        component: (H, W) binary mask.

    Returns:
        list of flat polygons, one per outer ring.
    """
    up = np.kron((component > 0).astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return []
    rings = [_corner_ring(c) for c in contours]
    parents = hierarchy[0][:, 3]
    polygons = []
    for index, ring in enumerate(rings):
        if parents[index] != -1:
            continue
        pieces = [ring[:1]]
        for hole_index in np.flatnonzero(parents == index):
            hole = rings[hole_index]
            pieces += [hole, hole[:1], ring[:1]]
        pieces.append(ring[1:])
        polygons.append(np.concatenate(pieces).astype(np.float64).ravel().tolist())
    return polygons


def _corner_ring(contour: np.ndarray) -> np.ndarray:
    """Map a contour traced on the 2x mask onto the original pixel corners.

    Boundary pixels of the 2x mask are even on a block's low side and odd on its high side,
    so ``ceil(p / 2)`` is the pixel corner they border. Repeated vertices are dropped.
    """
    points = (contour.reshape(-1, 2) + 1) // 2
    keep = np.any(points != np.roll(points, 1, axis=0), axis=1)
    return points[keep] if keep.any() else points[:1]


def mask_to_annotations(mask: np.ndarray, *, polygons: bool = False) -> List[dict]:
    """Instance annotations of a binary tumour mask, one per connected component.

    Args:
        mask: (H, W) binary mask.
        polygons: store polygons instead of compressed RLE.

    Returns:
        list of detectron2/COCO annotation dicts with ``bbox`` (XYWH_ABS), ``bbox_mode``,
        ``segmentation`` (RLE with str counts, or polygons), ``area``, ``category_id`` 0 and
        ``iscrowd`` 0.
    """
    annotations = []
    for component in connected_components(mask):
        rle = mask_util.encode(np.asfortranarray(component))
        x, y, w, h = (float(v) for v in mask_util.toBbox(rle))
        segmentation = mask_to_polygons(component) if polygons else {
            "size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")
        }
        annotations.append({
            "bbox": [x, y, w, h],
            "bbox_mode": BoxMode.XYWH_ABS,
            "segmentation": segmentation,
            "area": float(mask_util.area(rle)),
            "category_id": 0,
            "iscrowd": 0,
        })
    return annotations


def annotations_to_mask(annotations: List[dict], height: int, width: int) -> np.ndarray:
    """OR-combine the decoded segmentations of ``annotations`` into one (H, W) {0,1} mask."""
    mask = np.zeros((height, width), np.uint8)
    for ann in annotations:
        segm = ann["segmentation"]
        if isinstance(segm, list):
            rle = mask_util.merge(mask_util.frPyObjects(segm, height, width))
        elif isinstance(segm["counts"], list):
            rle = mask_util.frPyObjects(segm, height, width)
        else:
            rle = segm
        mask |= mask_util.decode(rle).astype(np.uint8)
    return mask
