"""Safe data-loader worker processes: OpenCV off its thread pool where processes fork, and a
watchdog that says so when a loader stops producing batches.

OpenCV's pthreads pool does not survive ``fork()``: a parent that ran OpenCV calls on its pool
(e.g. ``cv2.connectedComponents`` while loading records) and then forks DataLoader workers can
leave a pool mutex locked in the children; the first parallel OpenCV call there (``warpAffine``
of the rotation augmentation) then waits forever, without an error. Measured on a 2-core AMD
EPYC: the unguarded repro (tests/test_workers.py) froze within 13 forks; with one OpenCV thread
set before forking, 150 forks ran through, and the slice-sized OpenCV calls brainseg makes
(256x256 warps, components) run no slower, since the worker processes are the parallelism.
"""
import logging
import multiprocessing
import os
import sys
import threading
import time
from typing import Any, Iterable, Iterator, Optional

import cv2

__all__ = ["make_opencv_fork_safe", "StallWatchdog", "WatchedLoader", "end_finished_worker"]

logger = logging.getLogger(__name__)


def make_opencv_fork_safe() -> None:
    """Make OpenCV run its parallel loops in the calling thread, process-wide.

    Call it in a process before it forks workers that use OpenCV (children inherit the
    setting). It takes effect even after OpenCV's pool was started."""
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


class StallWatchdog:
    """Logs a warning when a wait lasts longer than ``warn_after`` seconds, then again every
    ``warn_after`` seconds while it goes on. Use it as a context manager around each wait::

        watchdog = StallWatchdog("dataloader.train", warn_after=300)
        with watchdog:
            batch = next(iterator)

    The checks run in one daemon thread, started at the first wait; waiting costs nothing else.
    """

    def __init__(self, name: str, *, warn_after: float, detail: str = "", log: Optional[logging.Logger] = None):
        """
        Args:
            name: what is waited for, named in the warning (e.g. "dataloader.train").
            warn_after: seconds before the first warning (> 0).
            detail: appended to the warning (e.g. the number of workers).
            log: the logger to warn on (default: this module's).
        """
        if not warn_after > 0:
            raise ValueError(f"the stall warning time must be a positive number of seconds, got {warn_after!r}")
        self.name = name
        self.warn_after = float(warn_after)
        self.detail = detail
        self.log = log or logger
        self.warnings = 0
        self._condition = threading.Condition()
        self._started_at: Optional[float] = None
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "StallWatchdog":
        with self._condition:
            self._started_at = time.monotonic()
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name=f"stall-watchdog[{self.name}]", daemon=True)
                self._thread.start()
            self._condition.notify()
        return self

    def __exit__(self, *exc_info) -> None:
        with self._condition:
            self._started_at = None
            self._condition.notify()

    def _watch(self) -> None:
        with self._condition:
            while True:
                if self._started_at is None:
                    self._condition.wait()
                    continue
                started, warned = self._started_at, 0
                while self._started_at is started:
                    elapsed = time.monotonic() - started
                    due = (warned + 1) * self.warn_after
                    if elapsed >= due:
                        warned += 1
                        self.warnings += 1
                        self.log.warning(
                            f"{self.name} has produced nothing for {elapsed:.0f} s{self.detail}; still waiting "
                            "(a stalled or deadlocked worker, a slow disk or an exhausted source?)")
                        continue
                    self._condition.wait(due - elapsed)


class WatchedLoader:
    """An iterable that passes through ``loader``'s items, with a :class:`StallWatchdog` around
    each ``next``. ``len()`` is the loader's."""

    def __init__(self, loader: Iterable, name: str, *, warn_after: float):
        """
        Args:
            loader: any iterable (a DataLoader, detectron2's AspectRatioGroupedDataset ...).
            name: the name in the warning, e.g. "dataloader.train".
            warn_after: seconds without an item before the first warning.
        """
        self.loader = loader
        workers = getattr(loader, "num_workers", None)
        detail = f" ({workers} worker processes)" if workers is not None else ""
        self.watchdog = StallWatchdog(name, warn_after=warn_after, detail=detail)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        iterator = iter(self.loader)
        while True:
            with self.watchdog:
                try:
                    item = next(iterator)
                except StopIteration:
                    return
            yield item


def end_finished_worker() -> None:
    """End a worker process of a multi-process run that finished its work (results, checkpoints
    and logs written, process group torn down) without the interpreter's finalization.

    On 2 CPU cores a finished gloo rank sometimes died at exit with "terminate called without an
    active exception" (SIGABRT, so the run failed) after writing everything: seen in about 1 in 10
    runs of the 2-process tests, in train_net runs and in a bare LGGEvaluator run alike, not
    reproduced on demand, cause not pinned down. That message is what C++ prints when teardown
    meets a thread still running or not joined, which happens during finalization; a finished
    worker has nothing left to finalize but its logs and any data-loader worker processes still
    alive (stopped here, as finalization would).
    """
    for child in multiprocessing.active_children():
        child.terminate()
        child.join()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
