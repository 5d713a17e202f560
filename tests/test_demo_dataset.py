"""Tests of the LGG demo dataset generator (brainseg.data.demo) and its CLI."""

import csv
import datetime
import filecmp
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from brainseg.data.demo import generate as demo
from brainseg.data.demo import generate_lgg_demo

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "datasets" / "prepare_lgg_demo.py"
SLICES = (12, 16)  # small volumes keep the tests fast
NAME_RE = re.compile(r"^TCGA_(CS|DU|EZ|FG|HT)_(\d{4})_(\d{8})$")


def _patients(root: Path):
    return sorted(p for p in root.iterdir() if p.is_dir())


def _read_volume(folder: Path):
    count = len(list(folder.glob("*_mask.tif")))
    images = np.stack([tifffile.imread(folder / f"{folder.name}_{k}.tif") for k in range(1, count + 1)])
    masks = np.stack([tifffile.imread(folder / f"{folder.name}_{k}_mask.tif") for k in range(1, count + 1)])
    return images, masks


def _tree_bytes_equal(a: Path, b: Path) -> bool:
    files_a = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    files_b = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    if files_a != files_b:
        return False
    match, mismatch, errors = filecmp.cmpfiles(a, b, files_a, shallow=False)
    return not mismatch and not errors


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "lgg_demo"
    root = generate_lgg_demo(str(out), num_patients=3, seed=0, show_progress=False, num_slices_range=SLICES)
    return Path(root)


def test_layout_and_names(demo_root):
    assert demo_root.name == "kaggle_3m"
    assert sorted(p.name for p in demo_root.iterdir() if p.is_file()) == ["data.csv"]
    patients = _patients(demo_root)
    assert len(patients) == 3
    for folder in patients:
        match = NAME_RE.match(folder.name)
        assert match, folder.name
        date = datetime.datetime.strptime(match.group(3), "%Y%m%d").date()
        assert datetime.date(1995, 1, 1) <= date <= datetime.date(2005, 12, 31)
        count = len(list(folder.glob("*_mask.tif")))
        assert SLICES[0] <= count <= SLICES[1]
        expected = {f"{folder.name}_{k}.tif" for k in range(1, count + 1)}
        expected |= {f"{folder.name}_{k}_mask.tif" for k in range(1, count + 1)}
        assert {p.name for p in folder.iterdir()} == expected  # un-padded k, a mask for every image
    # No temporary or backup folders left next to the target.
    assert [p.name for p in demo_root.parent.parent.iterdir()] == ["lgg_demo"]


def test_data_csv(demo_root):
    with open(demo_root / "data.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["Patient"] for row in rows] == [p.name.rsplit("_", 1)[0] for p in _patients(demo_root)]
    assert len(rows[0]) == 12 and "RNASeqCluster" in rows[0] and "laterality" in rows[0]
    values = [v for row in rows for k, v in row.items() if k != "Patient"]
    assert "" in values  # some gaps, like Kaggle's file
    assert {row["laterality"] for row in rows} <= {"Left", "Right", ""}


def test_image_and_mask_format(demo_root):
    for folder in _patients(demo_root):
        images, masks = _read_volume(folder)
        assert images.dtype == np.uint8 and images.shape[1:] == (256, 256, 3)
        assert masks.dtype == np.uint8 and masks.shape == images.shape[:3]
        assert set(np.unique(masks)) <= {0, 255}
        # A head is visible on every slice; the background corner is black.
        assert (images[..., 1].reshape(len(images), -1).max(axis=1) > 100).all()
        assert (images[:, :8, :8] == 0).all()


def test_readers_agree(demo_root):
    folder = _patients(demo_root)[0]
    for k in (1, 5):
        image_path, mask_path = folder / f"{folder.name}_{k}.tif", folder / f"{folder.name}_{k}_mask.tif"
        reference, reference_mask = tifffile.imread(image_path), tifffile.imread(mask_path)
        with Image.open(image_path) as pil:
            assert pil.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(pil), reference)
        with Image.open(mask_path) as pil:
            assert pil.mode == "L"
            np.testing.assert_array_equal(np.asarray(pil), reference_mask)
        np.testing.assert_array_equal(cv2.imread(str(image_path), cv2.IMREAD_COLOR)[..., ::-1], reference)
        np.testing.assert_array_equal(cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED), reference_mask)


