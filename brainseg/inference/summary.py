"""Per-patient tumour volumes from predicted slice masks, written as ``summary.csv`` and
``summary.json``.

Only numbers are kept per slice (its predicted tumour area), so a whole dataset streams
through in constant memory.
"""
import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from brainseg.utils.io import atomic_write

__all__ = ["SliceArea", "PatientVolume", "VolumeSummary"]

CSV_COLUMNS = ("patient", "slices", "slices_with_tumour", "tumour_voxels", "tumour_volume_mm3", "spacing_mm",
               "max_area_slice", "max_area_px", "area_per_slice_px")


@dataclass(frozen=True)
class SliceArea:
    """The predicted tumour area (pixels) of one slice."""

    name: str
    slice_index: Optional[int]
    area_px: int


@dataclass
class PatientVolume:
    """The predicted tumour of one patient, slice by slice (in the order they were added)."""

    patient_id: str
    slices: List[SliceArea] = field(default_factory=list)
    spacing: Optional[List[float]] = None  # (x, y, z) mm of this patient, when it has its own

    @property
    def voxels(self) -> int:
        """Tumour volume in voxels: the sum of the slice areas."""
        return sum(s.area_px for s in self.slices)

    @property
    def num_tumour_slices(self) -> int:
        return sum(1 for s in self.slices if s.area_px > 0)

    @property
    def max_area_slice(self) -> Optional[SliceArea]:
        """The slice with the largest tumour area (the first of ties), None without tumour."""
        best = max(self.slices, key=lambda s: s.area_px, default=None)
        return best if best is not None and best.area_px > 0 else None

    def as_dict(self, voxel_volume_mm3: Optional[float]) -> Dict[str, Any]:
        """The patient's row; its own ``spacing`` (a NIfTI header's) wins over ``voxel_volume_mm3``."""
        best = self.max_area_slice
        if self.spacing is not None:
            voxel_volume_mm3 = float(np.prod(self.spacing))
        return {
            "patient": self.patient_id,
            "spacing_mm": self.spacing,
            "slices": len(self.slices),
            "slices_with_tumour": self.num_tumour_slices,
            "tumour_voxels": self.voxels,
            "tumour_volume_mm3": None if voxel_volume_mm3 is None else self.voxels * voxel_volume_mm3,
            "max_area_slice": best.name if best else None,
            "max_area_px": best.area_px if best else 0,
            "area_per_slice_px": [{"slice": s.name, "index": s.slice_index, "area_px": s.area_px}
                                  for s in self.slices],
        }


class VolumeSummary:
    """Collects slice areas and failures; writes the per-patient summary files."""

    def __init__(self, *, spacing: Optional[Sequence[float]] = None, metadata: Optional[Dict[str, Any]] = None):
        """
        Args:
            spacing: voxel size (x, y, z) in mm (pixel width, pixel height, slice spacing); when
                given, volumes are also reported in mm^3.
            metadata: extra fields stored at the top of ``summary.json`` (input, weights, ...).
        """
        if spacing is not None and (len(spacing) != 3 or any(s <= 0 for s in spacing)):
            raise ValueError(f"spacing must be 3 positive numbers (x, y, z in mm); got {list(spacing)}")
        self.spacing = None if spacing is None else [float(s) for s in spacing]
        self.metadata = dict(metadata or {})
        self.patients: Dict[str, PatientVolume] = {}
        self.failures: List[Dict[str, str]] = []

    @property
    def voxel_volume_mm3(self) -> Optional[float]:
        if self.spacing is None:
            return None
        sx, sy, sz = self.spacing
        return sx * sy * sz

    def add_slice(self, patient_id: str, name: str, slice_index: Optional[int], area_px: int) -> None:
        """Record the predicted tumour area of one slice."""
        volume = self.patients.setdefault(patient_id, PatientVolume(patient_id))
        volume.slices.append(SliceArea(name, slice_index, int(area_px)))

    def set_spacing(self, patient_id: str, spacing: Sequence[float]) -> None:
        """The (x, y, z) voxel size in mm of one patient (e.g. from its NIfTI header)."""
        volume = self.patients.setdefault(patient_id, PatientVolume(patient_id))
        volume.spacing = [float(s) for s in spacing]

    def add_failure(self, path: Union[str, os.PathLike], patient_id: str, message: str) -> None:
        """Record an input that could not be used."""
        self.failures.append({"file": str(path), "patient": patient_id, "error": message})

    def rows(self) -> List[Dict[str, Any]]:
        """One dict per patient (see :meth:`PatientVolume.as_dict`), in order of appearance."""
        return [volume.as_dict(self.voxel_volume_mm3) for volume in self.patients.values()]

    def to_json(self) -> str:
        payload = {
            **self.metadata,
            "spacing_mm": self.spacing,
            "num_slices": sum(len(v.slices) for v in self.patients.values()),
            "num_failed": len(self.failures),
            "patients": self.rows(),
            "failures": self.failures,
        }
        return json.dumps(payload, indent=2)

    def to_csv(self) -> str:
        """One row per patient; ``area_per_slice_px`` lists the areas in slice order, space-separated."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.rows():
            row = dict(row, area_per_slice_px=" ".join(str(s["area_px"]) for s in row["area_per_slice_px"]))
            spacing = row.pop("spacing_mm")
            row["spacing_mm"] = "" if spacing is None else " ".join(f"{s:g}" for s in spacing)
            if row["tumour_volume_mm3"] is None:
                row["tumour_volume_mm3"] = ""
            writer.writerow(row)
        return buffer.getvalue()

    def write(self, out_dir: Union[str, os.PathLike]) -> List[Path]:
        """Write ``summary.csv`` and ``summary.json`` into ``out_dir`` atomically.

        Returns:
            the two paths.
        """
        paths = [Path(out_dir) / "summary.csv", Path(out_dir) / "summary.json"]
        atomic_write(paths[0], self.to_csv())
        atomic_write(paths[1], self.to_json())
        return paths
