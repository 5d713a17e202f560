"""NIfTI datasets (BraTS layout: one folder per case) as detectron2 datasets of axial slices.

A root holds case folders (see :mod:`brainseg.data.volumes`); each case with a segmentation
becomes one record per axial slice, label = whole tumour (any label > 0). Cases are split by
patient like the LGG data (:func:`brainseg.data.split.split_patients`).

Streaming: the root is indexed once, one case in memory at a time, into
``<root>/brainseg_volume_index.json`` (per case: files, grid, voxel spacing, per-channel
intensity range, and the tumour annotations of each slice as COCO RLE); the index is reused
while the files keep their size and modification time. Training then reads single slices
(:func:`read_volume_slice`), so a 1,250-case set never sits in memory.

Slice cache: a slice of a ``.nii.gz`` cannot be read without decompressing the file up to it
(0.03-0.4 s for a BraTS case's channels), which would starve training. So indexing also writes
each case's axial slices, one compressed array per slice, to ``<case folder>/brainseg_slices.npz``
(a NumPy ``.npz``, about the size of the case's own files); a slice then costs a few
milliseconds. The cache records the size and modification time of the files it was made from
and is ignored (the NIfTI files are read instead) when they no longer match.

Register a root with :func:`brainseg.data.catalog.register_volume_dataset` and train the usual
configs on it by overriding ``dataloader.{train,val,test}.dataset.names``.
"""
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import nibabel as nib
import numpy as np
from detectron2.structures import BoxMode
from nibabel import orientations

from brainseg.utils.errors import LGGDataError
from brainseg.utils.io import atomic_write

from .instances import mask_to_annotations
from .normalization import volume_intensity_range
from .records import select_patients
from .split import DEFAULT_SPLIT_RATIOS, DEFAULT_SPLIT_SEED
from .volumes import VolumeCase, find_cases, load_case, to_slices

__all__ = ["INDEX_FILE", "SLICE_CACHE_FILE", "index_volume_dataset", "load_volume_records", "read_volume_slice"]

logger = logging.getLogger(__name__)

INDEX_FILE = "brainseg_volume_index.json"
SLICE_CACHE_FILE = "brainseg_slices.npz"
_INDEX_VERSION = 2  # 2: indexing writes the slice caches


def _file_stamp(path: Path) -> List[float]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime]


def _case_files(case: VolumeCase) -> List[Path]:
    return case.channel_files() + ([case.segmentation] if case.segmentation else [])


def _slice_cache_path(files: Sequence[Union[str, os.PathLike]]) -> Path:
    return Path(files[0]).parent / SLICE_CACHE_FILE


def _write_slice_cache(files: Sequence[Path], slices: np.ndarray) -> bool:
    """Write a case's (K, H, W, C) float32 slices to its slice cache, one deflated array per
    slice (as int16 when that is exact: most MRI is stored as integers), with the files' stamps.
    A cache that cannot be written is only a warning: slices are then read from the files.

    Returns:
        whether the cache was written.
    """
    compact = slices.astype(np.int16)
    if not np.array_equal(compact, slices):
        compact = slices

    def write(f) -> None:
        # level 1: ~4x faster to write than NumPy's savez_compressed (level 6), a few % larger
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            sources = {"names": np.array([Path(p).name for p in files]),
                       "stamps": np.array([_file_stamp(Path(p)) for p in files], dtype=np.float64)}
            for name, array in [*sources.items(), *((str(k), compact[k]) for k in range(len(compact)))]:
                with archive.open(f"{name}.npy", "w") as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)

    path = _slice_cache_path(files)
    try:
        atomic_write(path, write)
    except OSError as e:
        logger.warning(f"cannot write the slice cache {path} ({e}); training will read slices from the "
                       "NIfTI files, which is slow for .nii.gz")
        return False
    return True


def _read_cached_slice(files: Sequence[Union[str, os.PathLike]], k: int) -> Optional[np.ndarray]:
    """Slice ``k`` from the case's slice cache, or None without a cache made from these files."""
    path = _slice_cache_path(files)
    if not path.is_file():
        return None
    try:
        with np.load(path) as cache:
            if (list(cache["names"]) != [Path(p).name for p in files]
                    or cache["stamps"].tolist() != [_file_stamp(Path(p)) for p in files]):
                return None
            return cache[str(k)].astype(np.float32) if str(k) in cache.files else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def _index_case(case: VolumeCase, root: Path) -> dict:
    """Read one case, describe it (no voxel data kept) and write its slice cache."""
    loaded = load_case(case)
    cached = _write_slice_cache(case.channel_files(), loaded.image)
    annotations = {}
    if loaded.truth is not None:
        for k, mask in enumerate(loaded.truth):
            if mask.any():
                annotations[str(k)] = mask_to_annotations(mask)
    for anns in annotations.values():
        for ann in anns:
            ann.pop("bbox_mode", None)  # json: restored on loading
    return {
        "case_id": case.case_id,
        "files": [os.path.relpath(p, root) for p in case.channel_files()],
        "segmentation": os.path.relpath(case.segmentation, root) if case.segmentation else None,
        "stamps": [_file_stamp(p) for p in _case_files(case)],
        "shape": list(loaded.image.shape[:3]),
        "spacing": list(loaded.spacing),
        "intensity_range": volume_intensity_range(loaded.image).tolist(),
        "annotations": annotations,
        "slice_cache": cached,
    }


