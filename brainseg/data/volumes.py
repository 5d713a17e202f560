"""NIfTI cases: one folder per patient with one 3-D file per MRI sequence (BraTS, dcm2niix).

A case folder holds ``<case><sep><sequence>.nii[.gz]`` files. Recognised names:

* BraTS 2021: ``<case>_t1``, ``<case>_t1ce``, ``<case>_t2``, ``<case>_flair``, ``<case>_seg``;
* BraTS 2023: ``<case>-t1n``, ``<case>-t1c``, ``<case>-t2w``, ``<case>-t2f``, ``<case>-seg``;
* anything else through an explicit mapping ``{"t1": "pre.nii.gz", "flair": "flair.nii.gz", ...}``
  (file names or glob patterns inside the case folder).

brainseg's three channels are those of the LGG data: pre-contrast T1, FLAIR, post-contrast T1
(:data:`CHANNELS`). A missing T1 or post-contrast T1 is replaced by FLAIR, as in the LGG data,
with a warning; FLAIR is required.

Volumes are processed in one canonical orientation and cut into axial slices in the LGG display
convention: slice ``k`` counts from inferior to superior, rows run anterior to posterior and
columns from the patient's right to left (radiological view, like the Kaggle slices). Outputs go
back to the input's own array order, shape and affine (:func:`to_input_space`,
:func:`save_like`), with the sform and qform codes kept.
"""
import gzip
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import nibabel as nib
import numpy as np
from nibabel import orientations

from brainseg.utils.errors import LGGDataError
from brainseg.utils.io import atomic_write

__all__ = ["CHANNELS", "NIFTI_SUFFIXES", "VolumeCase", "LoadedCase", "find_case", "find_case_folders", "find_cases",
           "is_volume_case", "is_volume_input", "load_case", "load_nifti", "to_slices", "to_input_space", "save_like",
           "slice_spacing", "write_case"]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

CHANNELS = ("t1", "flair", "t1ce")  # brainseg's channel order: pre-contrast, FLAIR, post-contrast
NIFTI_SUFFIXES = (".nii.gz", ".nii")
# sequence -> the name endings of BraTS 2021 and BraTS 2023
SEQUENCE_ENDINGS: Dict[str, Tuple[str, ...]] = {
    "t1": ("_t1", "-t1n"),
    "t1ce": ("_t1ce", "-t1c"),
    "t2": ("_t2", "-t2w"),
    "flair": ("_flair", "-t2f"),
    "seg": ("_seg", "-seg"),
}
_AFFINE_TOLERANCE_MM = 1e-3
_RAS = orientations.axcodes2ornt(("R", "A", "S"))


@dataclass(frozen=True)
class VolumeCase:
    """The files of one case.

    Attributes:
        case_id: the folder's name.
        folder: the case folder.
        sequences: channel name (:data:`CHANNELS`) -> file, for the sequences present.
        segmentation: the label file, or None.
    """

    case_id: str
    folder: Path
    sequences: Dict[str, Path]
    segmentation: Optional[Path]

    def channel_files(self) -> List[Path]:
        """The file of each channel of :data:`CHANNELS`, FLAIR standing in for a missing one."""
        return [self.sequences.get(name, self.sequences["flair"]) for name in CHANNELS]


def _nifti_stem(path: Path) -> Optional[str]:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _niftis(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and _nifti_stem(p))


def is_volume_case(folder: PathLike) -> bool:
    """True when ``folder`` directly holds NIfTI files."""
    folder = Path(folder)
    return folder.is_dir() and bool(_niftis(folder))


def is_volume_input(path: PathLike) -> bool:
    """True when ``path`` is a case folder or a folder of case folders (NIfTI, not an LGG tree)."""
    path = Path(path).expanduser()
    return path.is_dir() and (is_volume_case(path) or any(is_volume_case(p) for p in path.iterdir() if p.is_dir()))


def _match_mapping(folder: Path, mapping: Mapping[str, str]) -> Dict[str, Path]:
    found = {}
    for name, pattern in mapping.items():
        if name not in CHANNELS + ("seg",):
            raise LGGDataError(f"sequence mapping key {name!r} is not one of {CHANNELS + ('seg',)}")
        matches = sorted(folder.glob(pattern))
        if len(matches) > 1:
            raise LGGDataError(f"{folder}: {len(matches)} files match {pattern!r} for {name}; expected one")
        if matches:
            found[name] = matches[0]
    return found


def _match_brats(folder: Path) -> Dict[str, Path]:
    found: Dict[str, Path] = {}
    for path in _niftis(folder):
        stem = _nifti_stem(path).lower()
        for name, endings in SEQUENCE_ENDINGS.items():
            if stem.endswith(endings):
                if name in found:
                    raise LGGDataError(f"{folder}: two {name} files ({found[name].name}, {path.name})")
                found[name] = path
    return found


