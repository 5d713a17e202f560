"""Generator of the embedded LGG demo dataset: real anatomy, synthetic lesions.

The demo dataset lets everything in brainseg run without the Kaggle download. It is written in
the exact ``kaggle_3m`` layout of the LGG MRI segmentation dataset (Buda et al. 2019)::

    <out_dir>/kaggle_3m/data.csv
    <out_dir>/kaggle_3m/TCGA_<inst>_<pid>_<YYYYMMDD>/TCGA_<inst>_<pid>_<YYYYMMDD>_<k>.tif
    <out_dir>/kaggle_3m/TCGA_<inst>_<pid>_<YYYYMMDD>/TCGA_<inst>_<pid>_<YYYYMMDD>_<k>_mask.tif

Images are uint8 RGB 256x256 (pre-contrast, FLAIR, post-contrast), masks uint8 0/255; the
volumes come from :func:`brainseg.data.demo.render.render_patient`.
"""

import csv
import datetime
import os
import shutil
import tempfile
from typing import Dict, List, Optional, Tuple

import numpy as np
import tifffile

from .render import render_patient

__all__ = ["generate_lgg_demo"]

INSTITUTIONS = ("CS", "DU", "EZ", "FG", "HT")
_INSTITUTION_WEIGHTS = (0.15, 0.4, 0.1, 0.15, 0.2)
_CSV_COLUMNS = (
    "Patient",
    "RNASeqCluster",
    "MethylationCluster",
    "miRNACluster",
    "CNCluster",
    "histological_type",
    "neoplasm_histologic_grade",
    "laterality",
    "tumor_location",
    "gender",
    "age_at_initial_pathologic",
    "death01",
)


def _patient_names(rng: np.random.Generator, count: int) -> List[str]:
    """Unique, real-looking TCGA folder names ``TCGA_<inst>_<pid>_<YYYYMMDD>``."""
    first_day = datetime.date(1995, 1, 1).toordinal()
    last_day = datetime.date(2005, 12, 31).toordinal()
    names: List[str] = []
    ids = set()
    while len(names) < count:
        institution = INSTITUTIONS[rng.choice(len(INSTITUTIONS), p=_INSTITUTION_WEIGHTS)]
        patient_id = f"{institution}_{int(rng.integers(4900, 8200))}"
        date = datetime.date.fromordinal(int(rng.integers(first_day, last_day + 1)))
        if patient_id not in ids:
            ids.add(patient_id)
            names.append(f"TCGA_{patient_id}_{date:%Y%m%d}")
    return names


def _clinical_row(rng: np.random.Generator, name: str, info: Dict[str, str]) -> Dict[str, str]:
    """A ``data.csv`` row like Kaggle's: genomic clusters and clinical fields, some missing."""
    row = {
        "Patient": name.rsplit("_", 1)[0],
        "RNASeqCluster": int(rng.integers(1, 5)),
        "MethylationCluster": int(rng.integers(1, 6)),
        "miRNACluster": int(rng.integers(1, 5)),
        "CNCluster": int(rng.integers(1, 4)),
        "histological_type": int(rng.integers(1, 3)),
        "neoplasm_histologic_grade": int(rng.integers(1, 3)),
        "laterality": info["laterality"],
        "tumor_location": info["tumor_location"],
        "gender": int(rng.integers(1, 3)),
        "age_at_initial_pathologic": int(rng.integers(20, 76)),
        "death01": int(rng.random() < 0.3),
    }
    gaps = rng.random(len(_CSV_COLUMNS)) < 0.12
    return {
        column: ("" if gap and column != "Patient" else str(row[column])) for column, gap in zip(_CSV_COLUMNS, gaps)
    }


def _write_patient(folder: str, name: str, images: np.ndarray, masks: np.ndarray) -> None:
    os.makedirs(folder)
    for k, (image, mask) in enumerate(zip(images, masks), start=1):
        stem = os.path.join(folder, f"{name}_{k}")
        tifffile.imwrite(stem + ".tif", image, photometric="rgb", metadata=None)
        tifffile.imwrite(stem + "_mask.tif", mask, photometric="minisblack", metadata=None)


