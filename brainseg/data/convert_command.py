"""``tools/convert_lgg_to_coco.py``: convert an LGG (kaggle_3m) dataset into COCO
instance-segmentation json files.

Writes ``lgg_train.json``, ``lgg_val.json`` and ``lgg_test.json`` into ``--out``: one
annotation per connected tumour component (compressed RLE, or polygons with ``--polygons``),
bbox and area from the mask, images carrying ``patient_id`` and ``slice_index``; the patient
split is recorded in each file's ``info``.

Example:
    python tools/convert_lgg_to_coco.py --root datasets/lgg --out datasets/lgg/coco
"""
import argparse
import time

from ..utils.errors import LGGDataError, UserError
from .coco import convert_lgg_to_coco
from .split import DEFAULT_SPLIT_RATIOS, DEFAULT_SPLIT_SEED

__all__ = ["main"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="kaggle_3m folder, or a folder containing it")
    parser.add_argument("--out", required=True, help="output folder for lgg_{train,val,test}.json")
    parser.add_argument("--polygons", action="store_true", help="polygons instead of compressed RLE")
    parser.add_argument("--ratios", type=float, nargs=3, default=DEFAULT_SPLIT_RATIOS,
                        metavar=("TRAIN", "VAL", "TEST"), help="patient split fractions")
    parser.add_argument("--seed", type=int, default=DEFAULT_SPLIT_SEED, help="patient split seed")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """``tools/convert_lgg_to_coco.py``: returns the exit code."""
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        paths = convert_lgg_to_coco(args.root, args.out, ratios=args.ratios, seed=args.seed,
                                    polygons=args.polygons)
    except LGGDataError:
        raise
    except (ValueError, OSError) as e:  # bad split ratios, an unwritable output folder
        raise UserError(str(e)) from None
    for split, path in paths.items():
        print(f"{split}: {path}")
    print(f"converted in {time.perf_counter() - start:.1f} s")
    return 0
