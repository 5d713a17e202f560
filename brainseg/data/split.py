"""Deterministic patient-level train/val/test split (slices of one patient never leak)."""
from typing import Dict, Sequence

import numpy as np

__all__ = ["SPLITS", "DEFAULT_SPLIT_RATIOS", "DEFAULT_SPLIT_SEED", "split_patients"]

SPLITS = ("train", "val", "test")
# the default patient split: 70 / 15 / 15 % of patients, shuffled with seed 0
DEFAULT_SPLIT_RATIOS = (0.7, 0.15, 0.15)
DEFAULT_SPLIT_SEED = 0


def split_patients(
    patient_ids: Sequence[str], *, ratios: Sequence[float] = DEFAULT_SPLIT_RATIOS, seed: int = DEFAULT_SPLIT_SEED
) -> Dict[str, list]:
    """Assign patients to train/val/test.

    The order depends only on the sorted patient ids and ``seed``, so the same dataset gives the
    same split on every machine. val and test get ``round(ratio * n)`` patients (at least one
    each when the ratio is positive and there are enough patients); train gets the rest.

    Args:
        patient_ids: unique patient identifiers.
        ratios: (train, val, test) fractions, summing to 1.
        seed: shuffling seed.

    Returns:
        dict: ``{"train": [...], "val": [...], "test": [...]}``, each sorted.
    """
    ratios = tuple(float(r) for r in ratios)
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"split ratios must be three non-negative numbers summing to 1, got {ratios}")
    ids = sorted(set(patient_ids))
    if len(ids) != len(patient_ids):
        raise ValueError("patient ids must be unique")
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    n = len(ids)
    n_val, n_test = (max(1, round(r * n)) if r > 0 and n >= 3 else round(r * n) for r in ratios[1:])
    n_train = n - n_val - n_test
    if n_train < 0 or (ratios[0] > 0 and n_train == 0):
        raise ValueError(f"cannot split {n} patients with ratios {ratios}")
    parts = {
        "test": shuffled[:n_test],
        "val": shuffled[n_test : n_test + n_val],
        "train": shuffled[n_test + n_val :],
    }
    return {name: sorted(parts[name]) for name in SPLITS}
