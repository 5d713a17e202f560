"""Dataset mapper for LGG slices: read, augment image and mask together, build targets."""
import copy
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances

from .instances import annotations_to_mask, connected_components
from .io import read_lgg_image, read_lgg_mask
from .normalization import check_normalization, normalize_intensities, patient_folder_intensity_range
from .samplers import AUG_SEED_KEY
from .volume_dataset import read_volume_slice

__all__ = ["LGGDatasetMapper", "build_lgg_augmentations", "build_lgg_test_augmentations", "mask_to_instances",
           "read_record_image", "Rot90Transform", "RandomRot90"]


class Rot90Transform(T.Transform):
    """Rotate by ``k`` quarter turns counter-clockwise (exact, no interpolation)."""

    def __init__(self, k: int, height: int, width: int):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.rot90(img, self.k, axes=(0, 1)))

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """Rotate (x, y) points of an image of the original size, as np.rot90 moves pixels."""
        coords = np.asarray(coords, dtype=np.float64).copy()
        h, w = self.height, self.width
        for _ in range(self.k % 4):
            x, y = coords[:, 0].copy(), coords[:, 1].copy()
            coords[:, 0], coords[:, 1] = y, w - x
            h, w = w, h
        return coords

    def inverse(self) -> T.Transform:
        k = self.k % 4
        h, w = (self.width, self.height) if k % 2 else (self.height, self.width)
        return Rot90Transform((4 - k) % 4, h, w)


class RandomRot90(T.Augmentation):
    """Apply a random multiple of 90 degrees (0, 90, 180 or 270) with probability ``prob``."""

    def __init__(self, prob: float = 0.5):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        if self._rand_range() >= self.prob:
            return T.NoOpTransform()
        k = int(np.random.randint(1, 4))
        return Rot90Transform(k, image.shape[0], image.shape[1])


def build_lgg_augmentations(
    *,
    horizontal_flip: bool = True,
    vertical_flip: bool = True,
    rot90_prob: float = 0.5,
    rotation_degrees: float = 15.0,
    brightness: Tuple[float, float] = (0.9, 1.1),
    contrast: Tuple[float, float] = (0.9, 1.1),
    resize_to: Optional[int] = None,
) -> List[T.Augmentation]:
    """The training augmentations for LGG slices (all detectron2 transforms).

    Geometric transforms move image and mask together (the mask with nearest-neighbour
    interpolation); photometric ones touch only the image.

    Args:
        horizontal_flip, vertical_flip: random flips with probability 0.5.
        rot90_prob: probability of a random quarter-turn rotation (0 disables).
        rotation_degrees: small-angle rotation range (+/-), 0 disables.
        brightness, contrast: intensity factor ranges, (1, 1) disables.
        resize_to: finally resize to ``resize_to`` x ``resize_to`` (see
            :func:`build_lgg_test_augmentations`); None keeps the size.

    Returns:
        list of detectron2 Augmentations.
    """
    augs: List[T.Augmentation] = []
    if horizontal_flip:
        augs.append(T.RandomFlip(prob=0.5, horizontal=True, vertical=False))
    if vertical_flip:
        augs.append(T.RandomFlip(prob=0.5, horizontal=False, vertical=True))
    if rot90_prob > 0:
        augs.append(RandomRot90(prob=rot90_prob))
    if rotation_degrees > 0:
        augs.append(T.RandomRotation([-rotation_degrees, rotation_degrees], expand=False))
    if tuple(brightness) != (1.0, 1.0):
        augs.append(T.RandomBrightness(*brightness))
    if tuple(contrast) != (1.0, 1.0):
        augs.append(T.RandomContrast(*contrast))
    return augs + build_lgg_test_augmentations(resize_to=resize_to)


def build_lgg_test_augmentations(*, resize_to: Optional[int] = None) -> List[T.Augmentation]:
    """Evaluation-time transforms: none, or a resize to ``resize_to`` x ``resize_to`` (bilinear
    image, nearest mask) to run a model at a lower resolution. Models return predictions at the
    record's original ``height``/``width``, so metrics are always computed at full resolution."""
    return [T.Resize((resize_to, resize_to))] if resize_to else []


