"""Registration of the LGG datasets in detectron2's DatasetCatalog / MetadataCatalog.

Names: ``lgg_{train,val,test}`` (the Kaggle data in ``$BRAINSEG_DATASETS/lgg``),
``lgg_demo_{train,val,test}`` (the generated demo in ``$BRAINSEG_DATASETS/lgg_demo``),
``brats_{train,val,test}`` (a NIfTI dataset in the BraTS layout in ``$BRAINSEG_DATASETS/brats``)
and, for each, ``<name>_coco`` reading the json written by ``tools/convert_lgg_to_coco.py``.
``$BRAINSEG_DATASETS`` defaults to ``./datasets``, like detectron2's ``DETECTRON2_DATASETS``.
"""
import functools
import json
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..utils.io import atomic_write
from .coco import coco_json_path, ensure_coco_json, load_coco_records, records_to_coco
from .lgg import find_kaggle_root
from .records import load_lgg_records
from .volume_dataset import load_volume_records
from .volumes import is_volume_input
from .split import DEFAULT_SPLIT_RATIOS, DEFAULT_SPLIT_SEED, SPLITS

__all__ = ["register_lgg_dataset", "register_volume_dataset", "register_patient_dataset", "register_all_lgg",
           "datasets_root"]

_BUILTIN_ROOTS = {"lgg": "lgg", "lgg_demo": "lgg_demo"}


def datasets_root() -> Path:
    """``$BRAINSEG_DATASETS``, or ``./datasets`` when it is not set."""
    return Path(os.environ.get("BRAINSEG_DATASETS", "datasets")).expanduser()


def _lgg_metadata(root: str, split: str, ratios: Sequence[float], seed: int, dataset_format: str = "lgg") -> dict:
    return {
        "root": root,
        "split": split,
        "split_ratios": tuple(ratios),
        "split_seed": seed,
        "json_file": coco_json_path(root, split, ratios=ratios, seed=seed),
        **_tumour_metadata(dataset_format),
    }


def _tumour_metadata(dataset_format: str) -> dict:
    """The metadata of every LGG-style dataset besides where its patients come from."""
    return {
        "dataset_format": dataset_format,
        "thing_classes": ["tumor"],
        "thing_dataset_id_to_contiguous_id": {1: 0},
        "stuff_classes": ["background", "tumor"],
        "ignore_label": 255,
        "evaluator_type": "lgg",
    }


def register_lgg_dataset(
    name: str,
    root: Union[str, os.PathLike],
    split: str,
    *,
    ratios: Sequence[float] = DEFAULT_SPLIT_RATIOS,
    seed: int = DEFAULT_SPLIT_SEED,
) -> None:
    """Register one split of an LGG dataset, and ``<name>_coco`` reading its COCO json (converted
    on first use, and again when the file on disk holds another split).

    Nothing is read until the dataset is used.

    Args:
        name: the dataset name, e.g. ``"lgg_train"``.
        root: the dataset root (a kaggle_3m folder, or a folder containing one).
        split: "train", "val" or "test".
        ratios, seed: the patient split.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}' for dataset '{name}'; expected one of {SPLITS}")
    root = str(root)
    ratios = tuple(float(r) for r in ratios)
    metadata = _lgg_metadata(root, split, ratios, seed)
    DatasetCatalog.register(name, functools.partial(load_lgg_records, root, split, ratios=ratios, seed=seed))
    MetadataCatalog.get(name).set(**metadata)
    coco_name = f"{name}_coco"
    DatasetCatalog.register(coco_name, functools.partial(_load_coco_split, name))
    MetadataCatalog.get(coco_name).set(**metadata)


def register_volume_dataset(
    name: str,
    root: Union[str, os.PathLike],
    split: str,
    *,
    ratios: Sequence[float] = DEFAULT_SPLIT_RATIOS,
    seed: int = DEFAULT_SPLIT_SEED,
    mapping: Optional[Mapping[str, str]] = None,
) -> None:
    """Register one patient split of a NIfTI dataset root (BraTS layout, see
    :mod:`brainseg.data.volume_dataset`) under ``name``, and ``<name>_coco`` (its COCO json under
    ``<root>/coco``, converted on first use). Nothing is read now.

    Args:
        name: the dataset name, e.g. ``"brats_train"``.
        root: the folder of case folders.
        split: "train", "val" or "test".
        ratios, seed: the patient split.
        mapping: sequence file names for non-BraTS names (see :func:`brainseg.data.volumes.find_case`).

    Example::

        for split in ("train", "val", "test"):
            register_volume_dataset(f"brats_{split}", "datasets/brats2021", split)
        # then train any config with dataloader.train.dataset.names=brats_train
        # dataloader.val.dataset.names=brats_val dataloader.test.dataset.names=brats_test
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}' for dataset '{name}'; expected one of {SPLITS}")
    root = str(Path(root).expanduser().resolve())
    ratios = tuple(float(r) for r in ratios)
    DatasetCatalog.register(
        name, functools.partial(load_volume_records, root, split, ratios=ratios, seed=seed, mapping=mapping))
    MetadataCatalog.get(name).set(**_lgg_metadata(root, split, ratios, seed, dataset_format="nifti"))
    coco_name = f"{name}_coco"
    DatasetCatalog.register(coco_name, functools.partial(_load_coco_split, name))
    MetadataCatalog.get(coco_name).set(**_lgg_metadata(root, split, ratios, seed, dataset_format="nifti"))


