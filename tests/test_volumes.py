"""NIfTI volumes in and out: cases built from a demo patient with an oblique LPS 0.9x0.9x5 mm
affine and int16 intensities; outputs on the input's grid, per-volume normalisation invariant to
gain and offset, the NIfTI path agreeing with the TIFF path, bad input, BraTS-layout datasets."""
import json
import os
import re

import nibabel as nib
import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from scipy.spatial.transform import Rotation

from brainseg.data import (LGGDatasetMapper, build_lgg_test_augmentations, find_case, load_case, load_coco_records, normalize_intensities,
                           register_volume_dataset, volume_intensity_range)
from brainseg.data.coco import convert_lgg_to_coco
import brainseg.data.volume_dataset as volume_dataset
from brainseg.data.demo.render import render_patient
from brainseg.data.nifti_export import lgg_tree_to_nifti
from brainseg.data.volumes import to_input_space, to_slices
from brainseg.engine import load_config
from brainseg.evaluation import LGGEvaluator
from brainseg.inference.commands import predict_main
from brainseg.inference.grid import InPlaneGrid
from brainseg.utils.cli import run_cli
from lgg_tree import perfect_tiny_unet, write_lgg_tree

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = "configs/lgg/unet.py"
TINY = ["model.net.base_channels=4", "model.net.depth=1"]
SIZE = 128  # the demo slices, downsampled for speed
PATIENT = "TCGA_DM_0001_20000101"


def lps_oblique_affine() -> np.ndarray:
    """i -> patient left, j -> posterior, k -> superior (LPS), 0.9 x 0.9 x 5 mm, rotated a few degrees."""
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [4, -3, 6], degrees=True).as_matrix() @ np.diag([-0.9, -0.9, 5.0])
    affine[:3, 3] = (110.0, 125.0, -40.0)
    return affine


def write_case(folder, slices, mask, *, names, affine=None, dtype=np.int16):
    """Write (K, H, W, 3) slices as one NIfTI per sequence (LPS array order) plus the segmentation."""
    folder.mkdir(parents=True)
    affine = lps_oblique_affine() if affine is None else affine
    for channel, name in zip(range(3), names[:3]):
        data = to_input_space(slices[..., channel], affine).astype(dtype)
        image = nib.Nifti1Image(data, affine)
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=2)
        nib.save(image, str(folder / name))
    seg = nib.Nifti1Image(to_input_space(mask.astype(np.uint8) * 2, affine), affine)  # label 2: any > 0 is tumour
    nib.save(seg, str(folder / names[3]))
    return folder


# file names in brainseg's channel order (pre-contrast T1, FLAIR, post-contrast T1), then the labels
BRATS21 = ["{c}_t1.nii.gz", "{c}_flair.nii.gz", "{c}_t1ce.nii.gz", "{c}_seg.nii.gz"]
BRATS23 = ["{c}-t1n.nii.gz", "{c}-t2f.nii.gz", "{c}-t1c.nii.gz", "{c}-seg.nii.gz"]


def brats_names(template, case):
    return [t.format(c=case) for t in template]


@pytest.fixture(scope="module")
def demo_patient():
    """One rendered demo patient: (K, 128, 128, 3) uint8 slices and (K, 128, 128) bool truth."""
    images, masks, _ = render_patient(np.random.default_rng(3), num_slices_range=(6, 6))
    return np.ascontiguousarray(images[:, ::2, ::2]), masks[:, ::2, ::2] > 0


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    model = perfect_tiny_unet(instantiate(load_config(CONFIG, TINY).model))  # tumour where FLAIR is bright
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def cases(tmp_path_factory, demo_patient):
    """Case A (raw intensities as int16, BraTS 2021 names), case B (3 a + 50, BraTS 2023 names)."""
    images, truth = demo_patient
    root = tmp_path_factory.mktemp("nifti")
    raw = images.astype(np.int16)
    write_case(root / "caseA", raw, truth, names=brats_names(BRATS21, "caseA"))
    write_case(root / "caseB", 3 * raw + 50, truth, names=brats_names(BRATS23, "caseB"))
    return root


def predict(args, capsys):
    # fp32: the comparisons below are at 1e-3 (bf16 would round the two paths' inputs differently)
    code = run_cli(predict_main, ["--config-file", CONFIG, "--no-progress", "--precision", "fp32",
                                  *[str(a) for a in args], *TINY])
    return code, capsys.readouterr().err