def find_case(folder: PathLike, *, mapping: Optional[Mapping[str, str]] = None) -> VolumeCase:
    """The sequence files of one case folder.

    Args:
        folder: the case folder.
        mapping: channel (``t1``, ``flair``, ``t1ce``, ``seg``) -> file name or glob pattern in the
            folder; default: the BraTS 2021 and 2023 names.

    Returns:
        the case (FLAIR present; missing T1 / post-contrast T1 are logged as replaced by FLAIR).

    Raises:
        LGGDataError: no FLAIR file, or ambiguous names.
    """
    folder = Path(folder)
    found = _match_mapping(folder, mapping) if mapping else _match_brats(folder)
    if "flair" not in found:
        names = ", ".join(p.name for p in _niftis(folder)) or "no NIfTI files"
        raise LGGDataError(f"case {folder} has no FLAIR volume (expected <case>_flair.nii.gz or <case>-t2f.nii.gz, "
                           f"or give a mapping); found: {names}")
    missing = [name for name in CHANNELS if name not in found]
    if missing:
        logger.warning(f"case {folder.name}: no {' / '.join(missing)} volume; FLAIR stands in for it (as in the LGG data)")
    sequences = {name: found[name] for name in CHANNELS if name in found}
    return VolumeCase(folder.name, folder, sequences, found.get("seg"))


def find_case_folders(path: PathLike) -> List[Path]:
    """The case folders under ``path``: ``path`` itself when it holds NIfTI files, else its
    sub-folders that do (sorted).

    Raises:
        LGGDataError: ``path`` is not a folder, or holds no case.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise LGGDataError(f"volume input {path} is not a folder of NIfTI files or of case folders")
    if is_volume_case(path):
        return [path]
    folders = sorted(p for p in path.iterdir() if is_volume_case(p))
    if not folders:
        raise LGGDataError(f"no case folder with NIfTI files (.nii, .nii.gz) found in {path}")
    return folders


def find_cases(path: PathLike, *, mapping: Optional[Mapping[str, str]] = None) -> List[VolumeCase]:
    """:func:`find_case` of every folder of :func:`find_case_folders` (the first bad case raises).

    Raises:
        LGGDataError: no case, or a case without FLAIR or with ambiguous names.
    """
    return [find_case(folder, mapping=mapping) for folder in find_case_folders(path)]


def load_nifti(path: PathLike) -> Tuple[nib.Nifti1Image, np.ndarray]:
    """Read a 3-D NIfTI file fully and check it.

    Returns:
        (image, data): the nibabel image (header, affine) and its float32 voxel array.

    Raises:
        LGGDataError: unreadable, corrupt or truncated file, not 3-D, non-finite voxels.
    """
    path = Path(path)
    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except FileNotFoundError:
        raise LGGDataError(f"file not found: {path}") from None
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as e:
        raise LGGDataError(f"cannot read NIfTI file {path}: {e}") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise LGGDataError(f"{path} is a {type(image).__name__}; expected a NIfTI-1 or NIfTI-2 file")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise LGGDataError(f"{path} has shape {data.shape}; expected one 3-D volume per file (no 4-D series)")
    if not np.isfinite(data).all():
        raise LGGDataError(f"{path} has {int((~np.isfinite(data)).sum())} non-finite voxels (NaN or inf)")
    return image, data


def to_slices(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A volume in its file's array order -> axial slices (K, H, W, ...) in the LGG display convention."""
    ras = orientations.apply_orientation(data, orientations.io_orientation(affine))
    return np.ascontiguousarray(np.flip(ras, (0, 1)).swapaxes(0, 2))


