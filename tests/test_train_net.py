"""tools/train_net.py end to end on a tiny generated LGG tree: training with evaluation,
--resume, --eval-only, and the command-line errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from detectron2.engine import launch
from detectron2.utils import comm

from brainseg.engine import launch as train_net
from lgg_tree import registered_lgg_splits, tiny_unext_overrides, write_lgg_tree

REPO = Path(__file__).resolve().parents[1]
PATIENTS = [f"TCGA_CS_{i:04d}_20000101" for i in range(6)]
TINY = tiny_unext_overrides("lgg_tiny") + [
    "train.eval_period=2", "train.checkpointer.period=2", "train.overlays.max_patients=1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Register a 6-patient 64x64 tree and train 4 iterations into an output dir."""
    root = tmp_path_factory.mktemp("lgg")
    write_lgg_tree(root, patients=PATIENTS, num_slices=6, size=64)
    with registered_lgg_splits(root, "lgg_tiny"):
        out = tmp_path_factory.mktemp("run")
        args = train_net.parse_args(["--config-file", str(REPO / "configs/lgg/unext.py"),
                                     *TINY, "train.max_iter=4", f"train.output_dir={out}"])
        train_net.main(args)
        yield train_net, out


def _iterations(out: Path):
    lines = (out / "metrics.json").read_text().splitlines()
    return [json.loads(line)["iteration"] for line in lines if "total_loss" in line]


def test_training_writes_the_run_files_and_results(tiny_run):
    _, out = tiny_run
    for name in ("config.yaml", "log.txt", "metrics.json", "results.json", "model_final.pth",
                 "model_best.pth", "last_checkpoint"):
        assert (out / name).is_file(), name
    assert any(p.name.startswith("events.out.tfevents") for p in out.iterdir())
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"lgg", "segm", "bbox"}
    assert 0.0 <= results["lgg"]["dice_volume_mean"] <= 1.0 and "AP50" in results["segm"]
    assert _iterations(out) == [0, 1, 2, 3]
    assert "lgg/dice_volume_mean" in (out / "metrics.json").read_text()
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 3
    overlays = list((out / "overlays").glob("*.png"))
    assert len(overlays) == 1 and overlays[0].stat().st_size > 0


def test_resume_continues_from_the_saved_iteration(tiny_run):
    train_net, out = tiny_run
    args = train_net.parse_args(["--config-file", str(REPO / "configs/lgg/unext.py"), "--resume",
                                 *TINY, "train.max_iter=6", f"train.output_dir={out}"])
    train_net.main(args)
    assert _iterations(out) == [0, 1, 2, 3, 4, 5]
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 5


def test_eval_only_reproduces_the_stored_metrics(tiny_run, tmp_path):
    """Same machine, same checkpoint: --eval-only gives the metrics stored after training."""
    train_net, out = tiny_run
    stored = json.loads((out / "results.json").read_text())
    args = train_net.parse_args(["--config-file", str(REPO / "configs/lgg/unext.py"), "--eval-only",
                                 *TINY, f"train.init_checkpoint={out / 'model_best.pth'}",
                                 f"train.output_dir={tmp_path}"])
    train_net.main(args)
    again = json.loads((tmp_path / "results.json").read_text())
    for task in ("lgg", "segm"):
        for metric, value in stored[task].items():
            assert again[task][metric] == pytest.approx(value, abs=1e-9, nan_ok=True), (task, metric)


def _cli(*args, env=None):
    return subprocess.run([sys.executable, str(REPO / "tools" / "train_net.py"), *args], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, **(env or {})})


def test_cli_reports_a_bad_key_in_one_line(tmp_path):
    proc = _cli("--config-file", "configs/lgg/unext.py", "train.max_itr=3", f"train.output_dir={tmp_path}")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: unknown config key 'train.max_itr' (did you mean 'train.max_iter'?)")
    assert "Traceback" not in proc.stderr


def test_cli_reports_an_unknown_dataset_name(tmp_path):
    proc = _cli("--config-file", "configs/lgg/unext.py", "--eval-only", "dataloader.test.dataset.names=lgg_nope",
                f"train.output_dir={tmp_path}")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Dataset 'lgg_nope' is not registered!") and "Traceback" not in proc.stderr


def _sync_buffers_in_two_processes(result_prefix):
    torch.set_num_threads(1)
    try:
        rank = comm.get_rank()
        norm = torch.nn.BatchNorm1d(3)
        norm.running_mean.fill_(rank + 1.0)  # each rank's statistics followed its own batches
        norm.num_batches_tracked.fill_(10 * (rank + 1))
        train_net.sync_buffers_from_main(norm)
        torch.save(norm.state_dict(), f"{result_prefix}{rank}.pt")
        comm.synchronize()
    finally:
        dist.destroy_process_group()


def test_validation_in_multi_process_training_uses_the_main_rank_statistics(tmp_path):
    prefix = str(tmp_path / "rank")
    launch(_sync_buffers_in_two_processes, 2, dist_url="auto", args=(prefix,))
    for rank in (0, 1):
        state = torch.load(f"{prefix}{rank}.pt", weights_only=True)
        assert state["running_mean"].tolist() == [1.0, 1.0, 1.0]
        assert state["num_batches_tracked"].item() == 10
