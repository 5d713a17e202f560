"""Data loader builders for LGG training (resumable, reproducible) and evaluation; both keep
OpenCV fork-safe in the process that forks their workers."""
from typing import Callable, List

from detectron2.data import build_detection_test_loader, build_detection_train_loader

from ..utils.workers import make_opencv_fork_safe
from .samplers import PositionalDataset, ResumableTrainingSampler

__all__ = ["build_lgg_train_loader", "build_lgg_test_loader"]


def build_lgg_train_loader(
    dataset: List[dict],
    *,
    mapper: Callable[[dict], dict],
    total_batch_size: int,
    num_workers: int = 0,
    seed: int = 0,
    start_iter: int = 0,
):
    """detectron2's train loader over a :class:`ResumableTrainingSampler` stream.

    The same ``seed`` gives the same samples, in the same order, with the same augmentations,
    whatever the number of workers; ``start_iter`` (set by tools/train_net.py on ``--resume``)
    continues the stream where an interrupted run left it.

    Args:
        dataset: dataset dicts.
        mapper: maps a record (with ``aug_seed``) to model inputs.
        total_batch_size: images per iteration over all processes.
        num_workers: loader processes per training process.
        seed: seed of the shuffles and augmentations.
        start_iter: first iteration to produce.

    Returns:
        an infinite iterable of lists of mapped records.
    """
    if num_workers > 0:
        make_opencv_fork_safe()  # the workers are forked from this process
    sampler = ResumableTrainingSampler(len(dataset), seed=seed, start=start_iter * total_batch_size)
    return build_detection_train_loader(
        dataset=PositionalDataset(dataset, seed=seed),
        mapper=mapper,
        sampler=sampler,
        total_batch_size=total_batch_size,
        aspect_ratio_grouping=False,
        num_workers=num_workers,
    )


def build_lgg_test_loader(dataset: List[dict], *, mapper: Callable[[dict], dict], batch_size: int = 1,
                          num_workers: int = 0):
    """detectron2's ``build_detection_test_loader`` (every record once, in order), with OpenCV
    made fork-safe first when it has worker processes.

    Args:
        dataset: dataset dicts.
        mapper: maps a record to model inputs.
        batch_size: images per batch.
        num_workers: loader processes.

    Returns:
        a torch DataLoader yielding lists of mapped records.
    """
    if num_workers > 0:
        make_opencv_fork_safe()  # the workers are forked from this process
    return build_detection_test_loader(dataset=dataset, mapper=mapper, batch_size=batch_size,
                                       num_workers=num_workers)