def to_input_space(slices: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_slices`: (K, H, W) slices -> the file's array order."""
    ras = np.flip(np.asarray(slices).swapaxes(0, 2), (0, 1))
    back = orientations.ornt_transform(_RAS, orientations.io_orientation(affine))
    return np.ascontiguousarray(orientations.apply_orientation(ras, back))


def slice_spacing(affine: np.ndarray) -> Tuple[float, float, float]:
    """Voxel size (between slices, rows, columns) in mm of the slices of :func:`to_slices`."""
    sizes = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    ornt = orientations.io_orientation(affine)
    by_ras = {int(axis): float(sizes[i]) for i, (axis, _) in enumerate(ornt)}
    return by_ras[2], by_ras[1], by_ras[0]


@dataclass
class LoadedCase:
    """A case read into memory.

    Attributes:
        case: its files.
        reference: the FLAIR image (shape, affine, header: outputs are written like it).
        image: (K, H, W, 3) float32 slices, channels :data:`CHANNELS`, raw intensities.
        truth: (K, H, W) bool whole tumour (any label > 0), or None.
        spacing: (between slices, rows, columns) in mm.
    """

    case: VolumeCase
    reference: nib.Nifti1Image
    image: np.ndarray
    truth: Optional[np.ndarray]
    spacing: Tuple[float, float, float]


def _check_same_grid(path: Path, image: nib.Nifti1Image, data: np.ndarray, reference_path: Path,
                     reference: nib.Nifti1Image, reference_shape: Tuple[int, ...]) -> None:
    if data.shape != reference_shape:
        raise LGGDataError(f"{path} has shape {data.shape} but {reference_path.name} has {reference_shape}; "
                           "the sequences of a case must share one grid (register them first)")
    if not np.allclose(image.affine, reference.affine, atol=_AFFINE_TOLERANCE_MM):
        raise LGGDataError(f"{path} has another affine than {reference_path.name}; the sequences of a case "
                           "must share one grid (register them first)")


def load_case(case: VolumeCase, *, with_truth: bool = True) -> LoadedCase:
    """Read every sequence of ``case`` (and its segmentation) into axial slices.

    Raises:
        LGGDataError: any file unreadable or invalid, or the files' shapes/affines disagree; the
            message names the file.
    """
    flair_path = case.sequences["flair"]
    reference, flair = load_nifti(flair_path)
    volumes = {"flair": flair}
    for name, path in case.sequences.items():
        if name != "flair":
            image, data = load_nifti(path)
            _check_same_grid(path, image, data, flair_path, reference, flair.shape)
            volumes[name] = data
    stacked = np.stack([volumes.get(name, flair) for name in CHANNELS], axis=-1)
    truth = None
    if with_truth and case.segmentation is not None:
        image, labels = load_nifti(case.segmentation)
        _check_same_grid(case.segmentation, image, labels, flair_path, reference, flair.shape)
        truth = to_slices(labels > 0, reference.affine)
    return LoadedCase(case, reference, to_slices(stacked, reference.affine), truth, slice_spacing(reference.affine))


def save_like(path: PathLike, slices: np.ndarray, reference: nib.Nifti1Image, dtype: np.dtype) -> Path:
    """Write (K, H, W) slices as a NIfTI file on ``reference``'s grid, atomically.

    The output has the reference's array order, shape, affine, sform/qform (with their codes) and
    units; its data type is ``dtype``, unscaled.

    Returns:
        the path written.
    """
    data = to_input_space(slices, reference.affine).astype(dtype)
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    out = type(reference)(data, reference.affine, header)
    out.set_sform(reference.get_sform(), code=int(reference.header["sform_code"]))
    out.set_qform(reference.get_qform(), code=int(reference.header["qform_code"]))
    out.header.set_slope_inter(1.0, 0.0)
    path = Path(path)
    payload = out.to_bytes()
    if path.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    atomic_write(path, payload)
    return path


def write_case(
    folder: PathLike,
    image: np.ndarray,
    truth: Optional[np.ndarray],
    affine: np.ndarray,
    *,
    naming: str = "brats2021",
    dtype: np.dtype = np.int16,
) -> VolumeCase:
    """Write (K, H, W, 3) slices (channels :data:`CHANNELS`) as a case folder: one NIfTI file per
    sequence named like BraTS (``naming`` "brats2021" or "brats2023"), plus the segmentation.

    Args:
        folder: the case folder to create; its name is the case id.
        image: (K, H, W, 3) slices in the display convention of :func:`to_slices`.
        truth: (K, H, W) binary tumour mask, or None.
        affine: the files' voxel-to-world affine (any orientation); sform and qform are set to it.
        naming: BraTS 2021 (``<case>_flair.nii.gz``...) or 2023 (``<case>-t2f.nii.gz``...) names.
        dtype: the voxel type of the sequences (the segmentation is uint8).

    Returns:
        the case, as :func:`find_case` reads it back.
    """
    endings = {"brats2021": 0, "brats2023": 1}
    if naming not in endings:
        raise ValueError(f"naming must be one of {sorted(endings)}; got {naming!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    volumes = {name: image[..., c] for c, name in enumerate(CHANNELS)}
    if truth is not None:
        volumes["seg"] = np.asarray(truth, dtype=bool)
    for name, slices in volumes.items():
        data = to_input_space(slices, affine).astype(np.uint8 if name == "seg" else dtype)
        nifti = nib.Nifti1Image(data, affine)
        nifti.set_qform(affine, code=1)
        nifti.set_sform(affine, code=1)
        path = folder / f"{folder.name}{SEQUENCE_ENDINGS[name][endings[naming]]}.nii.gz"
        atomic_write(path, gzip.compress(nifti.to_bytes(), compresslevel=6, mtime=0))
    return find_case(folder)
