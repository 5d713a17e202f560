"""Binary tumour masks from model outputs and from dataset records, shared by the evaluator
and the overlay figures so that both score exactly the same pixels."""

from typing import Any, Dict, Tuple

import numpy as np
import torch

from brainseg.data.io import read_lgg_mask

from .metrics import tumour_probability

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
    threshold: float = 0.5,
    score_threshold: float = 0.5,
) -> np.ndarray:
    """The predicted tumour mask of one slice.

    Args:
        record: the slice's dataset record (``height``/``width`` are checked when present).
        output: the model's output for the slice: ``sem_seg`` (2, H, W) (background, tumour)
            scores and/or ``instances`` with ``pred_masks`` and ``scores``.
        mask_source: "auto" (``sem_seg`` if present, else ``instances``), "sem_seg" or
            "instances".
        threshold: the mask is tumour probability > ``threshold`` (``sem_seg``).
        score_threshold: instances with score >= this are united (``instances``).

    Returns:
        np.ndarray: (H, W) bool.

    Raises:
        KeyError: the output lacks what ``mask_source`` needs.
        ValueError: unknown ``mask_source``; prediction size differs from the record's.
    """
    if mask_source == "auto":
        use_sem_seg, needed = "sem_seg" in output, "'sem_seg' or 'instances'"
    elif mask_source in MASK_SOURCES:
        use_sem_seg, needed = mask_source == "sem_seg", repr(mask_source)
    else:
        raise ValueError(f"mask_source must be one of {MASK_SOURCES}; got {mask_source!r}")
    if ("sem_seg" if use_sem_seg else "instances") not in output:
        raise KeyError(
            f"mask_source={mask_source!r} needs {needed} in the model output for "
            f"{describe_record(record)}; the output has {sorted(output)}"
        )
    if use_sem_seg:
        mask = tumour_probability(output["sem_seg"].detach().cpu()) > threshold
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

    Taken from the record's ``sem_seg`` tensor (values 0/1, as the dataset mapper gives it)
    when it has the prediction's ``shape``, otherwise read from ``sem_seg_file_name``
    (0/255 or 0/1 on disk).

    Args:
        record: the slice's dataset record.
        shape: (H, W) of the prediction.

    Returns:
        np.ndarray: (H, W) bool.
    """
    sem_seg = record.get("sem_seg")
    if sem_seg is not None and tuple(sem_seg.shape) == tuple(shape):
        sem_seg = torch.as_tensor(sem_seg)
        if bool(((sem_seg != 0) & (sem_seg != 1)).any()):
            raise ValueError(f"'sem_seg' of {describe_record(record)} must hold 0/1 values")
        return (sem_seg == 1).cpu().numpy()
    if "sem_seg_file_name" not in record:
        raise KeyError(f"need 'sem_seg_file_name' or 'sem_seg' in the record of {describe_record(record)}")
    return read_lgg_mask(record["sem_seg_file_name"], expected_shape=shape).astype(bool)
