"""``BrainSegSemantic``: detectron2 meta-architecture around a one-logit segmentation net."""

import logging
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList
from torch import nn

from .fusion import FoldedNetCache
from .postprocessing import (
    DEFAULT_MASK_THRESHOLD,
    TUMOUR_PROBABILITY,
    logits_to_probabilities,
    probabilities_to_instances,
    probabilities_to_sem_seg,
)

__all__ = ["BrainSegSemantic"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class BrainSegSemantic(nn.Module):
    """Semantic segmentation of tumour vs background with a dense net predicting one logit.

    It normalises the mapper's uint8 (C, H, W) images, pads the batch to the net's stride, and
    returns ``{"loss_sem_seg": loss}`` in training (targets from ``"sem_seg"``, padding and
    ``ignore_label`` pixels ignored). In eval it returns, per image and at the record's
    ``height``/``width``, ``"sem_seg"``: (2, H, W) scores (1 - p, p) and ``"instances"``: one per
    8-connected component of ``p > mask_threshold`` (see :func:`probabilities_to_instances`), where
    ``p = sigmoid(logit / temperature)``.

    Built with plain keyword arguments, so it works with LazyCall::

        model = L(BrainSegSemantic)(net=L(UNeXt)(), loss=L(BCEDiceLoss)(),
                                    pixel_mean=[...], pixel_std=[...])
    """

    def __init__(
        self,
        *,
        net: nn.Module,
        loss: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        ignore_label: int = 255,
        mask_threshold: float = DEFAULT_MASK_THRESHOLD,
        temperature: float = 1.0,
        size_divisibility: Optional[int] = None,
        channels_last: bool = True,
        compile_inference: bool = False,
        fuse_for_inference: bool = True,
    ):
        """
        Args:
            net: maps (B, C, H, W) float images to (B, 1, H, W) tumour logits.
            loss: maps (logits (B, 1, H, W), targets (B, H, W)) to a scalar, ignoring
                ``ignore_label`` targets (see :mod:`brainseg.modeling.losses`).
            pixel_mean, pixel_std: per-channel statistics of the uint8 images.
            ignore_label: target value excluded from the loss; also used to pad targets.
            mask_threshold: tumour probability above which a pixel is tumour: for the instances
                here, and for Dice, overlays, predict and export (see :mod:`.postprocessing`).
            temperature: the logits are divided by this before the sigmoid (temperature scaling,
                fitted on the validation split with ``train.fit_temperature``; 1: none).
            size_divisibility: pad batches to multiples of this; default
                ``net.size_divisibility`` (1 if the net has none).
            channels_last: run the net in channels-last memory format (faster convs on CPU).
            compile_inference: run the net through ``torch.compile`` in eval mode; when
                compilation fails it logs a warning and falls back to eager mode.
            fuse_for_inference: eval forwards without gradients run a copy of the net with its
                BatchNorms folded into the preceding convolutions (see :meth:`inference_net`).
        """
        super().__init__()
        if len(pixel_mean) != len(pixel_std):
            raise ValueError(f"pixel_mean {list(pixel_mean)} and pixel_std {list(pixel_std)} differ in length")
        self.net = net
        self.loss = loss
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self.ignore_label = ignore_label
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        self.mask_threshold = mask_threshold
        self.temperature = temperature
        self.size_divisibility = size_divisibility or getattr(net, "size_divisibility", 1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.compile_inference = compile_inference
        self.fuse_for_inference = fuse_for_inference
        # kept out of the module tree so they add nothing to state_dict()
        self.__dict__["_compiled_net"] = None  # (the net it compiles, the compiled net)
        self._folded_net = FoldedNetCache()

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def train(self, mode: bool = True) -> "BrainSegSemantic":
        if mode:
            self._folded_net.clear()  # no stale copy held while training; eval folds the new weights
        return super().train(mode)

    def forward(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor] | List[Dict]:
        """
        Args:
            batched_inputs: dataset-mapper outputs, each with ``"image"`` (uint8 (C, H, W)),
                ``"sem_seg"`` (int64 (H, W) 0/1, required in training) and optionally
                ``"height"``/``"width"`` (output size in eval).

        Returns:
            In training a dict ``{"loss_sem_seg": scalar}``; in eval a list of dicts with
            ``"sem_seg"`` and ``"instances"`` (see the class docstring).
        """
        if self.training and any("sem_seg" not in x for x in batched_inputs):
            raise KeyError("BrainSegSemantic needs 'sem_seg' targets in every training input")
        images = self.preprocess_image(batched_inputs)
        logits = self.run_net(images.tensor)
        if self.training:
            targets = [x["sem_seg"].to(self.device) for x in batched_inputs]
            targets = ImageList.from_tensors(targets, self.size_divisibility, pad_value=self.ignore_label).tensor
            with torch.autocast(logits.device.type, enabled=False):  # the loss in float32 under mixed precision
                return {"loss_sem_seg": self.loss(logits.float(), targets)}
        return [
            self.postprocess(logit, image_size, x.get("height", image_size[0]), x.get("width", image_size[1]))
            for logit, image_size, x in zip(logits, images.image_sizes, batched_inputs)
        ]

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise the images and pad them into one batch (padding is 0 after normalising), as
        ``ImageList.from_tensors`` pads, in the net's memory format. Each image is normalised
        straight into its place in the batch: one pass instead of four (normalise, divide, pad,
        change the memory format)."""
        raw = [x["image"].to(self.device) for x in batched_inputs]
        sizes = [tuple(image.shape[-2:]) for image in raw]
        stride = self.size_divisibility
        height, width = (-(-max(size[i] for size in sizes) // stride) * stride for i in (0, 1))
        shape = (len(raw), raw[0].shape[0], height, width)
        batch = torch.empty(shape, dtype=torch.float32, device=self.device, memory_format=self.memory_format)
        if any(size != (height, width) for size in sizes):
            batch.zero_()
        for image, place in zip(raw, batch):
            place = place[:, : image.shape[-2], : image.shape[-1]]
            torch.sub(image, self.pixel_mean, out=place)
            place.div_(self.pixel_std)
        return ImageList(batch, sizes)

    def inference_net(self) -> nn.Module:
        """The net an eval forward runs: with ``fuse_for_inference`` and gradients disabled, an
        eval-only copy of ``net`` with its BatchNorms folded into the convolutions
        (:func:`~brainseg.modeling.fusion.fold_batchnorm`), folded again whenever a parameter or
        buffer of ``net`` has changed; under autocast its convolution and linear weights are kept
        in the autocast dtype (the same results without a cast per layer and forward). Otherwise
        ``net`` itself (so gradients reach its parameters).
        """
        if not self.fuse_for_inference or torch.is_grad_enabled():
            return self.net
        device_type = self.device.type
        autocast_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        return self._folded_net.get(self.net, matmul_dtype=autocast_dtype)

    def run_net(self, images: torch.Tensor) -> torch.Tensor:
        """Run the net; in eval mode :meth:`inference_net`, compiled if ``compile_inference``
        (eager on failure)."""
        if self.training:
            return self.net(images)
        net = self.inference_net()
        if not self.compile_inference:
            return net(images)
        if self._compiled_net is None or self._compiled_net[0] is not net:
            self.__dict__["_compiled_net"] = (net, torch.compile(net, dynamic=False))
        try:
            return self._compiled_net[1](images)
        except Exception as e:  # compilers fail in many ways (no C++ compiler, unsupported op, ...)
            logger.warning(f"torch.compile of {type(self.net).__name__} failed, running eagerly: {e!r}")
            self.compile_inference = False
            return net(images)

    def postprocess(self, logits: torch.Tensor, image_size: tuple, height: int, width: int) -> Dict:
        """Outputs of one image from its padded (1, Hp, Wp) logits."""
        probs = logits_to_probabilities(logits.float() / self.temperature, image_size, height, width)
        return {
            TUMOUR_PROBABILITY: probs,
            "sem_seg": probabilities_to_sem_seg(probs),
            "instances": probabilities_to_instances(probs, threshold=self.mask_threshold),
        }
