"""Regression script for the OpenCV-pool-after-fork deadlock (run by tests/test_workers.py).

Usage: fork_after_opencv.py LGG_ROOT ROUNDS

Each round: brainseg's evaluation loader is built, the parent runs OpenCV calls that use its thread
pool from two threads at once, then the loader (2 forked workers, the training mapper with its
rotation) maps every record once.
Prints one line when every round finished; a deadlocked round is killed by the caller's timeout.
"""
import sys
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from brainseg.data import LGGDatasetMapper, build_lgg_augmentations, build_lgg_test_loader, load_lgg_records


def use_opencv_pool(image: np.ndarray) -> None:
    mask = (image[..., 0] > 128).astype(np.uint8)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: (cv2.connectedComponents(mask), cv2.warpAffine(image, np.eye(2, 3), (512, 512))),
                      range(4)))


def main(root: str, rounds: int) -> None:
    records = load_lgg_records(root)
    image = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    mapper = LGGDatasetMapper(is_train=True, augmentations=build_lgg_augmentations(rotation_degrees=15.0))
    for done in range(rounds):
        loader = build_lgg_test_loader(records, mapper=mapper, batch_size=len(records) // 2, num_workers=2)
        use_opencv_pool(image)
        batches = list(loader)  # forks the workers right after the parent's OpenCV calls
        assert sum(len(batch) for batch in batches) == len(records)
        print(f"round {done + 1}", file=sys.stderr, flush=True)
    print(f"{rounds} rounds, 2 workers each: no deadlock")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
