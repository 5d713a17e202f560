"""Resolve the PATH a user gives to ``tools/predict.py`` into the slices to segment.

Accepted layouts:

* one image file (``.tif``, ``.tiff`` or ``.png``);
* a folder of slices (e.g. one patient folder ``TCGA_CS_4941_19960909/``);
* a whole LGG tree: any folder :func:`brainseg.data.find_kaggle_root` accepts (``kaggle_3m/``,
  a folder containing it, or ``lgg-mri-segmentation/kaggle_3m/``); every sub-folder of the
  ``kaggle_3m`` folder holding images is one patient.

``<stem>_mask.tif`` files are ground truth, never inputs: the one next to ``<stem>.tif`` is used
for overlays. Files named ``*_overlay.png`` (written by ``tools/predict.py``) and hidden files
are skipped too. Slices are sorted "naturally", so ``P_2`` comes before ``P_10`` (the Kaggle
``k`` is not zero-padded).
"""
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Dict, List, Optional, Tuple, Union

from brainseg.data import LGGDataError, find_kaggle_root

__all__ = ["IMAGE_SUFFIXES", "SliceInput", "resolve_inputs", "natural_key"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
MASK_SUFFIX = "_mask"
OVERLAY_SUFFIX = "_overlay"
_NUMBERED_STEM = re.compile(r"^(?P<patient>.+)_(?P<k>\d+)$")
_DIGITS = re.compile(r"(\d+)")


@dataclass(frozen=True)
class SliceInput:
    """One slice to segment and where its outputs go.

    Attributes:
        image_path: the input image.
        truth_path: the ``<stem>_mask.tif`` next to it, or None.
        patient_id: ``<patient>`` of a ``<patient>_<k>`` file name, else the folder's name.
        slice_index: ``k`` of a ``<patient>_<k>`` file name, else None.
        output_stem: output location relative to the output folder, without suffix
            (e.g. ``kaggle_3m/P/P_3``): outputs mirror the input layout.
    """

    image_path: Path
    truth_path: Optional[Path]
    patient_id: str
    slice_index: Optional[int]
    output_stem: PurePath

    @property
    def name(self) -> str:
        """The slice's file stem, e.g. ``TCGA_CS_4941_19960909_3``."""
        return self.image_path.stem


def natural_key(text: str) -> Tuple:
    """Sort key comparing digit runs as numbers: ``P_2`` < ``P_10``."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in _DIGITS.split(text) if part)


def _is_input_image(path: Path) -> bool:
    stem = path.stem
    return (
        path.is_file()
        and path.suffix.lower() in IMAGE_SUFFIXES
        and not path.name.startswith(".")
        and not stem.endswith(MASK_SUFFIX)
        and not stem.endswith(OVERLAY_SUFFIX)
    )


def _truth_for(image: Path) -> Optional[Path]:
    for suffix in dict.fromkeys((".tif", image.suffix)):
        candidate = image.with_name(f"{image.stem}{MASK_SUFFIX}{suffix}")
        if candidate.is_file():
            return candidate
    return None


def _slice_input(image: Path, base: Path) -> SliceInput:
    match = _NUMBERED_STEM.match(image.stem)
    patient, index = (match.group("patient"), int(match.group("k"))) if match else (image.parent.name, None)
    stem = image.relative_to(base).with_suffix("") if base != image else PurePath(image.stem)
    return SliceInput(image, _truth_for(image), patient, index, stem)


def _folder_slices(folder: Path, base: Path) -> List[SliceInput]:
    images = sorted((p for p in folder.iterdir() if _is_input_image(p)), key=lambda p: natural_key(p.name))
    return [_slice_input(p, base) for p in images]


def _slice_folders(root: Path) -> List[Path]:
    """The folders holding the slices: the patient folders of an LGG tree, else ``root``."""
    try:
        kaggle_root = find_kaggle_root(root)
    except LGGDataError:
        return [root]
    return sorted((p for p in kaggle_root.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name))


def resolve_inputs(path: Union[str, os.PathLike]) -> List[SliceInput]:
    """Find the slices to segment under ``path`` (see the module docstring for the layouts).

    Args:
        path: an image file, a folder of slices, a patient folder or an LGG tree.

    Returns:
        the slices, grouped by folder and sorted naturally within each.

    Raises:
        LGGDataError: ``path`` is missing, is a mask or not an image, holds no images, or two
            inputs would write the same outputs (e.g. ``a.tif`` and ``a.png``).
    """
    path = Path(path).expanduser()
    if path.is_file():
        if path.stem.endswith(MASK_SUFFIX):
            raise LGGDataError(f"{path} is a ground-truth mask (*{MASK_SUFFIX}), not an input image")
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise LGGDataError(f"{path} is not an image ({', '.join(IMAGE_SUFFIXES)})")
        return [_slice_input(path, path)]
    if not path.is_dir():
        raise LGGDataError(f"input {path} does not exist")
    slices = [s for folder in _slice_folders(path) for s in _folder_slices(folder, path)]
    if not slices:
        raise LGGDataError(f"no input images ({', '.join(IMAGE_SUFFIXES)}, not *{MASK_SUFFIX}) found in {path}")
    seen: Dict[PurePath, Path] = {}
    for item in slices:
        other = seen.setdefault(item.output_stem, item.image_path)
        if other != item.image_path:
            raise LGGDataError(f"inputs {other} and {item.image_path} would write the same outputs")
    return slices
