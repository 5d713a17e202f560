"""tools/predict.py and brainseg.inference prediction: input layouts, written masks/overlays and
summaries, a perfect (hand-set) model re-evaluating to Dice 1, failures, TTA, strict weights."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from PIL import Image

from brainseg.data import LGGDataError, load_lgg_records, read_lgg_mask
from brainseg.engine import load_config
from brainseg.evaluation import LGGEvaluator
from brainseg.inference import SlicePredictor, VolumeSummary, natural_key, predict_to_folder, resolve_inputs
from brainseg.inference.commands import predict_main
from brainseg.utils.cli import run_cli
from lgg_tree import perfect_tiny_unet, write_lgg_tree

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs/lgg/unet.py")
# the hand-set model below reads the TIFF intensities as they are (no per-volume normalisation)
TINY = ["model.net.base_channels=4", "model.net.depth=1", "dataloader.test.mapper.intensity_normalization=none"]
PATIENTS = ["TCGA_AA_0001_20000101", "TCGA_BB_0002_20000101"]


def predict_cli(argv) -> int:
    """``tools/predict.py argv``: the exit code."""
    return run_cli(predict_main, argv)


def write_visible_tree(root: Path, *, num_slices: int = 11, size: int = 64) -> dict:
    """``write_lgg_tree`` with images where the tumour is visible (FLAIR 230 on a background
    below 80), so that a hand-set tiny net predicts the masks exactly. Returns {image path: mask}."""
    masks = write_lgg_tree(root, patients=PATIENTS, num_slices=num_slices, size=size)
    rng = np.random.default_rng(1)
    for path, mask in masks.items():
        image = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
        image[mask == 1, 1] = 230
        Image.fromarray(image).save(path)
    return masks


def _model_inputs(paths):
    return [{"image": torch.from_numpy(np.asarray(Image.open(p)).transpose(2, 0, 1).copy()), "height": 64,
             "width": 64} for p in paths]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny UNet whose masks equal the truth on all 22 slices, with a margin: every tumour
    probability is > 0.99 and every background one < 0.01 (weights set by hand, not trained)."""
    root = tmp_path_factory.mktemp("lgg")
    masks = write_visible_tree(root)
    model = perfect_tiny_unet(instantiate(load_config(CONFIG, TINY).model)).eval()
    truth = torch.from_numpy(np.stack(list(masks.values()))).bool()
    with torch.no_grad():
        probability = torch.stack([o["sem_seg"][1] for o in model(_model_inputs(masks))])
    assert (probability[truth] > 0.99).all() and (probability[~truth] < 0.01).all()
    weights = root / "perfect.pth"
    torch.save({"model": model.state_dict()}, weights)
    return root, masks, weights


def _predict(capsys, *args):
    code = predict_cli(["--config-file", CONFIG, "--no-progress", *[str(a) for a in args], *TINY])
    return code, capsys.readouterr().err


def test_resolve_inputs_layouts(tmp_path):
    masks = write_lgg_tree(tmp_path, patients=PATIENTS, num_slices=11, size=16)
    tree = resolve_inputs(tmp_path)
    assert len(tree) == 22 == len(masks)
    first = tree[:11]
    assert [s.slice_index for s in first] == list(range(1, 12))  # numeric order: 2 before 10
    assert {s.patient_id for s in first} == {PATIENTS[0]}
    assert str(first[9].output_stem) == f"kaggle_3m/{PATIENTS[0]}/{PATIENTS[0]}_10"
    assert first[0].truth_path.name == f"{PATIENTS[0]}_1_mask.tif"
    assert [s.image_path for s in resolve_inputs(tmp_path / "kaggle_3m")] == [s.image_path for s in tree]

    patient = tmp_path / "kaggle_3m" / PATIENTS[1]
    folder = resolve_inputs(patient)
    assert [str(s.output_stem) for s in folder[:3]] == [f"{PATIENTS[1]}_{k}" for k in (1, 2, 3)]
    single = resolve_inputs(patient / f"{PATIENTS[1]}_4.tif")
    assert len(single) == 1 and single[0].slice_index == 4 and str(single[0].output_stem) == f"{PATIENTS[1]}_4"
    assert natural_key("a_2") < natural_key("a_10")

    with pytest.raises(LGGDataError, match="ground-truth mask"):
        resolve_inputs(patient / f"{PATIENTS[1]}_4_mask.tif")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LGGDataError, match="no input images .* found in .*empty"):
        resolve_inputs(tmp_path / "empty")
    with pytest.raises(LGGDataError, match="does not exist"):
        resolve_inputs(tmp_path / "missing")
    shutil.copy(patient / f"{PATIENTS[1]}_4.tif", patient / f"{PATIENTS[1]}_4.png")
    with pytest.raises(LGGDataError, match="would write the same outputs"):
        resolve_inputs(patient)


