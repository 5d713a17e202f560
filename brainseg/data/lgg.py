"""Discovery of the Kaggle LGG layout (Buda et al. 2019, "lgg-mri-segmentation").

The dataset is a folder ``kaggle_3m/`` holding one folder per patient
(``TCGA_<inst>_<pid>_<YYYYMMDD>``) with slices ``<patient>_<k>.tif`` and masks
``<patient>_<k>_mask.tif``; ``k`` is not zero-padded. An optional ``data.csv`` carries
per-patient clinical/genomic fields.
"""
import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple, Union

from ..utils.errors import LGGDataError

__all__ = ["LGGSlice", "LGGPatient", "find_kaggle_root", "discover_lgg", "read_clinical_table"]

_SLICE_RE = re.compile(r"^(?P<patient>.+)_(?P<k>\d+)\.tif$", re.IGNORECASE)
_MASK_RE = re.compile(r"^(?P<patient>.+)_(?P<k>\d+)_mask\.tif$", re.IGNORECASE)


@dataclass(frozen=True)
class LGGSlice:
    """One axial slice: its image, its mask and where it sits in the patient's volume."""

    patient_id: str
    slice_index: int
    image_path: str
    mask_path: str


@dataclass
class LGGPatient:
    """A patient folder: slices sorted by slice index and the optional ``data.csv`` row."""

    patient_id: str
    folder: str
    slices: List[LGGSlice]
    clinical: Dict[str, str] = field(default_factory=dict)


def find_kaggle_root(root: Union[str, os.PathLike]) -> Path:
    """Return the ``kaggle_3m`` folder for a user-given root.

    Accepted: the ``kaggle_3m`` folder itself (any folder holding patient folders), a folder
    containing ``kaggle_3m/``, or one containing ``lgg-mri-segmentation/kaggle_3m/``.

    Args:
        root: the path the user gave.

    Returns:
        Path: the folder whose sub-folders are the patients.

    Raises:
        LGGDataError: the root is missing or holds no patient folders.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise LGGDataError(f"LGG root {root} does not exist or is not a folder")
    for candidate in (root / "lgg-mri-segmentation" / "kaggle_3m", root / "kaggle_3m", root):
        if candidate.is_dir() and any(_is_patient_dir(p) for p in candidate.iterdir()):
            return candidate
    raise LGGDataError(
        f"no LGG patient folders found under {root} (expected kaggle_3m/<patient>/<patient>_<k>.tif)"
    )


def _is_patient_dir(path: Path) -> bool:
    """True for a folder containing at least one ``<folder name>_<k>.tif`` slice."""
    if not path.is_dir():
        return False
    return any(_SLICE_RE.match(name) and name.startswith(path.name + "_") for name in os.listdir(path))


def _scan_patient(folder: Path) -> List[LGGSlice]:
    """Pair a patient's images and masks, sorted by numeric slice index."""
    images: Dict[int, str] = {}
    masks: Dict[int, str] = {}
    prefix = folder.name
    for name in os.listdir(folder):
        match = _MASK_RE.match(name) or _SLICE_RE.match(name)
        if match is None or match.group("patient") != prefix:
            continue
        target = masks if _MASK_RE.match(name) else images
        target[int(match.group("k"))] = str(folder / name)
    for k in sorted(set(images) - set(masks)):
        raise LGGDataError(f"image {images[k]} has no mask (expected {prefix}_{k}_mask.tif)")
    for k in sorted(set(masks) - set(images)):
        raise LGGDataError(f"mask {masks[k]} has no image (expected {prefix}_{k}.tif)")
    return [LGGSlice(prefix, k, images[k], masks[k]) for k in sorted(images)]


def read_clinical_table(kaggle_root: Union[str, os.PathLike]) -> Dict[str, Dict[str, str]]:
    """Read ``data.csv`` (optional) into ``{patient_id: {column: value}}``.

    The Kaggle file identifies patients by ``TCGA_<inst>_<pid>`` (without the date); rows are
    keyed that way and matched to folders by prefix in :func:`discover_lgg`. Empty cells
    (the file has gaps) are kept as empty strings.
    """
    path = Path(kaggle_root) / "data.csv"
    if not path.is_file():
        return {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise LGGDataError(f"cannot read {path}: {e}") from None
    if rows and "Patient" not in rows[0]:
        raise LGGDataError(f"{path} has no 'Patient' column")
    return {row["Patient"]: {k: (v or "") for k, v in row.items() if k} for row in rows}


def _clinical_for(patient_id: str, table: Dict[str, Dict[str, str]]) -> Dict[str, str]:
    """Match a folder name ``TCGA_CS_4941_19960909`` to the csv row ``TCGA_CS_4941``."""
    if patient_id in table:
        return table[patient_id]
    short = patient_id.rsplit("_", 1)[0]
    return table.get(short, {})


def discover_lgg(root: Union[str, os.PathLike]) -> Tuple[Path, List[LGGPatient]]:
    """Find every patient and slice of an LGG dataset.

    Args:
        root: see :func:`find_kaggle_root`.

    Returns:
        (kaggle_root, patients): patients sorted by id, slices sorted numerically.

    Raises:
        LGGDataError: missing root, no patients, an image without its mask or vice versa.
    """
    kaggle_root = find_kaggle_root(root)
    table = read_clinical_table(kaggle_root)
    patients = []
    for folder in sorted(p for p in kaggle_root.iterdir() if _is_patient_dir(p)):
        slices = _scan_patient(folder)
        patients.append(LGGPatient(folder.name, str(folder), slices, _clinical_for(folder.name, table)))
    return kaggle_root, patients