def test_orientation_round_trip_and_slices_match_the_demo(cases, demo_patient):
    images, truth = demo_patient
    loaded = load_case(find_case(cases / "caseA"))
    assert loaded.image.shape == images.shape
    np.testing.assert_array_equal(loaded.image, images.astype(np.float32))  # LPS oblique -> display slices
    np.testing.assert_array_equal(loaded.truth, truth)
    assert loaded.spacing == pytest.approx((5.0, 0.9, 0.9))
    data = np.asarray(loaded.reference.dataobj)
    np.testing.assert_array_equal(to_input_space(to_slices(data, loaded.reference.affine), loaded.reference.affine),
                                  data)


def test_normalisation_is_invariant_to_gain_and_offset(demo_patient):
    images = demo_patient[0].astype(np.float64)
    a = normalize_intensities(images, volume_intensity_range(images))
    b = normalize_intensities(3 * images + 50, volume_intensity_range(3 * images + 50))
    assert np.abs(a - b).max() < 1e-3
    assert a.min() == 0.0 and 200 < np.percentile(a[images > 0], 99.5) < 256
    constant = volume_intensity_range(np.full((4, 4, 1), 7.0))
    assert constant.tolist() == [[7.0, 8.0]]


def test_in_plane_grid_shapes():
    grid = InPlaneGrid(size=256)
    assert grid.shape_for(240, 240, (1.0, 1.0)) == (256, 256)
    assert grid.shape_for(512, 512, (0.45, 0.45)) == (256, 256)
    assert grid.shape_for(240, 200, (1.0, 1.0)) == (256, 213)
    assert InPlaneGrid(spacing=2.0).shape_for(240, 200, (1.0, 1.5)) == (120, 150)


def test_predict_writes_masks_on_the_input_grid(cases, tiny_weights, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = predict(["--weights", tiny_weights, "--input", cases, "--output", out, "--save-probabilities"],
                        capsys)
    assert code == 0, err
    probabilities = {}
    for case in ("caseA", "caseB"):
        source = nib.load(str(next((cases / case).glob("*t2f*" if case == "caseB" else "*_flair*"))))
        mask, prob = nib.load(str(out / f"{case}_mask.nii.gz")), nib.load(str(out / f"{case}_prob.nii.gz"))
        for written, dtype in ((mask, np.uint8), (prob, np.float32)):
            assert written.shape == source.shape
            np.testing.assert_array_equal(written.affine, source.affine)
            np.testing.assert_array_equal(written.get_sform(), source.get_sform())
            np.testing.assert_array_equal(written.get_qform(), source.get_qform())
            assert int(written.header["sform_code"]) == 2 and int(written.header["qform_code"]) == 1
            assert written.get_data_dtype() == dtype
        mask_data, prob_data = np.asarray(mask.dataobj), np.asarray(prob.dataobj)
        assert set(np.unique(mask_data)) <= {0, 1}
        np.testing.assert_array_equal(mask_data == 1, prob_data > 0.5)
        assert 0 < mask_data.sum() < mask_data.size  # the tiny net is not constant
        probabilities[case] = prob_data
        assert (out / f"{case}_overlay.png").is_file()
    assert np.abs(probabilities["caseA"] - probabilities["caseB"]).max() <= 1e-3  # 3 a + 50: same result
    summary = json.loads((out / "summary.json").read_text())
    row = next(p for p in summary["patients"] if p["patient"] == "caseA")
    voxels = int(np.asarray(nib.load(str(out / "caseA_mask.nii.gz")).dataobj).sum())
    assert row["tumour_voxels"] == voxels
    assert row["tumour_volume_mm3"] == pytest.approx(voxels * 0.9 * 0.9 * 5.0)


def write_tiff_patient(root, images, truth):
    folder = root / "kaggle_3m" / PATIENT
    folder.mkdir(parents=True)
    for k, (image, mask) in enumerate(zip(images, truth), start=1):
        Image.fromarray(image).save(folder / f"{PATIENT}_{k}.tif")
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{PATIENT}_{k}_mask.tif")
    return root


def test_nifti_and_tiff_paths_agree_with_volume_normalisation(cases, demo_patient, tiny_weights, tmp_path, capsys):
    images, truth = demo_patient
    tiff_root = write_tiff_patient(tmp_path / "tiff", images, truth)
    volume = ["dataloader.test.mapper.intensity_normalization=volume"]
    for size in (SIZE, 64):  # the slices' own grid, and resampled to 64 px
        out_t, out_n = tmp_path / f"t{size}", tmp_path / f"n{size}"
        grid = ["--target-size", size]
        assert predict(["--weights", tiny_weights, "--input", tiff_root, "--output", out_t, "--save-probabilities",
                        "--no-overlays", *grid, *volume], capsys)[0] == 0
        assert predict(["--weights", tiny_weights, "--input", cases / "caseB", "--output", out_n,
                        "--save-probabilities", "--no-overlays", *grid], capsys)[0] == 0
        tiff = np.stack([np.asarray(Image.open(out_t / "kaggle_3m" / PATIENT / f"{PATIENT}_{k}_prob.tif"))
                         for k in range(1, len(images) + 1)])
        reference = nib.load(str(out_n / "caseB_prob.nii.gz"))
        nifti = to_slices(np.asarray(reference.dataobj), reference.affine)
        assert nifti.shape == tiff.shape
        assert np.abs(nifti - tiff).max() <= 1e-3


def _break(root, case, how):
    folder = root / case
    flair = next(folder.glob("*_flair.nii.gz"))
    if how == "corrupt":
        flair.write_bytes(b"\x1f\x8b not really a nifti file")
    elif how == "truncated":
        flair.write_bytes(flair.read_bytes()[: len(flair.read_bytes()) // 2])
    elif how == "shape":
        t1 = next(folder.glob("*_t1.nii.gz"))
        image = nib.load(str(t1))
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:-1], image.affine), str(t1))
    elif how == "affine":
        t1 = next(folder.glob("*_t1.nii.gz"))
        image = nib.load(str(t1))
        shifted = image.affine.copy()
        shifted[0, 3] += 3.0
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj), shifted), str(t1))
    elif how == "4d":
        image = nib.load(str(flair))
        data = np.asarray(image.dataobj)
        nib.save(nib.Nifti1Image(np.stack([data, data], -1), image.affine), str(flair))
    elif how == "no_flair":
        flair.unlink()
    elif how == "nonfinite":
        image = nib.load(str(flair))
        data = np.asarray(image.dataobj).astype(np.float32)
        data[1, 2, 1] = np.nan
        nib.save(nib.Nifti1Image(data, image.affine), str(flair))
    return flair


