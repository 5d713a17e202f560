"""tools/compare.py on tiny generated data: fold datasets, the plan of runs, a 2-model x 2-fold
study with an interruption and its resumption, a sweep with K-fold ensembles, and the errors."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from brainseg.data import load_lgg_records, load_volume_records, register_lgg_dataset
from brainseg.data.catalog import register_patient_dataset
from brainseg.data.folds import load_folds, patient_folds, save_folds
from brainseg.data.volumes import write_case
from brainseg.engine import compare
from brainseg.engine.compare_plan import (
    ModelSpec,
    Setting,
    model_name,
    parse_sweep,
    plan_runs,
    split_model_overrides,
    study_folds,
)
from brainseg.utils.errors import ConfigError, LGGDataError
from lgg_tree import write_lgg_tree

REPO = Path(__file__).resolve().parents[1]
UNET, UNEXT = str(REPO / "configs/lgg/unet.py"), str(REPO / "configs/lgg/unext.py")
PATIENTS = [f"TCGA_CS_{i:04d}_20000101" for i in range(6)]
TINY = ["dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0", "dataloader.val.num_workers=0",
        "dataloader.test.num_workers=0", "train.max_iter=2", "train.eval_period=2", "train.checkpointer.period=2",
        "train.log_period=1", "train.overlays.enabled=False",
        "unet:model.net.base_channels=4", "unet:model.net.depth=1",
        "unext:model.net.conv_channels=[4,8,16]", "unext:model.net.token_channels=[16,24]"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("lgg")
    write_lgg_tree(root, patients=PATIENTS, num_slices=4, size=32)
    return root


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def study(tree, tmp_path_factory):
    """UNet and UNeXt on 2 folds, interrupted after the second run (its checkpoint written, its
    results.json not), then the same command again; the real train_run does the work."""
    out = tmp_path_factory.mktemp("study")
    argv = ["--config-file", UNET, UNEXT, "--data", str(tree), "--output", str(out), "--folds", "2", *TINY]
    real, calls = compare.train_run, []

    def interrupted_after_two(run, *, resume):
        real(run, resume=resume)
        calls.append(run.output_dir)
        if len(calls) == 2:
            (run.output_dir / "results.json").unlink()  # killed before the test evaluation finished
            raise Interrupted

    def recorded(run, *, resume):
        calls.append((run.output_dir, resume))
        real(run, resume=resume)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compare, "train_run", interrupted_after_two)
        with pytest.raises(Interrupted):
            compare.compare_main(argv)
        first = calls[0]
        stamp = (first / "model_final.pth").stat().st_mtime_ns
        calls.clear()
        patch.setattr(compare, "train_run", recorded)
        assert compare.compare_main(argv) == 0
    return {"out": out, "first": first, "stamp": stamp, "calls": calls}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_model_names_and_overrides_for_one_model():
    assert [model_name(f) for f in ("configs/lgg/unet_demo.py", "resunet.py", "unext_demo.py",
                                    "projects/MaskDINO/configs/maskdino_small_lgg_demo.py", "mask_rcnn.py")] == [
        "UNet", "ResUNet", "UNeXt", "Mask DINO", "mask_rcnn"]
    models = [ModelSpec("UNet", "a/unet.py"), ModelSpec("Mask DINO", "b/maskdino_small.py")]
    common, models = split_model_overrides(
        ["train.max_iter=5", "Mask DINO:train.max_iter=2", "unet:optimizer.lr=0.1", "train.output_dir=a:b"], models)
    assert common == ["train.max_iter=5", "train.output_dir=a:b"]
    assert [m.overrides for m in models] == [("optimizer.lr=0.1",), ("train.max_iter=2",)]
    with pytest.raises(ConfigError, match="'resunet', which is no model of the study"):
        split_model_overrides(["resunet:train.max_iter=2"], models)


def test_sweep_grid_and_syntax():
    settings, plain = parse_sweep(["optimizer.lr=1e-4,1e-2", "model.net.conv_channels=[4,8],[8,16]", "train.seed=3"])
    assert plain == ["train.seed=3"]
    assert [s.overrides for s in settings] == [
        ("optimizer.lr=1e-4", "model.net.conv_channels=[4,8]"), ("optimizer.lr=1e-4", "model.net.conv_channels=[8,16]"),
        ("optimizer.lr=1e-2", "model.net.conv_channels=[4,8]"), ("optimizer.lr=1e-2", "model.net.conv_channels=[8,16]")]
    assert settings[0].name == "optimizer.lr=1e-4 model.net.conv_channels=[4,8]"
    assert settings[0].slug == "optimizer.lr-1e-4_model.net.conv_channels-4-8"
    assert parse_sweep([]) == ([Setting()], [])
    for bad in ("optimizer.lr", "optimizer.lr=1e-4,", "=1,2"):
        with pytest.raises(ConfigError, match="expected key=value1,value2"):
            parse_sweep([bad])


def test_plan_is_models_x_settings_x_folds_x_seeds(tmp_path):
    models = [ModelSpec("UNet", UNET), ModelSpec("UNeXt", UNEXT, ("model.net.token_channels=[16,24]",))]
    settings, _ = parse_sweep(["optimizer.lr=1e-4,1e-3"])
    datasets = [{p: f"d_f{k}_{p}" for p in ("train", "val", "test")} for k in range(3)]
    runs = plan_runs(models, settings, datasets, [0, 7], tmp_path, ["train.max_iter=3"])
    assert len(runs) == 2 * 2 * 3 * 2
    assert len({r.output_dir for r in runs}) == len(runs)
    assert {(r.model.name, r.setting.name, r.fold, r.seed) for r in runs} == {
        (m.name, s.name, k, seed) for m in models for s in settings for k in range(3) for seed in (0, 7)}
    assert [r.fold for r in runs[:8]] == [0] * 8  # every model on fold 0 first
    run = next(r for r in runs if r.model.name == "UNeXt" and r.setting == settings[1] and r.fold == 2 and r.seed == 7)
    assert run.entry == "UNeXt [optimizer.lr=1e-3]" and run.label == "UNeXt [optimizer.lr=1e-3] fold 2 seed 7"
    assert run.output_dir == tmp_path / "runs" / "UNeXt" / "optimizer.lr-1e-3" / "fold2_seed7"
    assert run.overrides == ("train.max_iter=3", "model.net.token_channels=[16,24]", "optimizer.lr=1e-3",
                             "dataloader.train.dataset.names=d_f2_train", "dataloader.val.dataset.names=d_f2_val",
                             "dataloader.test.dataset.names=d_f2_test", "train.seed=7",
                             f"train.output_dir='{run.output_dir}'")
    with pytest.raises(ConfigError, match="unknown config key 'train.max_itr'"):
        plan_runs(models, settings, datasets, [0], tmp_path, ["train.max_itr=3"])


def test_folds_are_written_once_and_reused(tmp_path):
    path = tmp_path / "folds.json"
    folds = study_folds(path, PATIENTS, 3)
    assert load_folds(path) == folds and sorted(p for f in folds for p in f.test) == PATIENTS
    other = patient_folds(PATIENTS, num_folds=3, seed=5)
    save_folds(path, other)  # a re-run reads the saved folds, it does not split again
    assert study_folds(path, list(reversed(PATIENTS)), 3) == other != folds
    with pytest.raises(ConfigError, match="holds 3 folds, not --folds 2"):
        study_folds(path, PATIENTS, 2)
    with pytest.raises(LGGDataError, match="does not match the study's patients"):
        study_folds(path, PATIENTS[:5], 3)


def test_patient_datasets_of_a_tiff_tree_and_a_nifti_root(tree, tmp_path):
    chosen = PATIENTS[1:3]
    records = load_lgg_records(tree, patients=chosen, num_threads=1)
    assert sorted({r["patient_id"] for r in records}) == chosen and len(records) == 8
    with pytest.raises(LGGDataError, match="1 patient\\(s\\) not in the dataset .*: TCGA_XX"):
        load_lgg_records(tree, patients=["TCGA_XX"])
    with pytest.raises(ValueError, match="not both"):
        load_lgg_records(tree, "test", patients=chosen)

    nifti = tmp_path / "nifti"
    rng = np.random.default_rng(0)
    for case in ("case_a", "case_b", "case_c"):
        truth = np.zeros((3, 16, 16), np.uint8)
        truth[1, 4:8, 4:8] = 1
        write_case(nifti / case, rng.integers(0, 100, (3, 16, 16, 3)).astype(np.float32), truth, np.eye(4))
    assert {r["patient_id"] for r in load_volume_records(nifti, patients=["case_c"])} == {"case_c"}
    for name, root, patients in (("cmp_test_tiff", tree, chosen), ("cmp_test_nifti", nifti, ["case_a", "case_b"])):
        json_file = tmp_path / f"{name}.json"
        register_patient_dataset(name, root, patients, json_file=json_file)
        try:
            meta = MetadataCatalog.get(name)
            assert (meta.evaluator_type, meta.thing_classes, meta.patients) == ("lgg", ["tumor"], tuple(patients))
            assert meta.json_file == str(json_file) and not hasattr(meta, "split")
            coco = json.loads(json_file.read_text())
            assert coco["info"]["patients"] == patients
            assert len(coco["images"]) == len(DatasetCatalog.get(name)) and coco["annotations"]
        finally:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_study_outputs_one_row_per_model_and_every_patient_once(study):
    out = study["out"]
    table = read_csv(out / "comparison.csv")
    assert [row["model"] for row in table] == ["UNet", "UNeXt"]
    for row in table:
        assert 0.0 <= float(row["dice_mean"]) <= 1.0 and row["runs"] == "2"
        assert int(row["params"]) > 0 and float(row["gflops_per_slice"]) > 0 and float(row["slices_per_s"]) > 0
        assert float(row["train_minutes"]) > 0 and float(row["segm_ap50"]) >= 0
    folds = load_folds(out / "folds.json", patients=PATIENTS)
    tested_by = {p: f.index for f in folds for p in f.test}
    rows = read_csv(out / "per_patient.csv")
    for name in ("UNet", "UNeXt"):
        mine = [r for r in rows if r["model"] == name]
        assert sorted(r["patient"] for r in mine) == PATIENTS
        assert all(int(r["fold"]) == tested_by[r["patient"]] for r in mine)
        assert {"dice", "hd95", "sensitivity", "precision", "lesion_f1", "lesion_dice"} <= set(mine[0])
    page = (out / "report.html").read_text()
    assert '<table id="models">' in page and '<table id="pairwise">' in page and "data:image/png;base64," in page
    for name in ("comparison.md", "slices.png", "dice_boxplot.png", "training_curves.png", "log.txt"):
        assert (out / name).is_file(), name
    log = (out / "log.txt").read_text()
    assert "run 1/4: UNet fold 0 seed 0: finished earlier, kept" in log and "run 4/4: UNeXt fold 1 seed 0 ... done in" in log


def test_resumed_study_trains_only_what_is_missing(study):
    out, calls = study["out"], study["calls"]
    runs = out / "runs"
    assert calls == [(runs / "UNeXt" / "default" / "fold0_seed0", True),
                     (runs / "UNet" / "default" / "fold1_seed0", False),
                     (runs / "UNeXt" / "default" / "fold1_seed0", False)]
    assert study["first"] == runs / "UNet" / "default" / "fold0_seed0"
    assert (study["first"] / "model_final.pth").stat().st_mtime_ns == study["stamp"]
    info = json.loads((study["first"] / "compare_run.json").read_text())
    assert info["train_seconds"] > 0 and set(info["measurements"]) == {"params", "gflops_per_slice", "slices_per_s"}
    # the run log of one run holds that run only
    assert "fold1" not in (runs / "UNet" / "default" / "fold0_seed0" / "log.txt").read_text()


def test_sweep_has_one_section_per_setting_and_ensembles(tree, tmp_path):
    external = tmp_path / "external"
    write_lgg_tree(external, patients=["TCGA_HT_0000_20000101", "TCGA_HT_0001_20000101"], num_slices=4, size=32,
                   seed=3)
    register_lgg_dataset("cmp_test_external", external, "test", ratios=(0, 0, 1))
    try:
        compare.compare_main(["--config-file", UNET, "--data", str(tree), "--output", str(tmp_path / "out"),
                              "--folds", "2", "--test-dataset", "cmp_test_external",
                              "--sweep", "optimizer.lr=1e-3,1e-2", "--", *TINY[:-2]])
    finally:
        for catalog in (DatasetCatalog, MetadataCatalog):
            catalog.remove("cmp_test_external")
    table = read_csv(tmp_path / "out" / "comparison.csv")
    assert [(row["model"], row["setting"]) for row in table] == [
        ("UNet [optimizer.lr=1e-3]", "optimizer.lr=1e-3"), ("UNet [optimizer.lr=1e-2]", "optimizer.lr=1e-2"),
        ("UNet [optimizer.lr=1e-3] (2-fold ensemble)", "optimizer.lr=1e-3"),
        ("UNet [optimizer.lr=1e-2] (2-fold ensemble)", "optimizer.lr=1e-2")]
    ensemble = read_csv(tmp_path / "out" / "ensembles" / "UNet-optimizer.lr-1e-2" / "lgg_per_patient.csv")
    assert [r["patient_id"] for r in ensemble] == ["TCGA_HT_0000_20000101", "TCGA_HT_0001_20000101"]
    rows = read_csv(tmp_path / "out" / "per_patient.csv")
    assert sum(r["fold"] == "ensemble" for r in rows) == 4 and len(rows) == 2 * 6 + 4


@pytest.mark.parametrize("change, message", [
    (["--config-file", "configs/lgg/nope.py"], "config file not found: configs/lgg/nope.py"),
    (["--config-file", UNET, UNET], "two models share the name 'UNet' (run folder 'UNet'): give each its own"),
    (["--folds", "7"], "num_folds=7 is more than the 6 patients"),
    (["--sweep", "optimizer.lr"], "--sweep 'optimizer.lr': expected key=value1,value2,..."),
    (["--test-dataset", "lgg_nope"], "--test-dataset lgg_nope is not a registered dataset"),
    (["--seeds", "one"], "--seeds must be integers, got one"),
])
def test_bad_input_is_a_user_error(tree, tmp_path, change, message):
    argv = ["--config-file", UNET, "--data", str(tree), "--output", str(tmp_path / "out"), "--folds", "2"]
    with pytest.raises(ConfigError) as error:
        compare.compare_main(argv + change)
    assert message in str(error.value)
    assert not (tmp_path / "out" / "runs").exists()


def test_cli_reports_a_data_root_that_is_no_dataset_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "compare.py"), "--config-file", UNET,
                           "--data", str(tmp_path / "missing"), "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: LGG root {tmp_path / 'missing'} does not exist or is not a folder")