def test_prediction_streams_batch_by_batch(tmp_path):
    """Each batch is written before the next is read; no call sees more than a batch."""
    write_lgg_tree(tmp_path / "in", patients=PATIENTS[:1], num_slices=7, size=16)
    out, calls = tmp_path / "out", []

    def predictor(images, output_sizes):
        assert len(list(out.rglob("*_mask.tif"))) == sum(calls)  # earlier batches are on disk
        calls.append(len(images))
        assert all(image.shape[:2] == (256, 256) for image in images)  # the default grid: 256 px
        return [torch.full(tuple(size), 0.7 if i % 2 else 0.2) for i, size in enumerate(output_sizes)]

    summary = predict_to_folder(predictor, resolve_inputs(tmp_path / "in"), out, VolumeSummary(), batch_size=3,
                                progress=False)
    assert calls == [3, 3, 1]
    areas = [s.area_px for s in summary.patients[PATIENTS[0]].slices]
    assert areas == [0, 256, 0, 0, 256, 0, 0]


def test_predict_tree_writes_masks_overlays_and_volumes(trained, tmp_path, capsys):
    root, masks, weights = trained
    out = tmp_path / "out"
    code, err = _predict(capsys, "--weights", weights, "--input", root, "--output", out,
                         "--spacing", 0.5, 0.5, 3, "--batch-size", 5)
    assert code == 0, err
    for image_path, truth in masks.items():
        rel = Path(image_path).relative_to(root).with_suffix("")
        written = np.asarray(Image.open(out / f"{rel}_mask.tif"))
        assert written.dtype == np.uint8 and written.shape == (64, 64)
        assert set(np.unique(written)) <= {0, 255}
        np.testing.assert_array_equal(written, truth * 255)  # the model is perfect on these slices
        overlay = np.asarray(Image.open(out / f"{rel}_overlay.png"))
        assert overlay.shape == (64, 64, 3)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_slices"] == 22 and summary["num_failed"] == 0 and summary["failures"] == []
    assert summary["spacing_mm"] == [0.5, 0.5, 3.0]
    csv_lines = (out / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("patient,slices,slices_with_tumour,tumour_voxels,tumour_volume_mm3")
    for patient, row, line in zip(PATIENTS, summary["patients"], csv_lines[1:]):
        areas = [int(masks[str(root / "kaggle_3m" / patient / f"{patient}_{k}.tif")].sum()) for k in range(1, 12)]
        assert row["patient"] == patient and row["slices"] == 11
        assert [s["index"] for s in row["area_per_slice_px"]] == list(range(1, 12))
        assert [s["area_px"] for s in row["area_per_slice_px"]] == areas
        assert row["slices_with_tumour"] == sum(a > 0 for a in areas)
        assert row["tumour_voxels"] == sum(areas)
        assert row["tumour_volume_mm3"] == pytest.approx(sum(areas) * 0.75)
        assert row["max_area_slice"] == f"{patient}_{int(np.argmax(areas)) + 1}"
        assert row["max_area_px"] == max(areas)
        assert line.endswith(" ".join(map(str, areas)))


def test_predicted_masks_reevaluate_to_dice_one(trained, tmp_path, capsys):
    """The written masks, fed back to the evaluator as predictions, score Dice 1 everywhere."""
    root, _, weights = trained
    out = tmp_path / "out"
    assert _predict(capsys, "--weights", weights, "--input", root, "--output", out, "--no-overlays")[0] == 0
    evaluator = LGGEvaluator("lgg_predict_test", distributed=False, compute_hd95=False)
    evaluator.reset()
    for record in load_lgg_records(root):
        rel = Path(record["file_name"]).relative_to(root).with_suffix("")
        predicted = torch.from_numpy(read_lgg_mask(out / f"{rel}_mask.tif")).float()
        evaluator.process([record], [{"sem_seg": torch.stack([1 - predicted, predicted])}])
    metrics = evaluator.evaluate()["lgg"]
    assert metrics["dice_global"] == 1.0 and metrics["iou_global"] == 1.0
    assert metrics["dice_volume_mean"] == 1.0 and metrics["dice_slice_mean"] == 1.0


def test_bad_files_are_listed_and_the_others_processed(trained, tmp_path, capsys):
    root, masks, weights = trained
    folder = tmp_path / "slices"
    shutil.copytree(root / "kaggle_3m" / PATIENTS[0], folder)
    (folder / f"{PATIENTS[0]}_20.tif").write_bytes(b"not a tiff at all")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder / "gray_1.png")
    out = tmp_path / "out"
    code, err = _predict(capsys, "--weights", weights, "--input", folder, "--output", out)
    assert code == 1
    assert "2 input file(s) failed" in err
    assert f"cannot read image {folder / f'{PATIENTS[0]}_20.tif'}" in err
    assert f"image {folder / 'gray_1.png'} is grayscale" in err
    assert len(list(out.glob("*_mask.tif"))) == 11 and not (out / f"{PATIENTS[0]}_20_mask.tif").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_failed"] == 2 and summary["num_slices"] == 11
    assert {Path(f["file"]).name for f in summary["failures"]} == {f"{PATIENTS[0]}_20.tif", "gray_1.png"}
    assert not list(out.glob(".*"))  # no temporary files left


