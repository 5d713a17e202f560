"""tools/demo_summary.py (brainseg.visualization.seed_summary): recording a seed range and putting
a run next to it, with the training precision checked."""
import json

import pytest

from brainseg.utils.cli import run_cli
from brainseg.visualization import seed_summary


def make_run(root, name, *, seed, dice, precision):
    run = root / name
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"lgg": {"dice_volume_mean": dice, "hd95": 20.0 + seed},
                                                  "segm": {"AP50": 60.0 + seed}}))
    (run / "config.yaml").write_text(f"train:\n  seed: {seed}\n  precision: auto\n")
    (run / "log.txt").write_text(
        "[12/02 01:02:41] brainseg.engine.trainer INFO: Starting training from iteration 0\n"
        f"[12/02 01:02:41] brainseg.engine.trainer INFO: precision: {precision} (the reason)\n")
    return run


def test_record_then_compare_flags_another_precision(tmp_path, capsys):
    runs = [make_run(tmp_path, f"s{seed}", seed=seed, dice=dice, precision="fp32")
            for seed, dice in ((0, 0.70), (1, 0.80), (2, 0.75))]
    reference = tmp_path / "seeds.json"
    assert run_cli(seed_summary.main, [*map(str, runs), "--record", str(reference), "--command", "make it"]) == 0
    recorded = json.loads(reference.read_text())
    assert recorded["precision"] == "fp32" and recorded["command"] == "make it"
    assert recorded["seeds"]["1"] == {"lgg/dice_volume_mean": 0.80, "lgg/hd95": 21.0, "segm/AP50": 61.0}
    capsys.readouterr()

    same = make_run(tmp_path, "demo_fp32", seed=0, dice=0.72, precision="fp32")
    assert run_cli(seed_summary.main, [str(same), "--reference", str(reference)]) == 0
    out = capsys.readouterr().out
    # mean 0.750, SD 0.050 (statistics.stdev), range 0.700 - 0.800
    assert "this run 0.720   recorded 0.750 +- 0.050 (0.700 - 0.800)" in out
    assert "fp32): mean +- SD" in out and "NOTE" not in out

    other = make_run(tmp_path, "demo_bf16", seed=0, dice=0.72, precision="bf16")
    assert run_cli(seed_summary.main, [str(other), "--reference", str(reference)]) == 0
    assert "NOTE: this run trained in bf16, the recorded seeds in fp32" in capsys.readouterr().out


def test_record_refuses_mixed_precisions(tmp_path, capsys):
    runs = [make_run(tmp_path, "a", seed=0, dice=0.7, precision="fp32"),
            make_run(tmp_path, "b", seed=1, dice=0.8, precision="bf16")]
    assert run_cli(seed_summary.main, [*map(str, runs), "--record", str(tmp_path / "x.json")]) != 0
    assert "different precisions (bf16, fp32)" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_precision_unknown_without_a_log(tmp_path):
    run = make_run(tmp_path, "r", seed=0, dice=0.7, precision="fp32")
    (run / "log.txt").unlink()
    assert seed_summary.run_precision(str(run)) is None
    reference = {"cpu": "x", "cpu_capability": "AVX2", "threads": 2, "precision": "fp32",
                 "seeds": {"0": {"lgg/dice_volume_mean": 0.7}, "1": {"lgg/dice_volume_mean": 0.8}}}
    assert "NOTE" not in seed_summary.describe(reference, {"lgg/dice_volume_mean": 0.7}, None)
