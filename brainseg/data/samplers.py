"""A training sample stream that can resume mid-run exactly.

detectron2's TrainingSampler restarts its shuffle stream from scratch after ``--resume``,
and augmentations draw from each worker's global RNG: a resumed run sees other samples and
other augmentations than an uninterrupted one. Here both are functions of the position in
the stream: position ``p`` is sample ``perm_{p // n}[p % n]`` of the per-epoch permutation
``perm_e`` (seeded by ``(seed, e)``) and is augmented with the seed ``(seed, p)``. Resuming
at iteration ``i`` starts the stream at ``p = i * total_batch_size``.
"""
from typing import Iterator, List

import numpy as np
import torch.utils.data as torchdata
from detectron2.utils import comm

__all__ = ["ResumableTrainingSampler", "PositionalDataset", "AUG_SEED_KEY"]

AUG_SEED_KEY = "aug_seed"


class ResumableTrainingSampler(torchdata.Sampler):
    """Infinite shuffled stream of ``position * size + index`` codes, sharded over ranks like
    detectron2's TrainingSampler (rank ``r`` of ``W`` takes positions ``start + r``,
    ``start + r + W``, ...). Decode codes with :class:`PositionalDataset`."""

    def __init__(self, size: int, *, seed: int = 0, shuffle: bool = True, start: int = 0):
        """
        Args:
            size: number of records in the dataset.
            seed: seed of the shuffles (identical on every rank).
            shuffle: shuffle each epoch; otherwise visit records in order.
            start: stream position to start at (samples already consumed by all ranks).
        """
        if size <= 0:
            raise ValueError("ResumableTrainingSampler needs a non-empty dataset")
        self.size = size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.start = int(start)
        self.rank = comm.get_rank()
        self.world_size = comm.get_world_size()

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The record order of one epoch."""
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def __iter__(self) -> Iterator[int]:
        position = self.start + self.rank
        epoch, order = -1, None
        while True:
            if position // self.size != epoch:
                epoch = position // self.size
                order = self.epoch_order(epoch)
            yield position * self.size + int(order[position % self.size])
            position += self.world_size


class PositionalDataset(torchdata.Dataset):
    """Decodes the sampler's codes: returns the record with an ``aug_seed`` for its position."""

    def __init__(self, records: List[dict], *, seed: int = 0):
        self.records = records
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, code: int) -> dict:
        position, index = divmod(int(code), len(self.records))
        record = dict(self.records[index])
        record[AUG_SEED_KEY] = int(np.random.default_rng([self.seed, position]).integers(2**31))
        return record
