"""The tumour decision, in one place: a model's per-pixel tumour probability, and the mask
``probability > mask_threshold`` that Dice, COCO instances, overlays, predict and export all use.

Models put their probability map into each eval output under :data:`TUMOUR_PROBABILITY`
(besides detectron2's ``sem_seg`` scores and ``instances``); :func:`tumour_probability` reads it
back, and :func:`tumour_mask` thresholds it. The threshold is the model's ``mask_threshold``
(config ``model.mask_threshold``; the evaluator's threshold interpolates from it)."""

import cv2
import numpy as np
import torch
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import Boxes, Instances

__all__ = [
    "TUMOUR_PROBABILITY",
    "DEFAULT_MASK_THRESHOLD",
    "model_mask_threshold",
    "tumour_probability",
    "tumour_mask",
    "probabilities_to_sem_seg",
    "probabilities_to_instances",
    "logits_to_probabilities",
]

# the eval-output key of the (H, W) tumour probability map
TUMOUR_PROBABILITY = "tumour_probability"
# a pixel is tumour when its probability is above this (a model's default ``mask_threshold``)
DEFAULT_MASK_THRESHOLD = 0.5


def model_mask_threshold(model: torch.nn.Module) -> float:
    """The model's ``mask_threshold`` (DDP-wrapped or not), else :data:`DEFAULT_MASK_THRESHOLD`."""
    model = getattr(model, "module", model)
    return float(getattr(model, "mask_threshold", DEFAULT_MASK_THRESHOLD))


def tumour_probability(output: dict) -> torch.Tensor:
    """The (H, W) tumour probability of one eval output.

    brainseg's models give it under :data:`TUMOUR_PROBABILITY`. Other detectron2 models give
    ``sem_seg`` scores (background, tumour), which are logits in detectron2's convention: their
    softmax over the two channels is taken.

    Args:
        output: one element of a model's eval outputs.

    Returns:
        float (H, W) tensor, on the output's device.

    Raises:
        KeyError: the output has neither key.
        ValueError: ``sem_seg`` is not (2, H, W).
    """
    if TUMOUR_PROBABILITY in output:
        return output[TUMOUR_PROBABILITY].float()
    if "sem_seg" not in output:
        raise KeyError(f"the model output has no '{TUMOUR_PROBABILITY}' nor 'sem_seg' (it has {sorted(output)})")
    scores = output["sem_seg"]
    if scores.ndim != 3 or scores.shape[0] != 2:
        raise ValueError(f"sem_seg scores must have shape (2, H, W) (background, tumour); got {tuple(scores.shape)}")
    return torch.softmax(scores.float(), dim=0)[1]


def tumour_mask(probability: torch.Tensor, threshold: float = DEFAULT_MASK_THRESHOLD) -> torch.Tensor:
    """The tumour mask ``probability > threshold`` (bool, same shape)."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"mask threshold must be in [0, 1); got {threshold}")
    return probability > threshold


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
    if tuple(image_size) == (height, width):  # no resize: bilinear at scale 1 is the identity
        return logits[0, :height, :width].sigmoid()
    return sem_seg_postprocess(logits, image_size, height, width)[0].sigmoid()


def probabilities_to_sem_seg(probs: torch.Tensor) -> torch.Tensor:
    """(H, W) tumour probabilities -> (2, H, W) scores (background, tumour) = (1 - p, p)."""
    return torch.stack([1 - probs, probs])


def probabilities_to_instances(probs: torch.Tensor, *, threshold: float = DEFAULT_MASK_THRESHOLD) -> Instances:
    """One instance per 8-connected component of ``tumour_mask(probs, threshold)``.

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
    probs_cpu = probs.detach().float().cpu()
    probs_np = probs_cpu.numpy()
    mask = tumour_mask(probs_cpu, threshold).numpy().view(np.uint8)
    if mask.any():
        num_labels, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    else:  # no tumour pixel (most slices): no labelling pass
        num_labels, labels, stats = 1, np.zeros(mask.shape, dtype=np.int32), np.zeros((1, 5), dtype=np.int32)
    # per-component sums over the foreground pixels only (the same additions, in the same order, as
    # over all pixels: background pixels only feed label 0)
    foreground = np.flatnonzero(mask)
    foreground_labels = labels.ravel()[foreground]
    areas = stats[1:, cv2.CC_STAT_AREA]
    sums = np.bincount(foreground_labels, weights=probs_np.ravel()[foreground], minlength=num_labels)[1:]
    scores = torch.from_numpy(sums / np.maximum(areas, 1)).float()
    order = torch.argsort(scores, descending=True)
    left, top = stats[1:, cv2.CC_STAT_LEFT], stats[1:, cv2.CC_STAT_TOP]
    right, bottom = left + stats[1:, cv2.CC_STAT_WIDTH], top + stats[1:, cv2.CC_STAT_HEIGHT]
    boxes = torch.from_numpy(np.stack([left, top, right, bottom], axis=1).astype(np.float32))
    # masks[k] = pixels of the k-th component in score order, set from the foreground pixels only
    # (O(H * W), where comparing the label map with every component id costs O(K * H * W))
    rank = np.empty(num_labels, dtype=np.int64)
    rank[1 + order.numpy()] = np.arange(num_labels - 1)
    masks = torch.zeros((num_labels - 1, height * width), dtype=torch.bool)
    masks[torch.from_numpy(rank[foreground_labels]), torch.from_numpy(foreground)] = True
    masks = masks.view(num_labels - 1, height, width)

    device = probs.device
    instances = Instances((height, width))
    instances.pred_masks = masks.to(device)
    instances.pred_boxes = Boxes(boxes[order].to(device))
    instances.scores = scores[order].to(device)
    instances.pred_classes = torch.zeros(len(order), dtype=torch.int64, device=device)
    return instances
