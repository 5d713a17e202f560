"""Write an LGG TIFF tree (the Kaggle data or the demo) as NIfTI case folders in the BraTS layout,
to try the volume path (``tools/predict.py --input <cases>``, ``brats_*`` datasets) on data you
have: ``datasets/lgg_to_nifti.py --root datasets/lgg_demo --out datasets/brats``.

The Kaggle slices carry no voxel size or position, so the volumes get a plain axial affine with
the given spacing (default 0.9 x 0.9 x 5 mm, an LGG-like acquisition), in LPS array order (the
DICOM convention dcm2niix keeps), and int16 intensities (the uint8 values as they are).
"""
import argparse
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..utils.cli import positive_float, positive_int
from .io import read_lgg_image, read_lgg_mask
from .lgg import discover_lgg
from .volumes import write_case

__all__ = ["lps_affine", "lgg_tree_to_nifti", "main"]


def lps_affine(spacing: Sequence[float]) -> np.ndarray:
    """An axial affine in LPS array order: i -> patient left, j -> posterior, k -> superior.

    Args:
        spacing: (column, row, slice) voxel size in mm.
    """
    return np.diag([-float(spacing[0]), -float(spacing[1]), float(spacing[2]), 1.0])


def lgg_tree_to_nifti(root: str, out_dir: str, *, spacing: Sequence[float] = (0.9, 0.9, 5.0),
                      max_patients: Optional[int] = None, naming: str = "brats2021") -> List[Path]:
    """Write each patient of an LGG tree as ``<out_dir>/<patient>/<patient>_{t1,flair,t1ce,seg}.nii.gz``.

    Args:
        root: the LGG tree (any layout :func:`brainseg.data.find_kaggle_root` accepts).
        out_dir: where the case folders go.
        spacing: (column, row, slice) voxel size in mm written into the affine.
        max_patients: only the first N patients (in name order).
        naming: "brats2021" or "brats2023" file names.

    Returns:
        the case folders written.
    """
    _, patients = discover_lgg(root)
    folders = []
    for patient in patients[:max_patients]:
        image = np.stack([read_lgg_image(s.image_path) for s in patient.slices])
        truth = np.stack([read_lgg_mask(s.mask_path, expected_shape=image.shape[1:3]) for s in patient.slices])
        folder = Path(out_dir) / patient.patient_id
        write_case(folder, image, truth, lps_affine(spacing), naming=naming)
        folders.append(folder)
    return folders


def main(argv=None) -> int:
    """``datasets/lgg_to_nifti.py``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="LGG tree (e.g. datasets/lgg_demo)")
    parser.add_argument("--out", required=True, help="output folder of case folders (e.g. datasets/brats)")
    parser.add_argument("--spacing", type=positive_float, nargs=3, default=(0.9, 0.9, 5.0), metavar=("X", "Y", "Z"),
                        help="voxel size in mm written into the affine (default 0.9 0.9 5)")
    parser.add_argument("--patients", type=positive_int, help="only the first N patients")
    parser.add_argument("--naming", choices=("brats2021", "brats2023"), default="brats2021")
    args = parser.parse_args(argv)
    folders = lgg_tree_to_nifti(args.root, args.out, spacing=args.spacing, max_patients=args.patients,
                                naming=args.naming)
    print(f"wrote {len(folders)} NIfTI cases to {args.out}")
    return 0
