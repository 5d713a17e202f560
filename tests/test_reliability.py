"""Reliability: exact resume after kill -9, atomic checkpoints, NaN guard, safe loading,
2-process CPU training/evaluation, and corrupted inputs."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from brainseg.data import LGGDataError, load_lgg_records, read_lgg_image, read_lgg_mask
from brainseg.engine import BrainSegCheckpointer, CheckpointError
from lgg_tree import tiny_unext_overrides, write_lgg_tree

REPO = Path(__file__).resolve().parents[1]
PATIENTS = [f"TCGA_CS_{i:04d}_20000101" for i in range(6)]
TINY = tiny_unext_overrides("lgg_demo") + ["train.overlays.enabled=False"]


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    write_lgg_tree(root / "lgg_demo", patients=PATIENTS, num_slices=6, size=64)
    return root


def _train_net(datasets_root, *overrides, flags=(), wait=True):
    env = {**os.environ, "BRAINSEG_DATASETS": str(datasets_root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", "configs/lgg/unext.py",
           *flags, *TINY, *overrides]
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    return proc


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_kill_9_then_resume_matches_an_uninterrupted_run(datasets_root, tmp_path):
    """Both runs are on this machine with the same thread count: resuming reproduces the weights
    exactly (a same-machine property; across CPUs the kernels differ in the last bits)."""
    common = ["train.max_iter=12", "train.eval_period=0", "train.checkpointer.period=2", "train.seed=7"]
    whole = _train_net(datasets_root, *common, f"train.output_dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-2000:]

    out = tmp_path / "killed"
    proc = _train_net(datasets_root, *common, f"train.output_dir={out}", wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        last = out / "last_checkpoint"
        if last.is_file() and last.read_text() not in ("", "model_0000001.pth"):
            break  # at least two checkpoints written: the run is mid-way
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = (out / "last_checkpoint").read_text()
    assert killed_at != "model_final.pth"
    _weights(out / killed_at)  # the named checkpoint is complete and loadable

    resumed = _train_net(datasets_root, *common, f"train.output_dir={out}", flags=["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _weights(tmp_path / "whole" / "model_final.pth"), _weights(out / "model_final.pth")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(datasets_root, tmp_path):
    # lr=1e30 makes the weights explode: the loss becomes NaN within a few steps.
    proc = _train_net(datasets_root, "train.max_iter=40", "train.eval_period=0", "train.checkpointer.period=1",
                      "optimizer.lr=1e30", f"train.output_dir={tmp_path}")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: loss became NaN or infinite at iteration ")
    assert "the last good checkpoint is kept" in last and "Traceback" not in proc.stderr
    failed_at = int(last.split("at iteration ")[1].split(":")[0])
    kept = (tmp_path / "last_checkpoint").read_text()
    state = torch.load(tmp_path / kept, weights_only=True)
    assert state["iteration"] < failed_at
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_two_process_cpu_training_and_evaluation_agree_with_one(datasets_root, tmp_path):
    """Evaluating one checkpoint in 1 and in 2 processes, on this machine, gives the same metrics."""
    two = _train_net(datasets_root, "train.max_iter=3", "train.eval_period=0",
                     f"train.output_dir={tmp_path / 'two'}", flags=["--num-gpus", "2"])
    assert two.returncode == 0, two.stderr[-3000:]
    log = (tmp_path / "two" / "log.txt").read_text()
    assert "All 2 ranks agree on the weights" in log
    weights = tmp_path / "two" / "model_final.pth"
    one_eval = _train_net(datasets_root, f"train.init_checkpoint={weights}",
                          f"train.output_dir={tmp_path / 'eval1'}", flags=["--eval-only"])
    two_eval = _train_net(datasets_root, f"train.init_checkpoint={weights}", f"train.output_dir={tmp_path / 'eval2'}",
                          flags=["--eval-only", "--num-gpus", "2"])
    assert one_eval.returncode == 0 and two_eval.returncode == 0, two_eval.stderr[-3000:]
    r1 = json.loads((tmp_path / "eval1" / "results.json").read_text())
    r2 = json.loads((tmp_path / "eval2" / "results.json").read_text())
    for task in r1:
        for metric, value in r1[task].items():
            if metric.startswith("seed_"):
                continue  # UNeXt-style figures average per-batch scores: batches differ across processes
            assert r2[task][metric] == pytest.approx(value, abs=1e-9, nan_ok=True), (task, metric)


def test_checkpoints_are_written_atomically_and_loaded_safely(tmp_path):
    model = torch.nn.Linear(3, 2)
    checkpointer = BrainSegCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001")
    good = (tmp_path / "model_0000001.pth").read_bytes()
    # a crash while writing the next one leaves only a temp file; last_checkpoint still names a good file
    (tmp_path / ".model_0000002.pth.tmp123").write_bytes(good[:100])
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    BrainSegCheckpointer(torch.nn.Linear(3, 2), str(tmp_path)).resume_or_load("", resume=True)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "last_checkpoint", "model_0000001.pth"]
    # a truncated file is reported by name
    (tmp_path / "broken.pth").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="cannot load checkpoint .*broken.pth"):
        BrainSegCheckpointer(model).load(str(tmp_path / "broken.pth"))
    # a pickle that would run code is refused (weights_only)
    torch.save({"model": model.state_dict(), "payload": _Exploit()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="evil.pth"):
        BrainSegCheckpointer(model).load(str(tmp_path / "evil.pth"))
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        (tmp_path / "old.pkl").write_bytes(b"\x80\x04N.")
        BrainSegCheckpointer(model).load(str(tmp_path / "old.pkl"))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


# ---------------------------------------------------------------- fuzzed TIFFs
def _corruptions(rng, good: bytes):
    yield "truncated", good[: len(good) // 2]
    yield "random bytes", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    yield "empty", b""
    flipped = bytearray(good)
    for i in rng.integers(8, len(good), 64):
        flipped[i] ^= 0xFF
    yield "bit flips", bytes(flipped)


@pytest.mark.parametrize("which", ["image", "mask"])
def test_fuzzed_tiffs_end_in_a_clear_error_never_a_wrong_mask(tmp_path, which):
    masks = write_lgg_tree(tmp_path, patients=PATIENTS[:3], num_slices=2, size=32)
    records = load_lgg_records(tmp_path)
    target = records[1]["file_name"] if which == "image" else records[1]["sem_seg_file_name"]
    good = Path(target).read_bytes()
    rng = np.random.default_rng(0)
    for name, data in _corruptions(rng, good):
        Path(target).write_bytes(data)
        try:
            if which == "image":
                image = read_lgg_image(target)
                assert image.shape == (32, 32, 3) and image.dtype == np.uint8, name
            else:
                mask = read_lgg_mask(target, expected_shape=(32, 32))
                # a flipped bit in pixel data may still decode to a valid binary mask; it must be binary
                assert set(np.unique(mask).tolist()) <= {0, 1}, name
        except LGGDataError as e:
            assert target in str(e) and "\n" not in str(e), name
    # wrong dtype and wrong size
    if which == "image":
        Image.fromarray(np.zeros((32, 32), np.uint16)).save(target)
        with pytest.raises(LGGDataError, match=f"image {target}"):
            read_lgg_image(target)
    else:
        Image.fromarray(np.zeros((20, 32), np.uint8)).save(target)
        with pytest.raises(LGGDataError, match=f"mask {target} is 20x32"):
            read_lgg_mask(target, expected_shape=(32, 32))
    Path(target).write_bytes(good)
    np.testing.assert_array_equal(read_lgg_mask(records[1]["sem_seg_file_name"]), masks[records[1]["file_name"]])
