"""The Mask DINO meta-architecture (Li et al. 2022, arXiv 2206.02777) for detectron2."""

from typing import Dict, List, Optional, Sequence

import torch
from detectron2.modeling import META_ARCH_REGISTRY, Backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import BitMasks, Boxes, ImageList, Instances
from torch import nn
from torch.nn import functional as F

from brainseg.modeling.postprocessing import DEFAULT_MASK_THRESHOLD, TUMOUR_PROBABILITY, probabilities_to_instances, tumour_mask

from .box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, masks_to_boxes
from .criterion import SetCriterion
from .matrix_nms import matrix_nms
from .pixel_decoder import MaskDINOPixelDecoder
from .transformer_decoder import MaskDINODecoder

__all__ = ["MaskDINO"]


@META_ARCH_REGISTRY.register()
class MaskDINO(nn.Module):
    """Backbone -> pixel decoder -> Mask DINO decoder; set criterion in training,
    instance and semantic segmentation in inference.

    The decoder's last class is a "stuff" background class (as stuff classes in Mask DINO's
    panoptic setting): in training every image gets one extra target, the image region
    outside all objects. Semantic inference then compares query-predicted background and
    object maps on the same (focal-loss) score scale, with no probability threshold;
    instance inference uses the object ("thing") classes only.

    Inputs follow detectron2: a list of dicts with "image" ``(C, H, W)`` (uint8 or float, in
    the channel order of ``pixel_mean``), in training "instances" (``gt_classes``,
    ``gt_boxes`` XYXY absolute, ``gt_masks`` as :class:`BitMasks`), optional "height"/"width"
    of the wanted output.

    Args:
        backbone: a detectron2 backbone giving the pixel decoder's input features.
        pixel_decoder: the multi-scale encoder / mask-feature module.
        transformer_decoder: the query decoder; ``num_classes`` = object classes + 1 (background).
        criterion: the training losses.
        pixel_mean, pixel_std: per-channel normalisation of the input image.
        size_divisibility: pad the batch to a multiple of this.
        test_topk_per_image: instances kept per image at inference.
        box_source: "head" (boxes of the box head) or "mask" (tight boxes of the masks).
        matrix_nms_sigma: if set, decay the scores of duplicate instance masks with Matrix NMS
            (an addition to the NMS-free Mask DINO, for short schedules whose queries have not
            yet learned to suppress duplicates).
        split_components: split every query's mask into its 8-connected components, each an
            instance scored by the query's class score x its own mean mask probability (LGG
            annotates one instance per connected component; one query often covers several).
            Boxes are the components' tight boxes, so this needs ``box_source="mask"``.
            Matrix NMS, when on, runs on the components.
        mask_threshold: mask probability above which a pixel belongs to an instance mask (and, with
            one object class, the tumour probability above which a pixel is tumour for Dice,
            overlays and predict; see :mod:`brainseg.modeling.postprocessing`).
        instance_on, semantic_on: which inference outputs to produce.
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        pixel_decoder: MaskDINOPixelDecoder,
        transformer_decoder: MaskDINODecoder,
        criterion: SetCriterion,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int = 32,
        test_topk_per_image: int = 100,
        box_source: str = "head",
        matrix_nms_sigma: Optional[float] = None,
        split_components: bool = False,
        mask_threshold: float = DEFAULT_MASK_THRESHOLD,
        instance_on: bool = True,
        semantic_on: bool = True,
    ):
        super().__init__()
        if box_source not in ("head", "mask"):
            raise ValueError(f"MaskDINO: box_source must be 'head' or 'mask', got {box_source!r}")
        if split_components and box_source != "mask":
            raise ValueError("MaskDINO: split_components=True needs box_source='mask' (component boxes)")
        if len(pixel_mean) != len(pixel_std):
            raise ValueError(
                f"MaskDINO: pixel_mean ({len(pixel_mean)}) and pixel_std ({len(pixel_std)}) lengths differ"
            )
        if transformer_decoder.num_classes < 2 or transformer_decoder.num_stuff_classes != 1:
            raise ValueError(
                "MaskDINO: the decoder must have the object classes plus one background stuff class "
                f"(num_classes >= 2, num_stuff_classes == 1), got num_classes={transformer_decoder.num_classes}, "
                f"num_stuff_classes={transformer_decoder.num_stuff_classes}"
            )
        _check_feature_shapes(backbone, pixel_decoder)
        self.num_thing_classes = transformer_decoder.num_classes - 1
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.transformer_decoder = transformer_decoder
        self.criterion = criterion
        self.size_divisibility = size_divisibility
        self.test_topk_per_image = test_topk_per_image
        self.box_source = box_source
        self.matrix_nms_sigma = matrix_nms_sigma
        self.split_components = split_components
        self.mask_threshold = mask_threshold
        self.instance_on = instance_on
        self.semantic_on = semantic_on
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise and pad the images of a batch."""
        images = [(x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: detectron2 dataset-mapper outputs.

        Returns:
            In training, a dict of weighted losses. In inference, one dict per image with
            "instances" (``pred_masks`` bool, ``pred_boxes``, ``scores``, ``pred_classes``) and
            "sem_seg" ``(K + 1, H, W)`` probabilities (background first, then the K object
            classes), at the image's "height"/"width".
        """
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        mask_features, multi_scale_features = self.pixel_decoder(features)
        if self.training:
            if any("instances" not in x for x in batched_inputs):
                raise KeyError("MaskDINO: training inputs need 'instances' (gt_classes, gt_boxes, gt_masks)")
            targets = self.prepare_targets([x["instances"].to(self.device) for x in batched_inputs], images)
            outputs = self.transformer_decoder(multi_scale_features, mask_features, targets)
            return self.criterion(outputs, targets)
        outputs = self.transformer_decoder(multi_scale_features, mask_features)
        return self.inference(outputs, batched_inputs, images)

    def prepare_targets(self, instances: List[Instances], images: ImageList) -> List[Dict[str, torch.Tensor]]:
        """Ground truth in the model's frame: labels, normalised cxcywh boxes and masks padded
        to the batch tensor (all relative to the padded size), objects first, then the
        background target (label ``num_thing_classes``: the image minus all objects)."""
        pad_h, pad_w = images.tensor.shape[-2:]
        scale = torch.tensor([pad_w, pad_h, pad_w, pad_h], dtype=torch.float32, device=images.tensor.device)
        targets = []
        for inst, (height, width) in zip(instances, images.image_sizes):
            if not isinstance(inst.gt_masks, BitMasks):
                raise TypeError(f"MaskDINO: gt_masks must be BitMasks, got {type(inst.gt_masks).__name__}")
            masks = inst.gt_masks.tensor.bool()
            background = torch.zeros((1, pad_h, pad_w), dtype=torch.bool, device=masks.device)
            background[:, :height, :width] = True
            padded = masks.new_zeros((len(masks), pad_h, pad_w))
            padded[:, :height, :width] = masks[:, :height, :width]
            background &= ~padded.any(dim=0, keepdim=True)
            boxes = inst.gt_boxes.tensor.float()
            labels = inst.gt_classes.long()
            if background.any():
                padded = torch.cat([padded, background])
                boxes = torch.cat([boxes, masks_to_boxes(background)])
                labels = torch.cat([labels, labels.new_full((1,), self.num_thing_classes)])
            targets.append({"labels": labels, "boxes": box_xyxy_to_cxcywh(boxes / scale), "masks": padded})
        return targets

    def inference(self, outputs: Dict, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        """Turn the last layer's predictions into per-image results at the output size."""
        mask_logits = F.interpolate(
            outputs["pred_masks"], size=images.tensor.shape[-2:], mode="bilinear", align_corners=False
        )
        results = []
        for i, image_size in enumerate(images.image_sizes):
            height = batched_inputs[i].get("height", image_size[0])
            width = batched_inputs[i].get("width", image_size[1])
            masks = sem_seg_postprocess(mask_logits[i], image_size, height, width)  # (Q, H, W)
            scores = outputs["pred_logits"][i].sigmoid()  # (Q, K + 1), background last
            result = {}
            if self.semantic_on:
                result["sem_seg"] = semantic_inference(scores, masks)
                if self.num_thing_classes == 1:
                    result[TUMOUR_PROBABILITY] = result["sem_seg"][1]
            if self.instance_on:
                boxes = box_cxcywh_to_xyxy(outputs["pred_boxes"][i]) * torch.tensor(
                    [images.tensor.shape[-1], images.tensor.shape[-2]] * 2, device=masks.device
                )
                boxes = boxes * torch.tensor([width / image_size[1], height / image_size[0]] * 2, device=masks.device)
                result["instances"] = self.instance_inference(
                    scores[:, : self.num_thing_classes], masks, boxes, (height, width)
                )
            results.append(result)
        return results

    def instance_inference(
        self, scores: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor, image_size: Sequence[int]
    ) -> Instances:
        """Top-k (query, class) pairs as instances (or their connected components).

        Args:
            scores: ``(Q, K)`` class probabilities.
            masks: ``(Q, H, W)`` mask logits at the output size.
            boxes: ``(Q, 4)`` XYXY boxes of the box head at the output size.
            image_size: output ``(H, W)``.

        Returns:
            Instances with ``pred_masks`` (bool), ``pred_boxes``, ``scores`` = class score x mean
            mask probability inside the mask (decayed by Matrix NMS when enabled), ``pred_classes``.
        """
        num_classes = scores.shape[1]
        top_scores, top_index = scores.flatten().topk(min(self.test_topk_per_image, scores.numel()))
        query = torch.div(top_index, num_classes, rounding_mode="floor")
        labels = top_index % num_classes
        result = Instances(tuple(image_size))
        if self.split_components:
            parts = [probabilities_to_instances(prob, threshold=self.mask_threshold) for prob in masks[query].sigmoid()]
            counts = torch.tensor([len(part) for part in parts], device=scores.device)
            result.pred_masks = torch.cat([part.pred_masks for part in parts])
            result.pred_boxes = Boxes.cat([part.pred_boxes for part in parts])
            result.scores = top_scores.repeat_interleave(counts) * torch.cat([part.scores for part in parts])
            labels = labels.repeat_interleave(counts)
        else:
            prob = masks[query].sigmoid()
            binary = tumour_mask(prob, self.mask_threshold)
            mask_scores = (prob * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
            result.pred_masks = binary
            if self.box_source == "mask":
                result.pred_boxes = BitMasks(binary).get_bounding_boxes()
            else:
                result.pred_boxes = Boxes(boxes[query])
                result.pred_boxes.clip(tuple(image_size))
            result.scores = top_scores * mask_scores
        if self.matrix_nms_sigma is not None:
            result.scores = matrix_nms(result.pred_masks, result.scores, labels, sigma=self.matrix_nms_sigma)
        result.pred_classes = labels
        return result


def semantic_inference(scores: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel class probabilities from query masks weighted by class scores (Mask DINO).

    Each class map is ``sum_q score(q, c) * sigmoid(mask_q)``; the maps are normalised to sum
    to one per pixel (all-zero pixels count as background).

    Args:
        scores: ``(Q, K + 1)`` class probabilities, the last class being background.
        mask_logits: ``(Q, H, W)`` mask logits.

    Returns:
        ``(K + 1, H, W)`` probabilities, channel 0 = background, then the K object classes.
    """
    maps = torch.einsum("qc,qhw->chw", scores, mask_logits.sigmoid())
    maps = torch.cat([maps[-1:], maps[:-1]])
    total = maps.sum(dim=0, keepdim=True)
    maps[0] = torch.where(total[0] > 0, maps[0], torch.ones_like(maps[0]))
    return maps / maps.sum(dim=0, keepdim=True)


def _check_feature_shapes(backbone: Backbone, pixel_decoder: MaskDINOPixelDecoder) -> None:
    """Fail early, naming the feature, when the pixel decoder expects other backbone shapes."""
    produced = backbone.output_shape()
    for name, spec in pixel_decoder.input_shape.items():
        if name not in produced:
            raise KeyError(f"MaskDINO: pixel decoder needs backbone feature {name!r}; backbone gives {list(produced)}")
        if produced[name].channels != spec.channels or produced[name].stride != spec.stride:
            raise ValueError(
                f"MaskDINO: backbone feature {name!r} has channels={produced[name].channels}, stride={produced[name].stride} "
                f"but the pixel decoder was built for channels={spec.channels}, stride={spec.stride}"
            )
