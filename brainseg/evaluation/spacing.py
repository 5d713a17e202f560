"""Voxel spacing of evaluated patients: a per-patient table (CSV file or dict) with a global
fallback, for the surface metrics in mm.

LGG TIFF trees carry no voxel size, so the spacing of each patient's volume has to come from
elsewhere (e.g. the TCIA DICOM headers). The table is a CSV file with the header
``patient,spacing_z,spacing_y,spacing_x`` (mm; z = between slices, y = rows, x = columns) or a
dict ``{patient_id: (z, y, x)}``.
"""

import csv
import math
import os
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

from brainseg.utils.errors import LGGDataError

__all__ = ["SPACING_COLUMNS", "Spacing", "PatientSpacingSource", "load_patient_spacing", "spacing_for"]

Spacing = Tuple[float, float, float]
PatientSpacingSource = Union[str, os.PathLike, Mapping[str, Sequence[float]]]
SPACING_COLUMNS = ("patient", "spacing_z", "spacing_y", "spacing_x")


def _as_spacing(values: Sequence[Union[str, float]], where: str) -> Spacing:
    """Three finite positive floats (z, y, x), or a :class:`LGGDataError` naming ``where``."""
    try:
        spacing = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise LGGDataError(f"{where}: spacing must be 3 numbers (z, y, x) in mm; got {list(values)}") from None
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise LGGDataError(f"{where}: spacing must be 3 positive numbers (z, y, x) in mm; got {list(values)}")
    return spacing


def _read_csv(path: Union[str, os.PathLike]) -> Dict[str, Spacing]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in SPACING_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise LGGDataError(
                    f"patient spacing table {path} lacks the column(s) {missing}; expected header "
                    + ",".join(SPACING_COLUMNS)
                )
            rows = [(reader.line_num, row) for row in reader]
    except FileNotFoundError:
        raise LGGDataError(f"patient spacing table not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise LGGDataError(f"cannot read patient spacing table {path}: {e}") from None
    table: Dict[str, Spacing] = {}
    for line, row in rows:
        patient = (row["patient"] or "").strip()
        where = f"{path}, line {line}"
        if not patient:
            raise LGGDataError(f"{where}: empty patient")
        if patient in table:
            raise LGGDataError(f"{where}: patient {patient} is listed twice")
        table[patient] = _as_spacing([row[c] for c in SPACING_COLUMNS[1:]], where)
    return table


def load_patient_spacing(source: PatientSpacingSource) -> Dict[str, Spacing]:
    """Read a per-patient spacing table.

    Args:
        source: a CSV file with the columns ``patient,spacing_z,spacing_y,spacing_x`` (mm;
            more columns are ignored) or a dict ``{patient_id: (z, y, x)}``.

    Returns:
        dict: ``{patient_id: (z, y, x)}`` with float values.

    Raises:
        LGGDataError: missing or unreadable file, missing column, empty or repeated patient,
            or a spacing that is not 3 positive numbers; the message names the file and line.
    """
    if isinstance(source, Mapping):
        table = {str(p): _as_spacing(s, f"patient spacing of {p}") for p, s in source.items()}
    else:
        table = _read_csv(source)
    if not table:
        raise LGGDataError(f"patient spacing table {source} lists no patient")
    return table


def spacing_for(
    patient_id: str, *, patient_spacing: Optional[Mapping[str, Spacing]], spacing: Optional[Spacing]
) -> Optional[Spacing]:
    """The spacing of one patient: its row in ``patient_spacing``, else the global ``spacing``.

    Args:
        patient_id: the patient.
        patient_spacing: per-patient table (see :func:`load_patient_spacing`) or None.
        spacing: global (z, y, x) spacing or None.

    Returns:
        The (z, y, x) spacing in mm, or None when neither is given (distances in voxels).

    Raises:
        LGGDataError: a table is given, the patient is not in it and there is no global spacing
            (its distances would be in voxels while the others are in mm).
    """
    if patient_spacing is not None and patient_id in patient_spacing:
        return patient_spacing[patient_id]
    if patient_spacing is not None and spacing is None:
        raise LGGDataError(
            f"patient {patient_id} is not in the patient spacing table and no global spacing is set; "
            "add the patient to the table or give a spacing to fall back on"
        )
    return spacing
