"""LGG slices -> detectron2 dataset dicts (one record per slice, instances per component)."""
import os
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Sequence, Set, Union

from ..utils.errors import LGGDataError
from .instances import mask_to_annotations
from .io import read_lgg_image, read_lgg_mask
from .lgg import LGGSlice, discover_lgg
from .split import DEFAULT_SPLIT_RATIOS, DEFAULT_SPLIT_SEED, split_patients

__all__ = ["load_lgg_records", "slice_record", "select_patients"]


def slice_record(item: LGGSlice, image_id: int, *, polygons: bool = False) -> dict:
    """Read and validate one slice and build its dataset dict.

    Args:
        item: the slice's paths and position.
        image_id: id of the slice, unique within the dataset.
        polygons: store instance segmentations as polygons instead of compressed RLE.

    Returns:
        dict: detectron2 dataset dict with ``file_name``, ``sem_seg_file_name``, ``height``,
        ``width``, ``image_id``, ``patient_id``, ``slice_index`` and ``annotations``.
    """
    image = read_lgg_image(item.image_path)
    height, width = image.shape[:2]
    mask = read_lgg_mask(item.mask_path, expected_shape=(height, width))
    return {
        "file_name": item.image_path,
        "sem_seg_file_name": item.mask_path,
        "height": height,
        "width": width,
        "image_id": image_id,
        "patient_id": item.patient_id,
        "slice_index": item.slice_index,
        "annotations": mask_to_annotations(mask, polygons=polygons),
    }


def select_patients(
    available: Sequence[str],
    split: Optional[str],
    *,
    ratios: Sequence[float],
    seed: int,
    patients: Optional[Sequence[str]],
    root: Union[str, os.PathLike],
) -> Optional[Set[str]]:
    """The patients a loader keeps: an explicit list, one split of the ratio split, or all (None).

    Args:
        available: the patient ids of the dataset.
        split: "train", "val", "test" or None.
        ratios, seed: the patient split (see :func:`brainseg.data.split.split_patients`).
        patients: explicit patient ids (e.g. one cross-validation fold), instead of ``split``.
        root: the dataset root, for error messages.

    Returns:
        the set of patient ids to keep, or None for every patient.

    Raises:
        ValueError: both ``split`` and ``patients``, or an unknown split.
        LGGDataError: ``patients`` names patients that the dataset does not have.
    """
    if patients is not None:
        if split is not None:
            raise ValueError(f"give a split or a patient list, not both (split '{split}')")
        unknown = sorted(set(map(str, patients)) - set(available))
        if unknown:
            raise LGGDataError(f"{len(unknown)} patient(s) not in the dataset {root}: {', '.join(unknown)}")
        return set(map(str, patients))
    if split is None:
        return None
    splits = split_patients(list(available), ratios=ratios, seed=seed)
    if split not in splits:
        raise ValueError(f"unknown split '{split}'; expected one of {sorted(splits)}")
    return set(splits[split])


def load_lgg_records(
    root: Union[str, os.PathLike],
    split: Optional[str] = None,
    *,
    ratios: Sequence[float] = DEFAULT_SPLIT_RATIOS,
    seed: int = DEFAULT_SPLIT_SEED,
    polygons: bool = False,
    num_threads: Optional[int] = None,
    patients: Optional[Sequence[str]] = None,
) -> List[dict]:
    """Discover an LGG dataset and return the dataset dicts of one split, of some patients, or
    of all slices.

    Image ids number all slices of the dataset in (patient, slice) order, independently of the
    split, so they agree with the COCO files written by the converter.

    Args:
        root: dataset root (see :func:`brainseg.data.lgg.find_kaggle_root`).
        split: "train", "val", "test", or None for every slice.
        ratios, seed: the patient split (see :func:`brainseg.data.split.split_patients`).
        polygons: polygons instead of RLE in the annotations.
        num_threads: decoding threads (PIL releases the GIL); default: the CPU count.
        patients: keep these patients (e.g. one cross-validation fold) instead of a split; an
            unknown patient is an :class:`LGGDataError`.

    Returns:
        list[dict]: records sorted by patient and slice index.
    """
    _, found = discover_lgg(root)
    keep = select_patients([p.patient_id for p in found], split, ratios=ratios, seed=seed, patients=patients,
                           root=root)
    jobs = []
    image_id = 0
    for patient in found:
        for item in patient.slices:
            if keep is None or patient.patient_id in keep:
                jobs.append((item, image_id))
            image_id += 1
    workers = num_threads or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: slice_record(job[0], job[1], polygons=polygons), jobs))