BAD_INPUTS = {
    "corrupt": "cannot read NIfTI file .*caseX_flair",
    "truncated": "cannot read NIfTI file .*caseX_flair",
    "shape": "caseX_t1.nii.gz has shape .* but caseX_flair.nii.gz has",
    "affine": "caseX_t1.nii.gz has another affine than caseX_flair",
    "4d": "caseX_flair.nii.gz has shape .*expected one 3-D volume",
    "no_flair": "case .*caseX has no FLAIR volume",
    "nonfinite": "caseX_flair.nii.gz has 1 non-finite voxels",
}


@pytest.mark.parametrize("how", sorted(BAD_INPUTS))
def test_bad_case_is_reported_and_the_others_processed(how, demo_patient, tiny_weights, tmp_path, capsys):
    images, truth = demo_patient
    root = tmp_path / "in"
    write_case(root / "caseX", images[:3].astype(np.int16), truth[:3], names=brats_names(BRATS21, "caseX"))
    write_case(root / "caseY", images[:3].astype(np.int16), truth[:3], names=brats_names(BRATS21, "caseY"))
    _break(root, "caseX", how)
    out = tmp_path / "out"
    code, err = predict(["--weights", tiny_weights, "--input", root, "--output", out, "--save-probabilities"],
                        capsys)
    assert code == 1
    assert re.search(BAD_INPUTS[how], err), err
    assert (out / "caseY_mask.nii.gz").is_file() and (out / "caseY_prob.nii.gz").is_file()
    assert not list(out.glob("caseX*"))  # nothing half-written for the failed case
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    summary = json.loads((out / "summary.json").read_text())
    assert [f["patient"] for f in summary["failures"]] == ["caseX"]


def test_missing_sequence_is_replaced_by_flair(demo_patient, tmp_path, caplog):
    images, truth = demo_patient
    folder = write_case(tmp_path / "c", images[:2].astype(np.int16), truth[:2], names=brats_names(BRATS21, "c"))
    (folder / "c_t1ce.nii.gz").unlink()
    case = find_case(folder)
    assert "no t1ce volume; FLAIR stands in" in caplog.text
    loaded = load_case(case)
    np.testing.assert_array_equal(loaded.image[..., 2], loaded.image[..., 1])
    mapped = find_case(folder, mapping={"flair": "c_flair.nii.gz", "t1": "c_t1.nii.gz", "seg": "*_seg.nii.gz"})
    assert mapped.segmentation.name == "c_seg.nii.gz" and set(mapped.sequences) == {"t1", "flair"}


