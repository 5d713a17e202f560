"""Registration of the LGG datasets in detectron2's DatasetCatalog / MetadataCatalog.

Names: ``lgg_{train,val,test}`` (the Kaggle data in ``$BRAINSEG_DATASETS/lgg``),
``lgg_demo_{train,val,test}`` (the generated demo in ``$BRAINSEG_DATASETS/lgg_demo``) and, for
each, ``<name>_coco`` reading the json written by ``tools/convert_lgg_to_coco.py``.
``$BRAINSEG_DATASETS`` defaults to ``./datasets``, like detectron2's ``DETECTRON2_DATASETS``.
"""
import functools
import os
from pathlib import Path
from typing import Sequence, Union

from detectron2.data import DatasetCatalog, MetadataCatalog

from .coco import coco_json_path, ensure_coco_json, load_coco_records
from .records import load_lgg_records
from .split import DEFAULT_SPLIT_RATIOS, DEFAULT_SPLIT_SEED, SPLITS

__all__ = ["register_lgg_dataset", "register_all_lgg", "datasets_root"]

_BUILTIN_ROOTS = {"lgg": "lgg", "lgg_demo": "lgg_demo"}


def datasets_root() -> Path:
    """``$BRAINSEG_DATASETS``, or ``./datasets`` when it is not set."""
    return Path(os.environ.get("BRAINSEG_DATASETS", "datasets")).expanduser()


def _lgg_metadata(root: str, split: str, ratios: Sequence[float], seed: int) -> dict:
    return {
        "root": root,
        "split": split,
        "split_ratios": tuple(ratios),
        "split_seed": seed,
        "json_file": coco_json_path(root, split, ratios=ratios, seed=seed),
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


def _load_coco_split(name: str) -> list:
    """Records of ``<name>_coco``: its json, converted first when missing or of another split."""
    return load_coco_records(ensure_coco_json(name))


def register_all_lgg(root: Union[str, os.PathLike, None] = None) -> None:
    """Register ``lgg_*`` and ``lgg_demo_*`` under ``root`` (default :func:`datasets_root`)."""
    base = (Path(root) if root is not None else datasets_root()).resolve()
    for prefix, folder in _BUILTIN_ROOTS.items():
        for split in SPLITS:
            name = f"{prefix}_{split}"
            if name not in DatasetCatalog.list():
                register_lgg_dataset(name, base / folder, split)