def test_single_file_input_and_refused_output_folder(trained, tmp_path, capsys):
    root, masks, weights = trained
    image = root / "kaggle_3m" / PATIENTS[1] / f"{PATIENTS[1]}_3.tif"
    out = tmp_path / "one"
    assert _predict(capsys, "--weights", weights, "--input", image, "--output", out)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{PATIENTS[1]}_3_mask.tif", f"{PATIENTS[1]}_3_overlay.png",
                                                     "summary.csv", "summary.json"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / f"{PATIENTS[1]}_3_mask.tif")), masks[str(image)] * 255)
    code, err = _predict(capsys, "--weights", weights, "--input", image, "--output", image.parent)
    assert code == 1 and "would overwrite the ground truth" in err and err.count("\n") == 1


def test_tta_is_the_mean_of_the_flipped_predictions(tmp_path):
    masks = write_visible_tree(tmp_path, num_slices=2)
    torch.manual_seed(1)
    model = instantiate(load_config(CONFIG, TINY).model).eval()
    inputs = _model_inputs(list(masks)[:3])
    images = [x["image"].numpy().transpose(1, 2, 0) for x in inputs]
    expected = []
    with torch.no_grad():
        for x in inputs:
            passes = []
            for dims in ((), (2,), (1,), (1, 2)):  # identity, hflip, vflip, both on (C, H, W)
                flipped = {"image": x["image"].flip(dims) if dims else x["image"], "height": 64, "width": 64}
                probability = model([flipped])[0]["sem_seg"][1]
                passes.append(probability.flip([d - 1 for d in dims]) if dims else probability)
            expected.append(torch.stack(passes).mean(0))
    got = SlicePredictor(model, tta=True, precision="fp32")(images)  # the expected passes ran in fp32
    plain = SlicePredictor(model, precision="fp32")(images)
    assert SlicePredictor(model, tta=True).tta_names == ["identity", "hflip", "vflip", "hvflip"]
    for g, e, p in zip(got, expected, plain):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=0)
        assert (g - p).abs().max() > 1e-4  # a random net is not flip-invariant: TTA changed something


