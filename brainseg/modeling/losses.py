"""Losses for one-logit (tumour vs background) segmentation with an ignore label.

All losses take ``logits`` (B, 1, H, W) and ``targets`` (B, H, W) holding 0/1, where pixels
equal to ``ignore_label`` (255, detectron2's convention) count for nothing, and return a scalar.
"""

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DiceLoss", "BCEDiceLoss", "FocalLoss", "soft_dice"]


def _flatten_valid(
    logits: torch.Tensor, targets: torch.Tensor, ignore_label: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check shapes and return per-image flattened logits, float targets and a validity mask,
    each (B, H*W); ignored pixels have target 0 and mask 0."""
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"expected logits of shape (B, 1, H, W), got {tuple(logits.shape)}")
    if targets.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"targets of shape {tuple(targets.shape)} do not match logits of shape {tuple(logits.shape)}")
    logits = logits.flatten(1).float()
    targets = targets.flatten(1)
    valid = targets != ignore_label
    return logits, (targets * valid).to(logits.dtype), valid.to(logits.dtype)


def soft_dice(
    probs: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, *, per_image: bool, smooth: float
) -> torch.Tensor:
    """Soft Dice ``(2 sum(p t) + s) / (sum(p) + sum(t) + s)`` over the valid pixels.

    Args:
        probs, targets, valid: (B, N) probabilities, 0/1 targets and 0/1 validity.
        per_image: Dice of each image averaged over the batch (empty images then score
            ``s / (sum(p) + s)``, pushing them towards an empty prediction), else one Dice over
            all pixels of the batch.
        smooth: the smoothing term ``s``.

    Returns:
        A scalar in [0, 1].
    """
    probs = probs * valid
    dims = 1 if per_image else (0, 1)
    intersection = (probs * targets).sum(dims)
    denominator = probs.sum(dims) + targets.sum(dims)
    return ((2 * intersection + smooth) / (denominator + smooth)).mean()


class DiceLoss(nn.Module):
    """``1 - soft Dice`` of the sigmoid probabilities."""

    def __init__(self, *, per_image: bool = True, smooth: float = 1e-5, ignore_label: int = 255):
        """
        Args:
            per_image: average the Dice of each image (default) or compute one batch Dice.
            smooth: smoothing term of the Dice ratio.
            ignore_label: target value of pixels to ignore.
        """
        super().__init__()
        self.per_image = per_image
        self.smooth = smooth
        self.ignore_label = ignore_label

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets, valid = _flatten_valid(logits, targets, self.ignore_label)
        dice = soft_dice(logits.sigmoid(), targets, valid, per_image=self.per_image, smooth=self.smooth)
        return 1 - dice


class BCEDiceLoss(DiceLoss):
    """The UNeXt recipe: ``bce_weight * BCE + (1 - soft Dice)``, BCE averaged over the valid
    pixels and the Dice per image averaged over the batch (by default)."""

    def __init__(self, *, bce_weight: float = 0.5, **dice_kwargs):
        """
        Args:
            bce_weight: weight of the binary cross-entropy term.
            **dice_kwargs: ``per_image``, ``smooth``, ``ignore_label`` of :class:`DiceLoss`.
        """
        super().__init__(**dice_kwargs)
        self.bce_weight = bce_weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets, valid = _flatten_valid(logits, targets, self.ignore_label)
        bce = F.binary_cross_entropy_with_logits(logits, targets, weight=valid, reduction="sum")
        bce = bce / valid.sum().clamp(min=1)
        dice = soft_dice(logits.sigmoid(), targets, valid, per_image=self.per_image, smooth=self.smooth)
        return self.bce_weight * bce + (1 - dice)


class FocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al. 2017) averaged over the valid pixels:
    ``-alpha_t (1 - p_t)^gamma log(p_t)``."""

    def __init__(self, *, alpha: float = 0.25, gamma: float = 2.0, ignore_label: int = 255):
        """
        Args:
            alpha: weight of the positive class in [0, 1] (negatives get ``1 - alpha``);
                a negative value disables the weighting.
            gamma: focusing exponent (0 gives plain BCE).
            ignore_label: target value of pixels to ignore.
        """
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma
        self.ignore_label = ignore_label

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets, valid = _flatten_valid(logits, targets, self.ignore_label)
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        probs = logits.sigmoid()
        p_t = probs * targets + (1 - probs) * (1 - targets)
        loss = bce * (1 - p_t) ** self.gamma
        if self.alpha >= 0:
            loss = loss * (self.alpha * targets + (1 - self.alpha) * (1 - targets))
        return (loss * valid).sum() / valid.sum().clamp(min=1)
