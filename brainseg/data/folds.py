"""Deterministic patient-level k-fold cross-validation (slices of one patient never leak).

The k-fold counterpart of :func:`brainseg.data.split.split_patients`: every patient is tested
exactly once, and each fold's validation patients (for checkpoint or threshold choice) come
from that fold's training part, never from its test part. The folds depend only on the set of
patient ids and the seed, and can be saved to JSON so a resumed study re-uses the same folds.
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..utils.errors import ConfigError, LGGDataError
from ..utils.io import PathLike, atomic_write
from .split import DEFAULT_SPLIT_SEED

__all__ = [
    "DEFAULT_NUM_FOLDS",
    "DEFAULT_VAL_FRACTION",
    "Fold",
    "patient_folds",
    "fold_of_patient",
    "save_folds",
    "load_folds",
]

DEFAULT_NUM_FOLDS = 5
# the share of each fold's non-test patients held out for validation, as in the single split
DEFAULT_VAL_FRACTION = 0.15
_PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold: disjoint, sorted tuples of patient ids."""

    index: int
    train: Tuple[str, ...]
    val: Tuple[str, ...]
    test: Tuple[str, ...]

    def as_dict(self) -> Dict[str, list]:
        """``{"index": i, "train": [...], "val": [...], "test": [...]}`` (JSON-ready)."""
        return {"index": self.index, **{part: list(getattr(self, part)) for part in _PARTS}}


def patient_folds(
    patients: Sequence[str],
    *,
    num_folds: int = DEFAULT_NUM_FOLDS,
    seed: int = DEFAULT_SPLIT_SEED,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> List[Fold]:
    """Split patients into ``num_folds`` folds with a validation part taken from training.

    The patient ids are sorted, shuffled with ``numpy.random.default_rng(seed)`` and cut into
    ``num_folds`` consecutive test chunks whose sizes differ by at most one
    (``numpy.array_split``). Fold ``i`` tests chunk ``i``; its validation patients are the first
    ``max(1, round(val_fraction * n_rest))`` of the other patients in the shuffled order, read
    cyclically from chunk ``i + 1`` (``n_rest`` = number of non-test patients; none when
    ``val_fraction`` is 0); the rest train. So the folds do not depend on the input order, and
    as long as the validation part fits in one chunk no patient validates two folds.

    Args:
        patients: unique patient identifiers.
        num_folds: number of folds, 2 to the number of patients.
        seed: shuffling seed.
        val_fraction: share of each fold's non-test patients used for validation, in [0, 1).

    Returns:
        list[Fold]: ``num_folds`` folds, index 0 to ``num_folds - 1``, each part sorted.

    Raises:
        ConfigError: duplicate ids, ``num_folds`` < 2 or above the number of patients,
            ``val_fraction`` outside [0, 1), or no patient left for training.
    """
    ids = sorted(str(p) for p in patients)
    duplicates = sorted({p for p, q in zip(ids, ids[1:]) if p == q})
    if duplicates:
        raise ConfigError(f"patient ids must be unique for cross-validation; repeated: {', '.join(duplicates)}")
    n = len(ids)
    if isinstance(num_folds, bool) or not isinstance(num_folds, (int, np.integer)) or num_folds < 2:
        raise ConfigError(f"num_folds must be an integer of at least 2, got {num_folds!r}")
    if num_folds > n:
        raise ConfigError(f"num_folds={num_folds} is more than the {n} patients: every fold needs a test patient")
    val_fraction = float(val_fraction)
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")

    order = np.random.default_rng(seed).permutation(n)
    chunks = [[ids[i] for i in chunk] for chunk in np.array_split(order, num_folds)]
    n_rest = n - max(len(c) for c in chunks)  # the fewest non-test patients of any fold
    n_val = max(1, round(val_fraction * n_rest)) if val_fraction > 0 else 0
    if n_rest - n_val < 1:
        raise ConfigError(
            f"{n} patients in {num_folds} folds with val_fraction={val_fraction} leave no patient for "
            "training: use more patients, fewer folds or a smaller val_fraction"
        )
    folds = []
    for index, test in enumerate(chunks):
        rest = [p for chunk in chunks[index + 1 :] + chunks[:index] for p in chunk]
        n_val = max(1, round(val_fraction * len(rest))) if val_fraction > 0 else 0
        folds.append(Fold(index, tuple(sorted(rest[n_val:])), tuple(sorted(rest[:n_val])), tuple(sorted(test))))
    return folds


def fold_of_patient(folds: Sequence[Fold]) -> Dict[str, int]:
    """Map each patient to the index of the fold that tests it.

    Args:
        folds: folds as returned by :func:`patient_folds` or :func:`load_folds`.

    Returns:
        dict: ``{patient: fold index}``, one entry per tested patient.

    Raises:
        ValueError: a patient is tested by two folds.
    """
    owner: Dict[str, int] = {}
    for fold in folds:
        for patient in fold.test:
            if patient in owner:
                raise ValueError(f"patient {patient} is tested by folds {owner[patient]} and {fold.index}")
            owner[patient] = fold.index
    return owner


def save_folds(path: PathLike, folds: Sequence[Fold]) -> None:
    """Write folds to a JSON file atomically (``{"num_folds": k, "folds": [fold.as_dict(), ...]}``).

    Args:
        path: destination ``.json`` file; its folder is created if needed.
        folds: the folds to save.
    """
    payload = {"num_folds": len(folds), "folds": [fold.as_dict() for fold in folds]}
    atomic_write(path, json.dumps(payload, indent=1) + "\n")


def load_folds(path: PathLike, *, patients: Optional[Sequence[str]] = None) -> List[Fold]:
    """Read folds written by :func:`save_folds` and check that they are consistent.

    Args:
        path: a folds ``.json`` file.
        patients: if given, the patients of the study: the saved folds must test exactly these
            (a resumed study must not silently run on other patients).

    Returns:
        list[Fold]: the folds, in index order.

    Raises:
        LGGDataError: missing or unreadable file, bad structure, a patient in two parts of a
            fold or tested twice, or (with ``patients``) a different set of patients.
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
        folds = [
            Fold(int(f["index"]), *(tuple(str(p) for p in f[part]) for part in _PARTS)) for f in payload["folds"]
        ]
    except FileNotFoundError:
        raise LGGDataError(f"folds file {path} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LGGDataError(f"folds file {path} is not a valid folds JSON ({type(e).__name__}: {e})") from None
    if [f.index for f in folds] != list(range(len(folds))) or len(folds) < 2:
        raise LGGDataError(f"folds file {path} must hold folds 0..k-1 in order (k >= 2)")
    try:
        tested = fold_of_patient(folds)
    except ValueError as e:
        raise LGGDataError(f"folds file {path}: {e}") from None
    for fold in folds:
        members = [p for part in _PARTS for p in getattr(fold, part)]
        if len(set(members)) != len(members) or set(members) != set(tested):
            raise LGGDataError(
                f"folds file {path}: fold {fold.index} must put each of the {len(tested)} tested patients "
                "in exactly one of train/val/test"
            )
    if patients is not None and set(tested) != set(patients):
        missing, extra = sorted(set(patients) - set(tested)), sorted(set(tested) - set(patients))
        raise LGGDataError(
            f"folds file {path} does not match the study's patients (not in the file: {missing or 'none'}; "
            f"not in the study: {extra or 'none'}): delete it to make new folds"
        )
    return folds
