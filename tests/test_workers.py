"""Data-loader workers: no OpenCV deadlock after the parent used OpenCV's thread pool, and a
warning naming a loader that stops producing batches."""
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brainseg.utils.workers import StallWatchdog, WatchedLoader
from lgg_tree import write_lgg_tree

FORK_SCRIPT = Path(__file__).parent / "scripts" / "fork_after_opencv.py"


def _fork_after_opencv(root: Path, rounds: int, timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, str(FORK_SCRIPT), str(root), str(rounds)], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{rounds} rounds of forked loader workers did not finish in {timeout} s: deadlocked")


def test_two_worker_loader_after_threaded_opencv_never_deadlocks(tmp_path):
    """The parent runs OpenCV on its thread pool (from two threads, as record loading does)
    right before a brainseg loader forks 2 workers that rotate every slice, 100 times. Without
    the fix the workers froze inside warpAffine after 3 to ~40 rounds (5 runs, 2-core AMD EPYC);
    the 100 rounds take about 30 s, the timeout is 10 times that."""
    write_lgg_tree(tmp_path, num_slices=4, size=256)
    proc = _fork_after_opencv(tmp_path, 100, timeout=300)
    assert proc.returncode == 0, proc.stdout[-500:] + proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "100 rounds, 2 workers each: no deadlock"


class _SlowLoader:
    """Yields ``items``, sleeping ``delays[i]`` seconds before item i."""

    num_workers = 2

    def __init__(self, items, delays):
        self.items, self.delays = items, delays

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        for item, delay in zip(self.items, self.delays):
            time.sleep(delay)
            yield item


def test_a_stalled_loader_is_named_in_a_warning(caplog):
    loader = WatchedLoader(_SlowLoader([1, 2, 3], [0.0, 0.75, 0.0]), "dataloader.train", warn_after=0.2)
    with caplog.at_level(logging.WARNING, logger="brainseg.utils.workers"):
        assert list(loader) == [1, 2, 3] and len(loader) == 3
    warnings = [r.getMessage() for r in caplog.records]
    # one wait of 0.75 s: warnings at 0.2, 0.4 and 0.6 s, none for the quick items
    assert 2 <= len(warnings) <= 3, warnings
    assert all(w.startswith("dataloader.train has produced nothing for ") for w in warnings)
    assert "(2 worker processes); still waiting" in warnings[0]


def test_a_steady_loader_gets_no_warning(caplog):
    loader = WatchedLoader(_SlowLoader(list(range(20)), [0.01] * 20), "dataloader.val", warn_after=0.5)
    with caplog.at_level(logging.WARNING, logger="brainseg.utils.workers"):
        assert list(loader) == list(range(20))
    assert loader.watchdog.warnings == 0 and not caplog.records


def test_stall_time_must_be_positive():
    with pytest.raises(ValueError, match="stall warning time must be a positive number of seconds, got 0"):
        StallWatchdog("dataloader.train", warn_after=0)