def _render_and_write(
    root: str, name: str, patient_seed: np.random.SeedSequence, num_slices_range: Tuple[int, int]
) -> Dict[str, str]:
    """Render patient ``name`` from its seed, write its folder under ``root``; return its CSV row."""
    rng = np.random.default_rng(patient_seed)
    images, masks, info = render_patient(rng, num_slices_range=num_slices_range)
    _write_patient(os.path.join(root, name), name, images, masks)
    return _clinical_row(rng, name, info)


def _is_int(value, minimum: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum


def _check_target(out_dir: str, overwrite: bool) -> None:
    """Refuse to write over anything but an empty folder or (with ``overwrite``) a dataset root."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"demo dataset target exists and is not a folder: {out_dir}")
    if not os.path.isdir(out_dir) or not os.listdir(out_dir):
        return
    if not overwrite:
        raise FileExistsError(f"demo dataset target {out_dir} is not empty (overwrite it with --force)")
    if not os.path.isdir(os.path.join(out_dir, "kaggle_3m")):
        raise FileExistsError(f"refusing to replace {out_dir}: it is not empty and holds no kaggle_3m folder")


def generate_lgg_demo(
    out_dir: str,
    *,
    num_patients: int = 24,
    seed: int = 0,
    show_progress: bool = True,
    overwrite: bool = False,
    num_slices_range: Tuple[int, int] = (20, 40),
) -> str:
    """Write the LGG-like demo dataset in the Kaggle ``kaggle_3m`` layout.

    The dataset is built in a temporary directory next to ``out_dir`` and renamed into place at the
    end, so an interrupted run leaves nothing half-written. The output is a deterministic function
    of the arguments (same seed -> byte-identical files).

    Args:
        out_dir: dataset root; ``<out_dir>/kaggle_3m`` is created.
        num_patients: number of patient folders.
        seed: random seed.
        show_progress: show a tqdm progress bar.
        overwrite: replace an existing non-empty ``out_dir`` that holds a ``kaggle_3m`` folder
            (anything else non-empty is never replaced).
        num_slices_range: inclusive range of axial slices per patient (the real data has 20-88).

    Returns:
        Path of the written ``kaggle_3m`` directory.

    Raises:
        FileExistsError: ``out_dir`` is not empty and may not be replaced.
        ValueError: bad ``num_patients``, ``seed`` or ``num_slices_range``.
    """
    from tqdm import tqdm

    if not _is_int(num_patients, 1) or num_patients > 1000:
        raise ValueError(f"num_patients must be an integer in [1, 1000], got {num_patients!r}")
    if not _is_int(seed, 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    low, high = num_slices_range
    if not (_is_int(low, 1) and _is_int(high, low)):
        raise ValueError(f"num_slices_range must be (low, high) with 1 <= low <= high, got {num_slices_range!r}")
    out_dir = os.path.abspath(out_dir)
    _check_target(out_dir, overwrite)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)

    names_seed, patients_seed = np.random.SeedSequence(seed).spawn(2)
    names = _patient_names(np.random.default_rng(names_seed), num_patients)
    # Patient i (name and images) is the same for any num_patients > i; folders are written sorted.
    patients = sorted(zip(names, patients_seed.spawn(num_patients)))
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    trash: Optional[str] = None
    try:
        root = os.path.join(staging, "kaggle_3m")
        os.makedirs(root)
        progress = tqdm(patients, desc="LGG demo patients", disable=not show_progress)
        rows = [_render_and_write(root, name, patient_seed, (int(low), int(high))) for name, patient_seed in progress]
        with open(os.path.join(root, "data.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=_CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)

        _check_target(out_dir, overwrite)
        if os.path.isdir(out_dir):
            trash = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
            os.replace(out_dir, os.path.join(trash, "old"))
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    return os.path.join(out_dir, "kaggle_3m")
