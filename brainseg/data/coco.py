"""LGG <-> COCO instance-segmentation json (one instance per connected tumour component)."""
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from detectron2.data import MetadataCatalog
from detectron2.structures import BoxMode

from ..utils.errors import LGGDataError
from ..utils.io import atomic_write
from .lgg import find_kaggle_root
from .records import load_lgg_records
from .volume_dataset import load_volume_records
from .volumes import is_volume_input
from .split import DEFAULT_SPLIT_RATIOS, DEFAULT_SPLIT_SEED, SPLITS, split_patients

__all__ = ["convert_lgg_to_coco", "records_to_coco", "load_coco_records", "ensure_coco_json", "coco_json_path", "coco_json_name"]

# brainseg spells "tumour" in code; the COCO category and detectron2 class name is "tumor", the
# spelling of the dataset (data.csv: tumor_location) and of most COCO-style tools
TUMOUR_CATEGORY = {"id": 1, "name": "tumor", "supercategory": "lesion"}
_VOLUME_KEYS = ("spacing", "intensity_range")


def records_to_coco(records: List[dict], kaggle_root: Union[str, os.PathLike], info: dict) -> dict:
    """Build a COCO dict from dataset dicts.

    Image ``file_name`` is relative to the ``kaggle_3m`` folder (the dataset root for NIfTI
    datasets); images also carry ``patient_id``, ``slice_index`` and ``mask_file_name`` (TIFF) or
    ``volume_files``, ``spacing`` and ``intensity_range`` (NIfTI slices). Category id 1 is
    "tumor" (contiguous id 0 in detectron2).
    """
    kaggle_root = Path(kaggle_root)
    images, annotations = [], []
    for record in records:
        image = {
            "id": record["image_id"],
            "file_name": os.path.relpath(record["file_name"], kaggle_root),
            "height": record["height"],
            "width": record["width"],
            "patient_id": record["patient_id"],
            "slice_index": record["slice_index"],
        }
        if "sem_seg_file_name" in record:
            image["mask_file_name"] = os.path.relpath(record["sem_seg_file_name"], kaggle_root)
        if "volume_files" in record:  # a NIfTI slice (brainseg.data.volume_dataset)
            image["volume_files"] = [os.path.relpath(f, kaggle_root) for f in record["volume_files"]]
            image.update({key: record[key] for key in _VOLUME_KEYS})
        images.append(image)
        for ann in record["annotations"]:
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": record["image_id"],
                "category_id": TUMOUR_CATEGORY["id"],
                "bbox": ann["bbox"],
                "area": ann["area"],
                "segmentation": ann["segmentation"],
                "iscrowd": 0,
            })
    return {"info": info, "images": images, "annotations": annotations, "categories": [TUMOUR_CATEGORY]}


def convert_lgg_to_coco(
    root: Union[str, os.PathLike],
    out_dir: Union[str, os.PathLike],
    *,
    ratios: Sequence[float] = DEFAULT_SPLIT_RATIOS,
    seed: int = DEFAULT_SPLIT_SEED,
    polygons: bool = False,
) -> Dict[str, str]:
    """Convert an LGG dataset into one json per split under ``out_dir``, named by
    :func:`coco_json_name` (``lgg_{train,val,test}.json`` for the default split).

    Every slice is read and validated before anything is written; each file is written to a
    temporary name and renamed, so a failure never leaves a half-written json behind.

    Args:
        root: dataset root (any accepted kaggle_3m layout).
        out_dir: output folder (created).
        ratios, seed: the patient split, recorded in each file's ``info``.
        polygons: polygons instead of compressed RLE.

    Returns:
        dict: split name -> json path.
    """
    if is_volume_input(root):
        kaggle_root = Path(root).expanduser().resolve()
        records = load_volume_records(kaggle_root, None)
    else:
        kaggle_root = find_kaggle_root(root)
        records = load_lgg_records(kaggle_root, None, polygons=polygons)
    splits = split_patients(sorted({r["patient_id"] for r in records}), ratios=ratios, seed=seed)
    payloads = {}
    for split in SPLITS:
        members = set(splits[split])
        info = {
            "description": "LGG MRI segmentation (Buda et al. 2019), one instance per connected component",
            "kaggle_root": str(kaggle_root),
            "split": split,
            "split_ratios": list(ratios),
            "split_seed": seed,
            "patients": splits[split],
            "segmentation_format": "polygon" if polygons else "rle",
        }
        subset = [r for r in records if r["patient_id"] in members]
        payloads[split] = json.dumps(records_to_coco(subset, kaggle_root, info))
    out_dir = Path(out_dir)
    paths = {}
    for split, payload in payloads.items():
        paths[split] = str(out_dir / coco_json_name(split, ratios=ratios, seed=seed))
        atomic_write(paths[split], payload)
    return paths