def test_lesions_fraction_and_flair_contrast(demo_root):
    with_lesion, total = 0, 0
    for folder in _patients(demo_root):
        images, masks = _read_volume(folder)
        has_lesion = masks.reshape(len(masks), -1).max(axis=1) > 0
        assert 0 < has_lesion.sum() < len(masks)  # every patient has a lesion, not on every slice
        with_lesion += int(has_lesion.sum())
        total += len(masks)
        # Hyperintense in FLAIR relative to the rest of the brain/head tissue on the same slices.
        flair = images[has_lesion, ..., 1].astype(np.float64)
        lesion = masks[has_lesion] > 0
        tissue = (flair > 20) & ~lesion
        assert flair[lesion].mean() > 1.3 * np.median(flair[tissue])
    assert 0.15 <= with_lesion / total <= 0.6


def test_same_seed_identical_bytes_and_prefix_stable(demo_root, tmp_path):
    again = Path(
        generate_lgg_demo(str(tmp_path / "a"), num_patients=3, seed=0, show_progress=False, num_slices_range=SLICES)
    )
    assert _tree_bytes_equal(demo_root, again)
    # Fewer patients: each patient that is written is identical to the 3-patient run.
    fewer = Path(
        generate_lgg_demo(str(tmp_path / "b"), num_patients=1, seed=0, show_progress=False, num_slices_range=SLICES)
    )
    (patient,) = _patients(fewer)
    assert _tree_bytes_equal(patient, demo_root / patient.name)


def test_different_seed_differs(demo_root, tmp_path):
    other = Path(
        generate_lgg_demo(str(tmp_path / "c"), num_patients=1, seed=1, show_progress=False, num_slices_range=SLICES)
    )
    (patient,) = _patients(other)
    assert patient.name not in {p.name for p in _patients(demo_root)}
    reference = _patients(demo_root)[0]
    image = tifffile.imread(patient / f"{patient.name}_1.tif")
    assert not np.array_equal(image, tifffile.imread(reference / f"{reference.name}_1.tif"))


def test_refuses_to_overwrite_without_force(demo_root):
    before = sorted(p.name for p in _patients(demo_root))
    with pytest.raises(FileExistsError, match="not empty"):
        generate_lgg_demo(str(demo_root.parent), num_patients=1, show_progress=False)
    assert sorted(p.name for p in _patients(demo_root)) == before
    assert [p.name for p in demo_root.parent.parent.iterdir()] == ["lgg_demo"]


def test_overwrite_replaces_dataset_but_never_foreign_folders(tmp_path):
    out = tmp_path / "lgg_demo"
    generate_lgg_demo(str(out), num_patients=1, seed=0, show_progress=False, num_slices_range=(2, 3))
    (out / "stale.json").write_text("{}")
    generate_lgg_demo(str(out), num_patients=2, seed=1, show_progress=False, num_slices_range=(2, 3), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["kaggle_3m"]
    assert len(_patients(out / "kaggle_3m")) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["lgg_demo"]

    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds no kaggle_3m"):
        generate_lgg_demo(str(foreign), num_patients=1, show_progress=False, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_write(folder, name, images, masks):  # dies while writing the second patient
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        os.makedirs(folder)

    monkeypatch.setattr(demo, "_write_patient", failing_write)
    with pytest.raises(KeyboardInterrupt):
        generate_lgg_demo(str(tmp_path / "lgg_demo"), num_patients=3, show_progress=False, num_slices_range=(2, 3))
    assert len(calls) == 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_patients": 0}, "num_patients"),
        ({"num_patients": 2.5}, "num_patients"),
        ({"seed": -1}, "seed"),
        ({"num_slices_range": (5, 3)}, "num_slices_range"),
        ({"num_slices_range": (0, 3)}, "num_slices_range"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_lgg_demo(str(tmp_path / "x"), show_progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []


def _load_cli():
    spec = importlib.util.spec_from_file_location("prepare_lgg_demo", CLI)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_bad_args_one_line():
    result = subprocess.run(
        [sys.executable, str(CLI), "--patients", "zero"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--patients" in lines[0] and "positive integer" in lines[0]


def test_cli_refuses_non_empty_target(tmp_path, capsys):
    (tmp_path / "something.txt").write_text("x")
    assert _load_cli().main(["--out", str(tmp_path), "--patients", "1", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0] and "--force" in err[0]
    assert [p.name for p in tmp_path.iterdir()] == ["something.txt"]


def test_cli_default_out_uses_env(monkeypatch, tmp_path):
    monkeypatch.setenv("BRAINSEG_DATASETS", str(tmp_path))
    args = _load_cli().build_parser().parse_args([])
    assert args.out == os.path.join(str(tmp_path), "lgg_demo")
    assert (args.patients, args.seed, args.force) == (24, 0, False)
