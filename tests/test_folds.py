"""Patient-level k-fold cross-validation (brainseg.data.folds)."""
import json
import random

import pytest

from brainseg.data.folds import Fold, fold_of_patient, load_folds, patient_folds, save_folds
from brainseg.utils.errors import ConfigError, LGGDataError

PATIENTS = [f"TCGA_CS_{i:04d}_19970101" for i in range(23)]


def test_parts_are_disjoint_and_every_patient_is_tested_once():
    folds = patient_folds(PATIENTS, num_folds=5)
    assert [f.index for f in folds] == list(range(5))
    tested = [p for f in folds for p in f.test]
    assert sorted(tested) == sorted(PATIENTS)
    for fold in folds:
        train, val, test = set(fold.train), set(fold.val), set(fold.test)
        assert not (train & val) and not (train & test) and not (val & test)
        assert train | val | test == set(PATIENTS)
        # validation comes from the training part (the non-test patients), never from test
        assert val <= set(PATIENTS) - test
        for part in (fold.train, fold.val, fold.test):
            assert list(part) == sorted(part)
    assert fold_of_patient(folds) == {p: f.index for f in folds for p in f.test}


def test_sizes():
    folds = patient_folds(PATIENTS, num_folds=5, val_fraction=0.15)
    assert sorted(len(f.test) for f in folds) == [4, 4, 5, 5, 5]
    for fold in folds:
        n_rest = len(PATIENTS) - len(fold.test)
        assert len(fold.val) == max(1, round(0.15 * n_rest))
        assert len(fold.train) == n_rest - len(fold.val)
    # a tiny fraction still gives one validation patient; 0 gives none
    assert all(len(f.val) == 1 for f in patient_folds(PATIENTS, num_folds=5, val_fraction=0.001))
    assert all(f.val == () for f in patient_folds(PATIENTS, num_folds=5, val_fraction=0.0))


def test_lgg_sized_study_validates_each_patient_at_most_once():
    patients = [f"P{i:03d}" for i in range(110)]
    folds = patient_folds(patients)
    assert [len(f.test) for f in folds] == [22] * 5
    assert all(len(f.val) == 13 and len(f.train) == 75 for f in folds)
    validated = [p for f in folds for p in f.val]
    assert len(validated) == len(set(validated))


def test_deterministic_and_independent_of_input_order():
    folds = patient_folds(PATIENTS, num_folds=4, seed=7)
    shuffled = list(PATIENTS)
    random.Random(1).shuffle(shuffled)
    assert patient_folds(shuffled, num_folds=4, seed=7) == folds
    assert patient_folds(tuple(PATIENTS), num_folds=4, seed=7) == folds
    assert patient_folds(PATIENTS, num_folds=4, seed=8) != folds


def test_leave_one_out_is_possible():
    folds = patient_folds(PATIENTS[:6], num_folds=6, val_fraction=0.2)
    assert all(len(f.test) == 1 and len(f.val) == 1 and len(f.train) == 4 for f in folds)


@pytest.mark.parametrize(
    "kwargs,patients,message",
    [
        ({"num_folds": 1}, PATIENTS, "num_folds must be an integer of at least 2, got 1"),
        ({"num_folds": 2.5}, PATIENTS, "num_folds must be an integer"),
        ({"num_folds": 24}, PATIENTS, "num_folds=24 is more than the 23 patients"),
        ({"val_fraction": 1.0}, PATIENTS, "val_fraction must be in [0, 1), got 1.0"),
        ({"val_fraction": -0.1}, PATIENTS, "val_fraction must be in [0, 1), got -0.1"),
        ({"num_folds": 2}, ["a", "b"], "leave no patient for training"),
        ({"num_folds": 3, "val_fraction": 0.9}, PATIENTS[:6], "leave no patient for training"),
        ({}, PATIENTS + ["x", PATIENTS[3]], f"repeated: {PATIENTS[3]}"),
    ],
)
def test_errors(kwargs, patients, message):
    with pytest.raises(ConfigError) as info:
        patient_folds(patients, **kwargs)
    assert message in str(info.value)


def test_fold_of_patient_rejects_a_patient_tested_twice():
    folds = [Fold(0, ("b",), (), ("a",)), Fold(1, ("b",), (), ("a",))]
    with pytest.raises(ValueError, match="patient a is tested by folds 0 and 1"):
        fold_of_patient(folds)


def test_json_round_trip(tmp_path):
    folds = patient_folds(PATIENTS, num_folds=3, seed=2)
    path = tmp_path / "study" / "folds.json"
    save_folds(path, folds)
    assert json.loads(path.read_text())["num_folds"] == 3
    assert load_folds(path) == folds
    assert load_folds(path, patients=reversed(PATIENTS)) == folds
    assert [p.name for p in path.parent.iterdir()] == ["folds.json"]  # no temporary file left


def test_load_rejects_other_patients_and_bad_files(tmp_path):
    path = tmp_path / "folds.json"
    save_folds(path, patient_folds(PATIENTS, num_folds=3))
    with pytest.raises(LGGDataError, match=r"not in the file: \['new'\]; not in the study: none"):
        load_folds(path, patients=PATIENTS + ["new"])
    with pytest.raises(LGGDataError, match="does not exist"):
        load_folds(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LGGDataError, match="is not a valid folds JSON"):
        load_folds(bad)
    bad.write_text(json.dumps({"folds": [{"index": 0, "train": ["a"], "val": [], "test": ["b"]}]}))
    with pytest.raises(LGGDataError, match="must hold folds 0..k-1"):
        load_folds(bad)
    overlapping = [
        {"index": 0, "train": ["a", "b"], "val": [], "test": ["b"]},
        {"index": 1, "train": ["b"], "val": [], "test": ["a"]},
    ]
    bad.write_text(json.dumps({"folds": overlapping}))
    with pytest.raises(LGGDataError, match="fold 0 must put each of the 2 tested patients in exactly one"):
        load_folds(bad)
