"""Choosing the tumour threshold on the validation split: streamed per-threshold Dice equals the
LGG evaluator's, the choice rule, the test split never reaching the chooser, and a tiny training
run storing the choice (and the fitted temperature) in its checkpoint for --eval-only, predict and
export."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from torch import nn

from brainseg.data.io import read_lgg_mask
from brainseg.engine import launch as train_net
from brainseg.engine.defaults import with_train_defaults
from brainseg.evaluation import LGGEvaluator, ThresholdDiceCounts
from brainseg.evaluation import calibration_evaluation
from brainseg.inference.model import build_inference_model
from brainseg.modeling.postprocessing import TUMOUR_PROBABILITY, model_mask_threshold
from brainseg.utils.config import load_config
from brainseg.utils.errors import UserError
from lgg_tree import registered_lgg_splits, tiny_unext_overrides, write_lgg_tree

REPO = Path(__file__).resolve().parents[1]
PATIENTS = [f"TCGA_CS_{i:04d}_20000101" for i in range(6)]


def _random_patients(seed=0):
    rng = np.random.default_rng(seed)
    slices = []
    for patient in ("A", "B", "C"):
        for k in range(4):
            truth = rng.random((16, 16)) < 0.2 * (k % 2)  # every other slice tumour-free
            noise = rng.random((16, 16)).astype(np.float32)
            slices.append((patient, k, np.where(truth, 0.3 + 0.7 * noise, 0.6 * noise).astype(np.float32), truth))
    return slices


def test_streamed_scores_equal_the_lgg_evaluator_at_every_threshold():
    slices = _random_patients()
    counts = ThresholdDiceCounts()
    for patient, _, p, truth in slices:
        counts.update(patient, torch.from_numpy(p), truth)
    volume, pooled = counts.scores("dice_volume_mean"), counts.scores("dice_global")
    for j, threshold in enumerate(counts.thresholds):
        evaluator = LGGEvaluator("threshold_choice_test", distributed=False, threshold=threshold, compute_hd95=False)
        for patient, k, p, truth in slices:
            record = {"patient_id": patient, "slice_index": k, "sem_seg": torch.from_numpy(truth.astype(np.int64))}
            evaluator.process([record], [{TUMOUR_PROBABILITY: torch.from_numpy(p)}])
        lgg = evaluator.evaluate()["lgg"]
        assert volume[j] == pytest.approx(lgg["dice_volume_mean"], abs=1e-12), threshold
        assert pooled[j] == pytest.approx(lgg["dice_global"], abs=1e-12), threshold
    choice = counts.choose("dice_volume_mean")
    assert choice.score == pytest.approx(np.nanmax(volume), abs=0) and 0.3 <= choice.threshold <= 0.6


def test_choice_prefers_the_threshold_closest_to_one_half_among_ties():
    counts = ThresholdDiceCounts()
    truth = np.array([1, 1, 0, 0], bool)
    counts.update("A", np.array([0.32, 0.9, 0.1, 0.12], np.float32), truth)  # perfect for 0.15..0.30
    choice = counts.choose()
    assert choice.threshold == 0.3 and choice.score == 1.0
    assert choice.scores[choice.thresholds.index(0.15)] == 1.0 and choice.scores[choice.thresholds.index(0.35)] < 1
    assert ThresholdDiceCounts().choose() is None
    with pytest.raises(ValueError, match="strictly increasing"):
        ThresholdDiceCounts([0.5, 0.4])


@pytest.fixture(scope="module")
def tiny_splits(tmp_path_factory):
    """A 6-patient 32x32 tree registered as lgg_thr_{train,val,test}."""
    root = tmp_path_factory.mktemp("lgg")
    write_lgg_tree(root, patients=PATIENTS, num_slices=4, size=32, seed=3)
    with registered_lgg_splits(root, "lgg_thr"):
        yield {split: {r["patient_id"] for r in DatasetCatalog.get(f"lgg_thr_{split}")} for split in ("val", "test")}


class SplitAwareModel(nn.Module):
    """Probability 0.3 in the truth and 0.1 outside it on validation patients (any threshold in
    [0.1, 0.3) is perfect: 0.25 is chosen), 0.8 / 0.6 on test patients (perfect in [0.6, 0.8))."""

    def __init__(self, val_patients):
        super().__init__()
        self.val_patients = set(val_patients)
        self.mask_threshold = 0.5

    def forward(self, batched_inputs):
        outputs = []
        for x in batched_inputs:
            inside, outside = (0.3, 0.1) if x["patient_id"] in self.val_patients else (0.8, 0.6)
            truth = x["sem_seg"].bool()
            outputs.append({TUMOUR_PROBABILITY: torch.where(truth, inside, outside).float()})
        return outputs


def test_the_threshold_is_chosen_on_validation_and_used_for_test(tiny_splits, tmp_path, monkeypatch):
    cfg = load_config(str(REPO / "configs/lgg/unext.py"), [
        *tiny_unext_overrides("lgg_thr"), "dataloader.evaluator.coco=False", f"train.output_dir={tmp_path}",
        "train.calibration.enabled=True", "train.choose_threshold=True"])
    with_train_defaults(cfg)
    seen = []
    process = calibration_evaluation.CalibrationEvaluator.process

    def recording_process(self, inputs, outputs):
        seen.extend(x["patient_id"] for x in inputs)
        process(self, inputs, outputs)

    monkeypatch.setattr(calibration_evaluation.CalibrationEvaluator, "process", recording_process)
    model = SplitAwareModel(tiny_splits["val"])
    calibration = train_net.calibrate_on_validation(cfg, model, fit=True)["calibration"]
    assert set(seen) == tiny_splits["val"] and not set(seen) & tiny_splits["test"]  # test never reached it
    assert calibration["threshold"] == 0.25 and calibration["dice_volume_mean_val"] == 1.0
    assert model.mask_threshold == 0.25 and cfg.model.mask_threshold == 0.25
    assert 0 < calibration["ece_val"] < 1 and (tmp_path / "reliability_val.png").is_file()
    # the test split is evaluated with the validation threshold: all its pixels (> 0.25) are tumour,
    # where its own best threshold (0.6) would have scored 1
    lgg = train_net.evaluate(cfg, model, "test")["lgg"]
    records = DatasetCatalog.get("lgg_thr_test")
    truth_pixels = sum(int(np.count_nonzero(read_lgg_mask(r["sem_seg_file_name"]))) for r in records)
    all_pixels = sum(r["height"] * r["width"] for r in records)
    assert lgg["dice_global"] == pytest.approx(2 * truth_pixels / (all_pixels + truth_pixels), abs=1e-12)


def test_calibration_without_a_validation_loader_is_a_user_error(tiny_splits, tmp_path):
    cfg = load_config(str(REPO / "configs/lgg/unext.py"), [*tiny_unext_overrides("lgg_thr"),
                                                             "train.choose_threshold=True"])
    with_train_defaults(cfg)
    del cfg.dataloader["val"]
    with pytest.raises(UserError, match="never computed on the test split"):
        train_net.calibrate_on_validation(cfg, SplitAwareModel(()), fit=True)


def test_training_stores_threshold_and_temperature_for_eval_only_predict_and_export(tiny_splits, tmp_path):
    out = tmp_path / "run"
    # a config threshold off the candidate grid: whatever is chosen, it is not the config's
    overrides = [*tiny_unext_overrides("lgg_thr"), "model.mask_threshold=0.42", "train.eval_period=2",
                 "train.checkpointer.period=2", "train.overlays.enabled=False", "train.choose_threshold=True",
                 "train.calibration.enabled=True", "train.fit_temperature=True"]
    config = str(REPO / "configs/lgg/unext.py")
    train_net.main(train_net.parse_args(["--config-file", config, *overrides, "train.max_iter=2",
                                         f"train.output_dir={out}"]))
    results = json.loads((out / "results.json").read_text())
    chosen = results["calibration"]["threshold"]
    assert chosen in [round(0.05 * k, 2) for k in range(1, 20)] and 0 <= results["calibration"]["ece_val"] <= 1
    assert (out / "reliability_val.png").is_file()
    temperature = results["calibration"]["temperature"]
    assert temperature != 1.0 and "ece_val_before_temperature" in results["calibration"]
    stored = torch.load(out / "model_best.pth", weights_only=True)
    assert stored["mask_threshold"] == chosen and stored["temperature"] == temperature
    model, cfg = build_inference_model(config, str(out / "model_best.pth"), overrides)
    assert model_mask_threshold(model) == chosen and cfg.model.mask_threshold == chosen
    assert model.temperature == temperature
    # --eval-only restores it too: the same test metrics as after training (same machine, same weights)
    again = tmp_path / "again"
    train_net.main(train_net.parse_args(["--config-file", config, "--eval-only", *overrides,
                                         f"train.init_checkpoint={out / 'model_best.pth'}",
                                         "train.save_probabilities=True", f"train.output_dir={again}"]))
    assert json.loads((again / "probabilities" / "probabilities.json").read_text())["mask_threshold"] == chosen
    evaluated = json.loads((again / "results.json").read_text())
    assert evaluated["lgg"]["dice_global"] == pytest.approx(results["lgg"]["dice_global"], abs=1e-12)
    assert evaluated["calibration"]["ece_val"] == pytest.approx(results["calibration"]["ece_val"], abs=1e-12)
    assert "threshold" not in evaluated["calibration"]  # --eval-only does not fit again
    assert "temperature" not in evaluated["calibration"]