def register_patient_dataset(
    name: str,
    root: Union[str, os.PathLike],
    patients: Sequence[str],
    *,
    json_file: Union[str, os.PathLike, None] = None,
    mapping: Optional[Mapping[str, str]] = None,
) -> None:
    """Register the given patients of a dataset root (an LGG TIFF tree or a NIfTI root, told apart
    by :func:`~brainseg.data.volumes.is_volume_input`) under ``name``, e.g. one part of a
    cross-validation fold (:mod:`brainseg.data.folds`).

    The records are read when the dataset is used. The metadata is that of the split datasets
    without the split keys; ``patients`` lists the patients. COCO AP evaluation needs
    ``json_file``: it is written now (those patients' records, :func:`~brainseg.data.coco.records_to_coco`)
    unless the file already holds exactly these patients.

    Args:
        name: the dataset name.
        root: the dataset root.
        patients: patient (case) ids; unknown ones are an error when the records are read.
        json_file: where the COCO json of these patients goes (None: no COCO evaluation).
        mapping: sequence file names of a NIfTI root (see :func:`brainseg.data.volumes.find_case`).
    """
    patients = tuple(sorted(str(p) for p in patients))
    volume = is_volume_input(root)
    root = str(Path(root).expanduser().resolve()) if volume else str(root)
    if volume:
        load = functools.partial(load_volume_records, root, None, mapping=mapping, patients=patients)
    else:
        load = functools.partial(load_lgg_records, root, None, patients=patients)
    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(root=root, patients=patients, **_tumour_metadata("nifti" if volume else "lgg"))
    if json_file is not None:
        json_file = str(json_file)
        _write_patient_json(json_file, load, root if volume else find_kaggle_root(root), patients)
        MetadataCatalog.get(name).set(json_file=json_file)


def _write_patient_json(json_file: str, load, base: Union[str, os.PathLike], patients: Sequence[str]) -> None:
    """Write the COCO json of ``patients`` unless ``json_file`` already holds exactly them."""
    try:
        with open(json_file, encoding="utf-8") as f:
            if json.load(f).get("info", {}).get("patients") == list(patients):
                return
    except (OSError, ValueError):
        pass  # missing or unreadable: (re)written
    info = {"description": "LGG patient subset, one instance per connected component",
            "kaggle_root": str(base), "patients": list(patients), "segmentation_format": "rle"}
    atomic_write(json_file, json.dumps(records_to_coco(load(), base, info)))


def _load_coco_split(name: str) -> list:
    """Records of ``<name>_coco``: its json, converted first when missing or of another split."""
    return load_coco_records(ensure_coco_json(name))


def register_all_lgg(root: Union[str, os.PathLike, None] = None) -> None:
    """Register ``lgg_*``, ``lgg_demo_*`` (TIFF trees) and ``brats_*`` (a NIfTI dataset in the
    BraTS layout, ``<root>/brats``) under ``root`` (default :func:`datasets_root`)."""
    base = (Path(root) if root is not None else datasets_root()).resolve()
    for prefix, folder in _BUILTIN_ROOTS.items():
        for split in SPLITS:
            name = f"{prefix}_{split}"
            if name not in DatasetCatalog.list():
                register_lgg_dataset(name, base / folder, split)
    for split in SPLITS:
        if f"brats_{split}" not in DatasetCatalog.list():
            register_volume_dataset(f"brats_{split}", base / "brats", split)