def load_coco_records(json_file: Union[str, os.PathLike], kaggle_root: Optional[str] = None) -> List[dict]:
    """Read a json written by :func:`convert_lgg_to_coco` back into dataset dicts.

    Args:
        json_file: the COCO file.
        kaggle_root: folder the image paths are relative to; default: the one recorded in the file.

    Returns:
        list[dict]: records like :func:`brainseg.data.records.load_lgg_records` gives.
    """
    try:
        with open(json_file, encoding="utf-8") as f:
            coco = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise LGGDataError(f"cannot read COCO file {json_file}: {e}") from None
    base = Path(kaggle_root or coco.get("info", {}).get("kaggle_root", Path(json_file).parent))
    by_image: Dict[int, List[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append({
            "bbox": ann["bbox"],
            "bbox_mode": BoxMode.XYWH_ABS,
            "segmentation": ann["segmentation"],
            "area": ann["area"],
            "category_id": ann["category_id"] - TUMOUR_CATEGORY["id"],
            "iscrowd": ann.get("iscrowd", 0),
        })
    records = []
    for image in coco["images"]:
        record = {
            "file_name": str(base / image["file_name"]),
            "height": image["height"],
            "width": image["width"],
            "image_id": image["id"],
            "annotations": by_image.get(image["id"], []),
        }
        if "mask_file_name" in image:
            record["sem_seg_file_name"] = str(base / image["mask_file_name"])
        if "volume_files" in image:
            record["volume_files"] = [str(base / f) for f in image["volume_files"]]
        for key in ("patient_id", "slice_index") + _VOLUME_KEYS:
            if key in image:
                record[key] = image[key]
        records.append(record)
    return records


def coco_json_name(split: str, *, ratios: Sequence[float] = DEFAULT_SPLIT_RATIOS,
                   seed: int = DEFAULT_SPLIT_SEED) -> str:
    """The json file name of one split: ``lgg_<split>.json`` for the default patient split,
    ``lgg_<split>_split<70-15-15>_seed<s>.json`` for any other, so that registrations of one root
    with different splits never overwrite each other's files."""
    ratios = tuple(float(r) for r in ratios)
    if ratios == tuple(DEFAULT_SPLIT_RATIOS) and seed == DEFAULT_SPLIT_SEED:
        return f"lgg_{split}.json"
    percents = "-".join(f"{100 * r:g}" for r in ratios)
    return f"lgg_{split}_split{percents}_seed{seed}.json"


def coco_json_path(root: Union[str, os.PathLike], split: str, *, ratios: Sequence[float] = DEFAULT_SPLIT_RATIOS,
                   seed: int = DEFAULT_SPLIT_SEED) -> str:
    """Where the converted json of ``split`` lives for a dataset root: ``<root>/coco/<name>``
    (:func:`coco_json_name`)."""
    return str(Path(root) / "coco" / coco_json_name(split, ratios=ratios, seed=seed))


def ensure_coco_json(dataset_name: str) -> str:
    """Return the COCO json of a registered LGG split, converting the dataset if it is missing
    or was written with another split.

    Args:
        dataset_name: e.g. ``lgg_demo_test``.

    Returns:
        str: path of the json file (also ``MetadataCatalog.get(dataset_name).json_file``).
    """
    meta = MetadataCatalog.get(dataset_name)
    for key in ("json_file", "root", "split", "split_ratios", "split_seed"):
        if not hasattr(meta, key):
            raise KeyError(f"dataset '{dataset_name}' is not a registered LGG split (metadata lacks '{key}')")
    if os.path.isfile(meta.json_file):
        with open(meta.json_file, encoding="utf-8") as f:
            info = json.load(f).get("info", {})
        if info.get("split_seed") == meta.split_seed and info.get("split_ratios") == list(meta.split_ratios):
            return meta.json_file
    convert_lgg_to_coco(meta.root, Path(meta.json_file).parent, ratios=meta.split_ratios, seed=meta.split_seed)
    return meta.json_file
