"""Turn a tumour probability map into detectron2 outputs (semantic scores and instances)."""

import cv2
import numpy as np
import torch
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import Boxes, Instances

__all__ = ["probabilities_to_sem_seg", "probabilities_to_instances", "logits_to_probabilities"]


def logits_to_probabilities(logits: torch.Tensor, image_size: tuple, height: int, width: int) -> torch.Tensor:
    """Crop a padded one-channel logit map to the image, resize it to the output size
    (bilinear, as detectron2's semantic segmentor does) and apply the sigmoid.

    Args:
        logits: (1, Hp, Wp) tumour logits of the padded input.
        image_size: (h, w) of the image inside the padded input.
        height, width: the output size (the record's original size).

    Returns:
        (height, width) tumour probabilities.
    """
    return sem_seg_postprocess(logits, image_size, height, width)[0].sigmoid()


def probabilities_to_sem_seg(probs: torch.Tensor) -> torch.Tensor:
    """(H, W) tumour probabilities -> (2, H, W) scores (background, tumour) = (1 - p, p)."""
    return torch.stack([1 - probs, probs])


def probabilities_to_instances(probs: torch.Tensor, *, threshold: float = 0.5) -> Instances:
    """One instance per 8-connected component of ``probs > threshold``.

    Args:
        probs: (H, W) tumour probabilities.
        threshold: probability above which a pixel is tumour.

    Returns:
        ``Instances`` of image size (H, W) on ``probs.device`` with ``pred_masks`` (K, H, W) bool,
        ``pred_boxes`` (XYXY, exclusive right/bottom edges like ``BitMasks.get_bounding_boxes``),
        ``scores`` = mean probability inside each component and ``pred_classes`` = 0,
        ordered by decreasing score.
    """
    height, width = probs.shape
    probs_np = probs.detach().float().cpu().numpy()
    mask = (probs_np > threshold).astype(np.uint8)
    num_labels, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    areas = stats[1:, cv2.CC_STAT_AREA]
    sums = np.bincount(labels.ravel(), weights=probs_np.ravel(), minlength=num_labels)[1:]
    scores = torch.from_numpy(sums / np.maximum(areas, 1)).float()
    order = torch.argsort(scores, descending=True)
    left, top = stats[1:, cv2.CC_STAT_LEFT], stats[1:, cv2.CC_STAT_TOP]
    right, bottom = left + stats[1:, cv2.CC_STAT_WIDTH], top + stats[1:, cv2.CC_STAT_HEIGHT]
    boxes = torch.from_numpy(np.stack([left, top, right, bottom], axis=1).astype(np.float32))
    component_ids = torch.arange(1, num_labels, dtype=torch.int32)[order]
    masks = torch.from_numpy(labels)[None] == component_ids[:, None, None]

    device = probs.device
    instances = Instances((height, width))
    instances.pred_masks = masks.to(device)
    instances.pred_boxes = Boxes(boxes[order].to(device))
    instances.scores = scores[order].to(device)
    instances.pred_classes = torch.zeros(len(order), dtype=torch.int64, device=device)
    return instances