def test_volume_dataset_records_mapper_evaluator_and_coco(cases, demo_patient, tmp_path, monkeypatch):
    images, truth = demo_patient
    names = {split: f"nifti_test_{split}" for split in ("train", "val", "test")}
    try:
        for split, name in names.items():
            register_volume_dataset(name, cases, split, ratios=(0.5, 0.0, 0.5), seed=0)
        train, test = DatasetCatalog.get(names["train"]), DatasetCatalog.get(names["test"])
        assert {r["patient_id"] for r in train} | {r["patient_id"] for r in test} == {"caseA", "caseB"}
        assert len(train) == len(test) == len(images)
        record = next(r for r in test if r["slice_index"] == 3)
        assert record["spacing"] == pytest.approx((5.0, 0.9, 0.9))

        mapped = LGGDatasetMapper(is_train=False)(record)
        expected = normalize_intensities(images[3].astype(np.float64), volume_intensity_range(images))
        np.testing.assert_allclose(mapped["image"].permute(1, 2, 0).numpy(), expected, atol=1e-3)
        np.testing.assert_array_equal(mapped["sem_seg"].numpy(), truth[3])

        # the evaluator takes the spacing from the records: HD95 in mm
        evaluator = LGGEvaluator(names["test"])
        evaluator.reset()
        for r in test:
            shifted = np.roll(truth[r["slice_index"]], 2, axis=1)  # 2 columns = 1.8 mm
            evaluator.process([LGGDatasetMapper(is_train=False)(r)], [{"sem_seg": torch.stack(
                [torch.from_numpy(~shifted).float(), torch.from_numpy(shifted).float()])}])
        metrics = evaluator.evaluate()["lgg"]
        assert metrics["surface_in_mm"] and metrics["hd95"] == pytest.approx(1.8, abs=0.05)

        # evaluated at a lower resolution (the demo configs), the truth comes from the annotations
        small = LGGDatasetMapper(is_train=False, augmentations=build_lgg_test_augmentations(resize_to=64))(record)
        assert small["sem_seg"].shape == (64, 64)
        evaluator.reset()
        perfect = torch.from_numpy(truth[3]).float()
        evaluator.process([small], [{"sem_seg": torch.stack([1 - perfect, perfect])}])
        assert evaluator.evaluate()["lgg"]["dice_global"] == 1.0

        # the index is reused while the files are unchanged
        monkeypatch.setattr(volume_dataset, "_index_case", lambda *a: pytest.fail("re-indexed an unchanged case"))
        assert len(DatasetCatalog.get(names["test"])) == len(test)

        paths = convert_lgg_to_coco(cases, tmp_path / "coco", ratios=(0.5, 0.0, 0.5), seed=0)
        restored = load_coco_records(paths["test"])
        assert [r["slice_index"] for r in restored] == [r["slice_index"] for r in test]
        assert restored[3]["volume_files"] == record["volume_files"]
        mapped_coco = LGGDatasetMapper(is_train=False)(restored[3])
        assert torch.equal(mapped_coco["image"], mapped["image"])
        assert torch.equal(mapped_coco["sem_seg"], mapped["sem_seg"])
    finally:
        for name in names.values():
            for n in (name, f"{name}_coco"):
                DatasetCatalog.remove(n)
                MetadataCatalog.remove(n)


def test_lgg_tree_to_nifti_round_trip(tmp_path):
    masks = write_lgg_tree(tmp_path / "tree", patients=[PATIENT], num_slices=5, size=32)
    folders = lgg_tree_to_nifti(str(tmp_path / "tree"), str(tmp_path / "cases"), naming="brats2023")
    assert [f.name for f in folders] == [PATIENT]
    loaded = load_case(find_case(folders[0]))
    paths = list(masks)  # written in slice order
    np.testing.assert_array_equal(loaded.image, np.stack([np.asarray(Image.open(p)) for p in paths]))
    np.testing.assert_array_equal(loaded.truth, np.stack([masks[p] for p in paths]).astype(bool))
    assert loaded.spacing == pytest.approx((5.0, 0.9, 0.9))
    assert nib.aff2axcodes(loaded.reference.affine) == ("L", "P", "S")