def read_record_image(record: dict, intensity_normalization: str = "none") -> np.ndarray:
    """The image of a dataset record, normalised as asked.

    Args:
        record: an LGG slice record (``file_name`` a TIFF) or a NIfTI slice record
            (``volume_files``, ``slice_index``, ``intensity_range``; see
            :mod:`brainseg.data.volume_dataset`).
        intensity_normalization: "none" or "volume" (:mod:`brainseg.data.normalization`);
            NIfTI slices are always normalised per volume.

    Returns:
        (H, W, 3): uint8 for a TIFF slice without normalisation, else float32 on the 0..255 scale.
    """
    if "volume_files" in record:
        image = read_volume_slice(record["volume_files"], int(record["slice_index"]))
        return normalize_intensities(image, record["intensity_range"])
    image = read_lgg_image(record["file_name"])
    if check_normalization(intensity_normalization) == "volume":
        return normalize_intensities(image, patient_folder_intensity_range(str(Path(record["file_name"]).parent)))
    return image


class LGGDatasetMapper:
    """Turn an LGG dataset dict (TIFF slice or NIfTI slice) into model inputs.

    Output fields (besides the record's own): ``image`` tensor (3, H, W) in file channel order
    (uint8 for TIFF slices without normalisation, else float32 on the 0..255 scale, see
    :mod:`brainseg.data.normalization`), ``sem_seg`` int64 tensor (H, W) with values {0, 1}, and
    in training ``instances`` (``gt_boxes``, ``gt_classes``, ``gt_masks`` as BitMasks), one per
    connected component of the (augmented) mask.
    """

    def __init__(self, *, is_train: bool, augmentations: Optional[Sequence[T.Augmentation]] = None,
                 intensity_normalization: str = "none"):
        """
        Args:
            is_train: training mode (random augmentations by default, ``instances`` built).
            augmentations: detectron2 augmentations; default :func:`build_lgg_augmentations`
                in training and none in evaluation.
            intensity_normalization: "none" (TIFF intensities as they are) or "volume" (per
                patient and channel, :func:`brainseg.data.normalization.normalize_intensities`).
        """
        self.is_train = is_train
        if augmentations is None:
            augmentations = build_lgg_augmentations() if is_train else []
        self.augmentations = T.AugmentationList(list(augmentations))
        self.intensity_normalization = check_normalization(intensity_normalization)

    def __call__(self, dataset_dict: dict) -> dict:
        record = copy.copy(dataset_dict)
        image = read_record_image(record, self.intensity_normalization)
        height, width = image.shape[:2]
        if "sem_seg_file_name" in record:
            mask = read_lgg_mask(record["sem_seg_file_name"], expected_shape=(height, width))
        else:
            mask = annotations_to_mask(record.get("annotations", []), height, width)
        aug_seed = record.pop(AUG_SEED_KEY, None)
        if self.augmentations.augs:
            if aug_seed is not None:
                # detectron2 augmentations draw from numpy's global RNG: make them a function
                # of the sample's stream position (see brainseg.data.samplers).
                np.random.seed(aug_seed)
            aug_input = T.AugInput(image, sem_seg=mask)
            self.augmentations(aug_input)
            image, mask = aug_input.image, aug_input.sem_seg
        if self.intensity_normalization == "none" and "volume_files" not in record and image.dtype != np.uint8:
            image = np.clip(np.rint(image), 0, 255).astype(np.uint8)  # augmented TIFF intensities
        elif image.dtype != np.uint8:
            image = np.maximum(image, 0).astype(np.float32)
        record["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        record["sem_seg"] = torch.from_numpy(mask.astype(np.int64))
        if self.is_train:
            record.pop("annotations", None)
            record["instances"] = mask_to_instances(mask)
        return record


def mask_to_instances(mask: np.ndarray) -> Instances:
    """detectron2 Instances of a binary mask, one per connected component (possibly none).

    Returns:
        Instances with ``gt_masks`` (BitMasks), ``gt_boxes`` (XYXY, from the masks) and
        ``gt_classes`` (all 0, "tumor").
    """
    height, width = mask.shape
    components = connected_components(mask)
    stacked = np.stack(components) if components else np.zeros((0, height, width), np.uint8)
    masks = BitMasks(torch.from_numpy(stacked).bool())
    instances = Instances((height, width))
    instances.gt_masks = masks
    instances.gt_boxes = masks.get_bounding_boxes()
    instances.gt_classes = torch.zeros(len(components), dtype=torch.int64)
    return instances