def index_volume_dataset(root: Union[str, os.PathLike], *, mapping: Optional[Mapping[str, str]] = None) -> List[dict]:
    """Index the cases under ``root`` (reusing ``<root>/brainseg_volume_index.json`` where the
    files are unchanged) and rewrite the index file when anything changed.

    Args:
        root: the dataset folder (one sub-folder per case).
        mapping: sequence names (see :func:`brainseg.data.volumes.find_case`).

    Returns:
        one dict per case (see the module docstring), sorted by case id.

    Raises:
        LGGDataError: no case, or a case whose files are invalid (the message names the file).
    """
    root = Path(root).expanduser().resolve()
    index_path = root / INDEX_FILE
    cached: Dict[str, dict] = {}
    if index_path.is_file():
        try:
            payload = json.loads(index_path.read_text())
            if payload.get("version") == _INDEX_VERSION:
                cached = {entry["case_id"]: entry for entry in payload["cases"]}
        except (OSError, ValueError, KeyError):
            logger.warning(f"ignoring unreadable index {index_path}; re-indexing")
    entries, changed = [], False
    for case in find_cases(root, mapping=mapping):
        entry = cached.get(case.case_id)
        if (entry is None or entry["files"] != [os.path.relpath(p, root) for p in case.channel_files()]
                or entry["stamps"] != [_file_stamp(p) for p in _case_files(case)]
                or (entry["slice_cache"] and not _slice_cache_path(case.channel_files()).is_file())):
            logger.info(f"indexing case {case.case_id}")
            entry, changed = _index_case(case, root), True
        entries.append(entry)
    if changed or len(entries) != len(cached):
        try:
            atomic_write(index_path, json.dumps({"version": _INDEX_VERSION, "cases": entries}))
        except OSError as e:
            logger.warning(f"cannot write the index {index_path} ({e}); it will be rebuilt next time")
    return entries


def _slice_records(entry: dict, root: Path, first_id: int) -> List[dict]:
    depth, height, width = entry["shape"]
    files = [str(root / f) for f in entry["files"]]
    records = []
    for k in range(depth):
        annotations = [dict(ann, bbox_mode=BoxMode.XYWH_ABS) for ann in entry["annotations"].get(str(k), [])]
        records.append({
            "file_name": files[1],  # the FLAIR volume
            "volume_files": files,
            "height": height,
            "width": width,
            "image_id": first_id + k,
            "patient_id": entry["case_id"],
            "slice_index": k,
            "spacing": tuple(entry["spacing"]),
            "intensity_range": entry["intensity_range"],
            "annotations": annotations,
        })
    return records


def load_volume_records(
    root: Union[str, os.PathLike],
    split: Optional[str] = None,
    *,
    ratios: Sequence[float] = DEFAULT_SPLIT_RATIOS,
    seed: int = DEFAULT_SPLIT_SEED,
    mapping: Optional[Mapping[str, str]] = None,
    patients: Optional[Sequence[str]] = None,
) -> List[dict]:
    """detectron2 dataset dicts of one patient split of a NIfTI dataset, of some cases
    (``patients``: case ids, e.g. one cross-validation fold; unknown ones are an
    :class:`LGGDataError`), or all of it.

    Only cases with a segmentation are used (the others cannot be trained or evaluated on).
    Records hold ``volume_files`` (the channels' files), ``slice_index`` (axial, inferior
    first), ``spacing`` (mm), ``intensity_range`` and ``annotations``; ``file_name`` is the FLAIR
    file. Image ids number all slices of the dataset, independently of the split.
    """
    root = Path(root).expanduser().resolve()
    entries = [e for e in index_volume_dataset(root, mapping=mapping) if e["segmentation"]]
    if not entries:
        raise LGGDataError(f"no case with a segmentation (<case>_seg.nii.gz / <case>-seg.nii.gz) in {root}")
    keep = select_patients([e["case_id"] for e in entries], split, ratios=ratios, seed=seed, patients=patients,
                           root=root)
    records, next_id = [], 0
    for entry in entries:
        if keep is None or entry["case_id"] in keep:
            records.extend(_slice_records(entry, root, next_id))
        next_id += entry["shape"][0]
    return records


def _axial_index(affine: np.ndarray, shape: Sequence[int], k: int):
    """The file-array index selecting canonical axial slice ``k`` (see volumes.to_slices)."""
    ornt = orientations.io_orientation(affine)
    index: List[Union[slice, int]] = [slice(None)] * 3
    for axis, (ras_axis, sign) in enumerate(ornt):
        if int(ras_axis) == 2:
            index[axis] = slice(k, k + 1) if sign > 0 else slice(shape[axis] - 1 - k, shape[axis] - k)
    return tuple(index)


def read_volume_slice(files: Sequence[Union[str, os.PathLike]], k: int) -> np.ndarray:
    """Axial slice ``k`` of a case's channel files, read without loading the whole volumes: from
    the case's slice cache when it was made from these files (see the module docstring), else
    from the files.

    Returns:
        (H, W, C) float32 raw intensities in the display convention of :mod:`brainseg.data.volumes`.

    Raises:
        LGGDataError: an unreadable file or a slice index outside the volume.
    """
    cached = _read_cached_slice(files, k)
    if cached is not None:
        return cached
    channels = []
    for path in files:
        try:
            image = nib.load(str(path))
            shape = image.shape[:3]
            index = _axial_index(image.affine, shape, k)
            part = np.asarray(image.dataobj[index + ((0,) if len(image.shape) == 4 else ())], dtype=np.float32)
        except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as e:
            raise LGGDataError(f"cannot read slice {k} of {path}: {e}") from None
        if part.size == 0:
            raise LGGDataError(f"slice {k} is outside the volume {path} (shape {shape})")
        channels.append(to_slices(part, image.affine)[0])
    return np.stack(channels, axis=-1)