def test_slice_cache_gives_the_files_slices_and_is_ignored_once_they_change(demo_patient, tmp_path, monkeypatch, caplog):
    """Indexing writes each case's slices to <case>/brainseg_slices.npz; read_volume_slice then
    returns exactly the slices of the NIfTI files without opening them, and reads the files
    again when they changed or when no cache could be written."""
    images, truth = demo_patient
    raw = images.astype(np.int16)
    write_case(tmp_path / "ints", raw, truth, names=brats_names(BRATS21, "ints"))
    fractional = raw.astype(np.float32) * 1.37 + 0.25  # not integers: cached as float32
    write_case(tmp_path / "floats", fractional, truth, names=brats_names(BRATS21, "floats"), dtype=np.float32)
    entries = volume_dataset.index_volume_dataset(tmp_path)
    real_load = nib.load
    for entry in entries:
        files = [tmp_path / f for f in entry["files"]]
        with np.load(files[0].parent / volume_dataset.SLICE_CACHE_FILE) as cache:  # int16 where exact
            assert cache["0"].dtype == (np.int16 if entry["case_id"] == "ints" else np.float32)
        expected = load_case(find_case(files[0].parent)).image
        with monkeypatch.context() as m:
            m.setattr(nib, "load", lambda *a, **k: pytest.fail("read a NIfTI file despite a valid cache"))
            for k in range(len(expected)):
                cached = volume_dataset.read_volume_slice(files, k)
                assert cached.dtype == np.float32
                np.testing.assert_array_equal(cached, expected[k])
    np.testing.assert_allclose(load_case(find_case(tmp_path / "floats")).image[..., 1], fractional[..., 1], rtol=1e-6)

    # a changed file (new modification time) invalidates its case's cache: the files are read
    files = [tmp_path / f for f in entries[0]["files"]]
    stat = files[1].stat()
    os.utime(files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    opened = []
    monkeypatch.setattr(nib, "load", lambda *a, **k: opened.append(a[0]) or real_load(*a, **k))
    np.testing.assert_array_equal(volume_dataset.read_volume_slice(files, 2), load_case(find_case(files[0].parent)).image[2])
    assert len(opened) >= len(files)

    # deleted caches are rewritten by re-indexing; one that cannot be written is a warning per
    # case, the index is still built (and not retried while the files stay unchanged), and the
    # slices come from the files
    monkeypatch.setattr(nib, "load", real_load)
    for entry in entries:
        (tmp_path / entry["files"][0]).parent.joinpath(volume_dataset.SLICE_CACHE_FILE).unlink()
    real_atomic_write = volume_dataset.atomic_write

    def refuse_caches(path, data):
        if str(path).endswith(volume_dataset.SLICE_CACHE_FILE):
            raise PermissionError("read-only")
        real_atomic_write(path, data)

    monkeypatch.setattr(volume_dataset, "atomic_write", refuse_caches)
    with caplog.at_level("WARNING", logger=volume_dataset.__name__):
        entries = volume_dataset.index_volume_dataset(tmp_path)
    assert sum("cannot write the slice cache" in r.getMessage() for r in caplog.records) == 2
    assert not any(entry["slice_cache"] for entry in entries)
    monkeypatch.setattr(volume_dataset, "_index_case", lambda *a: pytest.fail("re-indexed an unchanged case"))
    assert len(volume_dataset.index_volume_dataset(tmp_path)) == 2
    files = [tmp_path / f for f in entries[1]["files"]]
    np.testing.assert_array_equal(volume_dataset.read_volume_slice(files, 4), load_case(find_case(files[0].parent)).image[4])


class _TruthModel(torch.nn.Module):
    """Predicts each mapped record's own truth (enough to draw overlays)."""

    def forward(self, batch):
        return [{"sem_seg": torch.stack([1 - r["sem_seg"].float(), r["sem_seg"].float()])} for r in batch]


def test_training_overlays_draw_nifti_slices(cases, demo_patient, tmp_path):
    """The overlays written after training read NIfTI slices from their volumes (the record's
    file_name is a .nii.gz, not an image), shown normalised per volume as the model saw them
    (clipped to 0..255)."""
    from brainseg.visualization.overlay import _display_slice, write_dataset_overlays

    images, _ = demo_patient
    records = volume_dataset.load_volume_records(cases)  # both cases
    record = next(r for r in records if r["patient_id"] == "caseA" and r["slice_index"] == 3)
    expected = normalize_intensities(images[3].astype(np.float64), volume_intensity_range(images))
    shown = _display_slice(record)
    assert shown.dtype == np.uint8 and shown.shape == images[3].shape
    # the normalisation maps the 0.5th / 99.5th percentiles to 0 / 255; the brightest voxels lie above
    assert expected.max() > 255
    assert np.abs(shown.astype(np.float64) - np.clip(expected, 0, 255)).max() <= 0.5 + 1e-3
    mapped = [LGGDatasetMapper(is_train=False)(r) for r in records]
    loader = [mapped[i:i + 4] for i in range(0, len(mapped), 4)]
    paths = write_dataset_overlays(_TruthModel(), loader, str(tmp_path / "overlays"))
    assert [os.path.basename(p) for p in paths] == ["caseA.png", "caseB.png"]
    for path in paths:
        with Image.open(path) as png:
            assert png.format == "PNG"
