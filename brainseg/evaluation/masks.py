"""Binary tumour masks from model outputs and from dataset records, shared by the evaluator
and the overlay figures so that both score exactly the same pixels."""

from typing import Any, Dict, Tuple

import numpy as np
import torch

from brainseg.data.instances import annotations_to_mask
from brainseg.data.io import read_lgg_mask

from brainseg.modeling.postprocessing import DEFAULT_MASK_THRESHOLD, TUMOUR_PROBABILITY, tumour_mask, tumour_probability

__all__ = ["MASK_SOURCES", "prediction_mask", "truth_mask", "describe_record"]

MASK_SOURCES = ("auto", "sem_seg", "instances")


def describe_record(record: Dict[str, Any]) -> str:
    """A short name of a dataset record for error messages (its file name or image id)."""
    return str(record.get("file_name", record.get("image_id", "<record without file_name>")))


def prediction_mask(
    record: Dict[str, Any],
    output: Dict[str, Any],
    *,
    mask_source: str = "auto",
    threshold: float = DEFAULT_MASK_THRESHOLD,
    score_threshold: float = 0.5,
) -> np.ndarray:
    """The predicted tumour mask of one slice.

    Args:
        record: the slice's dataset record (``height``/``width`` are checked when present).
        output: the model's output for the slice: the tumour probability (``tumour_probability``,
            or ``sem_seg`` (2, H, W) scores; see
            :func:`brainseg.modeling.postprocessing.tumour_probability`) and/or ``instances`` with
            ``pred_masks`` and ``scores``.
        mask_source: "auto" (the probability if present, else ``instances``), "sem_seg" (the
            probability) or "instances".
        threshold: the model's ``mask_threshold`` (``sem_seg``; see
            :func:`brainseg.modeling.postprocessing.tumour_mask`).
        score_threshold: instances with score >= this are united (``instances``).

    Returns:
        np.ndarray: (H, W) bool.

    Raises:
        KeyError: the output lacks what ``mask_source`` needs.
        ValueError: unknown ``mask_source``; prediction size differs from the record's.
    """
    if mask_source == "auto":
        use_sem_seg = TUMOUR_PROBABILITY in output or "sem_seg" in output
        needed = f"'{TUMOUR_PROBABILITY}', 'sem_seg' or 'instances'"
    elif mask_source in MASK_SOURCES:
        use_sem_seg, needed = mask_source == "sem_seg", repr(mask_source)
    else:
        raise ValueError(f"mask_source must be one of {MASK_SOURCES}; got {mask_source!r}")
    has_probability = TUMOUR_PROBABILITY in output or "sem_seg" in output
    if not (has_probability if use_sem_seg else "instances" in output):
        raise KeyError(
            f"mask_source={mask_source!r} needs {needed} in the model output for "
            f"{describe_record(record)}; the output has {sorted(output)}"
        )
    if use_sem_seg:
        mask = tumour_mask(tumour_probability(output).detach().cpu(), threshold)
    else:
        instances = output["instances"].to("cpu")
        if not instances.has("pred_masks"):
            raise KeyError(f"'instances' output for {describe_record(record)} has no pred_masks")
        masks = instances.pred_masks[instances.scores >= score_threshold]
        mask = masks.bool().any(dim=0) if len(masks) else torch.zeros(instances.image_size, dtype=torch.bool)
    mask = mask.numpy()
    expected = (record.get("height", mask.shape[0]), record.get("width", mask.shape[1]))
    if mask.shape != tuple(expected):
        raise ValueError(
            f"prediction for {describe_record(record)} is {mask.shape[0]}x{mask.shape[1]}; "
            f"the record says {expected[0]}x{expected[1]}"
        )
    return mask


def truth_mask(record: Dict[str, Any], shape: Tuple[int, int]) -> np.ndarray:
    """The ground-truth tumour mask of one slice.

    Taken from the record's ``sem_seg`` tensor when it has the prediction's ``shape`` (values 0/1
    as brainseg's mapper gives them, or the raw 0/255 of the file that detectron2's own
    DatasetMapper passes on), otherwise read from ``sem_seg_file_name`` (0/255 or 0/1 on disk), or
    else rasterised from the record's ``annotations`` at ``shape`` (NIfTI slices).

    Args:
        record: the slice's dataset record.
        shape: (H, W) of the prediction.

    Returns:
        np.ndarray: (H, W) bool.
    """
    sem_seg = record.get("sem_seg")
    if sem_seg is not None and tuple(sem_seg.shape) == tuple(shape):
        sem_seg = torch.as_tensor(sem_seg)
        for tumour in (1, 255):  # 0/1 from brainseg's mapper; raw 0/255 from detectron2's DatasetMapper
            if not bool(((sem_seg != 0) & (sem_seg != tumour)).any()):
                return (sem_seg == tumour).cpu().numpy()
        raise ValueError(f"'sem_seg' of {describe_record(record)} must hold 0/1 (or 0/255) values")
    if "sem_seg_file_name" in record:
        return read_lgg_mask(record["sem_seg_file_name"], expected_shape=shape).astype(bool)
    if "annotations" in record:  # e.g. NIfTI slices, whose truth lives in the dataset's annotations
        return annotations_to_mask(record["annotations"], *shape).astype(bool)
    raise KeyError(f"need 'sem_seg', 'sem_seg_file_name' or 'annotations' in the record of {describe_record(record)}")