def test_weights_that_do_not_fit_the_config_are_refused(trained, tmp_path, capsys):
    root, _, weights = trained
    args = ["--input", root, "--output", tmp_path / "out"]
    code, err = predict_cli(["--config-file", CONFIG, "--weights", str(weights), *map(str, args),
                                  "model.net.base_channels=8", "model.net.depth=1"]), capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert f"weights {weights} do not match the model of the config" in err and "shape mismatches" in err
    code, err = predict_cli(["--config-file", str(REPO / "configs/lgg/unext.py"), "--weights", str(weights),
                                  *map(str, args)]), capsys.readouterr().err
    assert code == 1 and "keys missing from the checkpoint" in err and "keys the model does not have" in err
    code, err = _predict(capsys, "--weights", tmp_path / "nope.pth", *args)
    assert code == 1 and f"weights file not found: {tmp_path / 'nope.pth'}" in err
    assert not (tmp_path / "out").exists()


def test_fuzzed_inputs_end_in_a_listed_failure_or_a_valid_mask(trained, tmp_path, capsys):
    """Truncated, random-byte, bit-flipped, wrong-dtype and wrong-size slices: each is either
    listed as a failure naming the file or predicted into a well-formed mask; never a crash."""
    root, masks, weights = trained
    source = root / "kaggle_3m" / PATIENTS[0]
    good = (source / f"{PATIENTS[0]}_1.tif").read_bytes()
    rng = np.random.default_rng(0)
    folder = tmp_path / "fuzz"
    folder.mkdir()
    flipped = bytearray(good)
    for i in rng.integers(8, len(good), 64):
        flipped[i] ^= 0xFF
    cases = {
        "truncated": good[: len(good) // 3],
        "random": rng.integers(0, 256, 2048, dtype=np.uint8).tobytes(),
        "empty": b"",
        "bitflip": bytes(flipped),
    }
    for k, (name, data) in enumerate(cases.items(), start=1):
        (folder / f"fuzz_{k}.tif").write_bytes(data)
    Image.fromarray(rng.integers(0, 60000, (64, 64), dtype=np.uint16)).save(folder / "fuzz_5.tif")
    Image.fromarray(rng.integers(0, 255, (40, 72, 3), dtype=np.uint8)).save(folder / "fuzz_6.tif")
    shutil.copy(source / f"{PATIENTS[0]}_2.tif", folder / "fuzz_7.tif")
    out = tmp_path / "out"
    code, err = _predict(capsys, "--weights", weights, "--input", folder, "--output", out)
    summary = json.loads((out / "summary.json").read_text())
    failed = {Path(f["file"]).name for f in summary["failures"]}
    assert {"fuzz_1.tif", "fuzz_2.tif", "fuzz_3.tif", "fuzz_5.tif"} <= failed and "fuzz_7.tif" not in failed
    assert code == 1 and "Traceback" not in err
    for name in failed:
        assert str(folder / name) in err
    for k in range(1, 8):
        mask_path = out / f"fuzz_{k}_mask.tif"
        assert mask_path.exists() == (f"fuzz_{k}.tif" not in failed)
        if mask_path.exists():
            mask = np.asarray(Image.open(mask_path))
            shape = np.asarray(Image.open(folder / f"fuzz_{k}.tif")).shape[:2]
            assert mask.shape == shape and set(np.unique(mask).tolist()) <= {0, 255}


def test_ensemble_of_two_checkpoints_is_the_mean_of_their_probabilities(trained, tmp_path, capsys):
    root, _, perfect = trained
    torch.manual_seed(1)
    other = tmp_path / "random.pth"
    torch.save({"model": instantiate(load_config(CONFIG, TINY).model).state_dict()}, other)
    probabilities = {}
    for name, weights in (("perfect", [perfect]), ("random", [other]), ("both", [perfect, other])):
        out = tmp_path / name
        code, err = _predict(capsys, "--weights", *weights, "--input", root, "--output", out, "--save-probabilities",
                             "--no-overlays", "--precision", "fp32")
        assert code == 0, err
        probabilities[name] = np.stack([np.asarray(Image.open(p)) for p in sorted(out.rglob("*_prob.tif"))])
    assert len(probabilities["both"]) == 22
    np.testing.assert_allclose(probabilities["both"], (probabilities["perfect"] + probabilities["random"]) / 2,
                               atol=1e-6)
    assert np.abs(probabilities["perfect"] - probabilities["random"]).max() > 0.1  # two different models
