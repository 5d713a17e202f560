"""Benchmark of data loading: the cost of the two cures for the OpenCV-after-fork deadlock
(see :mod:`brainseg.utils.workers`), on a dataset of a config.

Usage::

    python tools/benchmark.py loader --config-file configs/lgg/unext_demo.py [--split val] [--repeats 5] [key=value ...]

Times, with the split's records and the training mapper (rotation augmentation):

* ``fork, OpenCV 1 thread`` (what brainseg does): a 2-worker loader forked from this process;
* ``forkserver, OpenCV default threads``: the same loader with workers started by a fork server
  (a fresh interpreter that imports torch, detectron2 and brainseg, and receives the pickled
  records), which does not inherit OpenCV's pool;
* in-process mapping (no workers) with OpenCV at 1 thread and at its default thread count,
  i.e. what the main process loses by running OpenCV single-threaded.

Each loader pass maps every record once; reported: median seconds to the first batch and for
the whole pass over ``--repeats`` passes.
"""
import argparse
import statistics
import time
from typing import Callable, List, Optional, Sequence

import cv2
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetFromList, MapDataset
from detectron2.data.build import trivial_batch_collator

from .mapper import LGGDatasetMapper, build_lgg_augmentations

__all__ = ["main", "time_passes"]


def time_passes(make_iterable: Callable[[], object], repeats: int):
    """Median (seconds to first batch, seconds for the whole pass) over ``repeats`` passes."""
    firsts: List[float] = []
    totals: List[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        iterator = iter(make_iterable())
        next(iterator)
        firsts.append(time.perf_counter() - start)
        for _ in iterator:
            pass
        totals.append(time.perf_counter() - start)
    return statistics.median(firsts), statistics.median(totals)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/benchmark.py loader``: prints the table; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides, e.g. dataloader.val.dataset.names=brats_val")
    args = parser.parse_args(argv)
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    records = instantiate(cfg.dataloader[args.split].dataset)
    mapper = LGGDatasetMapper(is_train=True, augmentations=build_lgg_augmentations())
    dataset = MapDataset(DatasetFromList(records, copy=False), mapper)
    default_threads = cv2.getNumThreads()

    def loader(context: str):
        return lambda: torch.utils.data.DataLoader(dataset, batch_size=args.batch, num_workers=2,
                                                   collate_fn=trivial_batch_collator, multiprocessing_context=context)

    def in_process():
        return (dataset[i] for i in range(len(dataset)))

    print(f"{len(records)} records of {args.split}, batch {args.batch}, OpenCV default threads {default_threads}, "
          f"{args.repeats} passes each (median)")
    rows = []
    cv2.setNumThreads(default_threads)
    rows.append(("forkserver, OpenCV default threads", *time_passes(loader("forkserver"), args.repeats)))
    rows.append(("in-process, OpenCV default threads", *time_passes(in_process, args.repeats)))
    cv2.setNumThreads(1)
    rows.append(("fork, OpenCV 1 thread (brainseg)", *time_passes(loader("fork"), args.repeats)))
    rows.append(("in-process, OpenCV 1 thread", *time_passes(in_process, args.repeats)))
    print(f"| {'loader':38s} | first batch (s) | whole pass (s) |")
    print(f"|{'-' * 40}|----------------:|---------------:|")
    for name, first, total in rows:
        print(f"| {name:38s} | {first:15.3f} | {total:14.3f} |")
    return 0
