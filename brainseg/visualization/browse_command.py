"""Browse a registered dataset: slices with their ground truth (and predictions) as PNG grids.

Examples:
    python tools/visualize_data.py --dataset lgg_demo_train --output output/browse
    python tools/visualize_data.py --dataset lgg_test --output browse/ --only-tumour --num 32 \\
        --predictions output/lgg_unext/inference_test/coco_instances_results.json
    python tools/visualize_data.py --dataset lgg_test --output browse/ --grid 2x4 \\
        --patients TCGA_CS_4941_19960909 --predictions output/predictions/   # tools/predict.py masks

Each tile shows the FLAIR channel with the ground-truth contour in green and the prediction
contour in red, titled "<patient> #<slice>" (+ the slice's Dice with predictions). Slices are
taken in dataset order (patient, slice) after the --patients / --only-tumour filters; grids are
written as <output>/<dataset>_000.png, _001.png, ...

--predictions is a COCO results file (``coco_instances_results.json`` written by the evaluator;
instances with score >= --score-threshold are united) or a folder of ``<slice>_mask.tif`` files
(tools/predict.py output; searched recursively).
"""
import argparse
import difflib
import logging
from pathlib import Path

import cv2
from detectron2.data import DatasetCatalog

import brainseg.data  # noqa: F401  (registers the LGG datasets)
from brainseg.data import read_lgg_image
from brainseg.utils.cli import positive_int, probability
from brainseg.utils.errors import UserError
from brainseg.utils.io import atomic_write

from .browse import PredictionMasks, compose_grid, parse_grid, record_truth, tile_title
from .overlay import draw_overlay

__all__ = ["main", "UsageError"]

logger = logging.getLogger("brainseg")


class UsageError(UserError, ValueError):
    """A command-line argument naming something that does not exist."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="registered dataset name, e.g. lgg_demo_train")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--predictions", metavar="JSON_OR_DIR", help="COCO results json or folder of *_mask.tif")
    parser.add_argument("--num", type=positive_int, help="number of slices (default: one grid)")
    parser.add_argument("--patients", nargs="+", metavar="ID", help="only these patients")
    parser.add_argument("--only-tumour", action="store_true", help="only slices whose ground truth has tumour")
    parser.add_argument("--grid", default="4x4", help="ROWSxCOLS tiles per PNG (default 4x4)")
    parser.add_argument("--score-threshold", type=probability, default=0.5, help="min score of COCO results (0.5)")
    return parser.parse_args(argv)


def load_records(name: str) -> list:
    """The dataset's records; an unregistered name is a :class:`UsageError`."""
    registered = DatasetCatalog.list()
    if name not in registered:
        close = difflib.get_close_matches(name, registered, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"dataset '{name}' is not registered{hint}")
    return DatasetCatalog.get(name)


def select_records(records: list, *, patients=None, only_tumour: bool = False, num: int) -> list:
    """Filter by patient and tumour presence (from the annotations), keep the first ``num``."""
    if patients:
        known = {r.get("patient_id") for r in records}
        unknown = [p for p in patients if p not in known]
        if unknown:
            raise UsageError(f"patient(s) {', '.join(unknown)} not in the dataset")
        records = [r for r in records if r.get("patient_id") in set(patients)]
    if only_tumour:
        records = [r for r in records if r.get("annotations")]
    return records[:num]


def main(argv=None) -> int:
    """``tools/visualize_data.py``: returns the exit code."""
    args = parse_args(argv)
    try:
        rows, cols = parse_grid(args.grid)
    except ValueError as e:
        raise UsageError(str(e)) from None
    num = args.num if args.num is not None else rows * cols
    predictions = PredictionMasks(args.predictions, score_threshold=args.score_threshold) if args.predictions else None
    records = select_records(load_records(args.dataset), patients=args.patients, only_tumour=args.only_tumour, num=num)
    if not records:
        raise UsageError(f"no slices of '{args.dataset}' match the filters")
    per_grid = rows * cols
    for page, start in enumerate(range(0, len(records), per_grid)):
        tiles, titles = [], []
        for record in records[start:start + per_grid]:
            image = read_lgg_image(record["file_name"])
            truth = record_truth(record, image.shape[:2])
            prediction = predictions.mask(record, image.shape[:2]) if predictions else None
            tiles.append(draw_overlay(image, prediction, truth))
            titles.append(tile_title(record, prediction, truth, predictions is not None))
        grid = compose_grid(tiles, titles, rows, cols)
        path = Path(args.output) / f"{args.dataset}_{page:03d}.png"
        ok, encoded = cv2.imencode(".png", grid[:, :, ::-1])
        if not ok:
            raise RuntimeError(f"could not encode {path}")
        atomic_write(path, encoded.tobytes())
        logger.info(f"Wrote {path} ({len(tiles)} slices)")
    return 0
