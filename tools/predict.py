#!/usr/bin/env python
"""Segment tumours with a trained model: masks, overlays and per-patient volumes.

Examples:
    python tools/predict.py --config-file configs/lgg/unext.py \\
        --weights output/lgg_unext/model_best.pth --input datasets/lgg --output output/predictions
    python tools/predict.py --config-file configs/lgg/unext.py --weights model_best.pth \\
        --input TCGA_CS_4941_19960909/ --output out/ --tta --spacing 1 1 2.5
    python tools/predict.py --config-file projects/MaskDINO/configs/maskdino_small_lgg_demo.py \\
        --weights output/maskdino_small_lgg_demo/model_best.pth --input slice.tif --output out/

--input is one image (.tif/.tiff/.png, 3 channels uint8: pre-contrast, FLAIR, post-contrast),
a folder of slices, a patient folder, or a whole kaggle_3m tree. ``*_mask.tif`` files are ground
truth, never inputs. The output mirrors the input layout:

    <output>/<rel>/<slice>_mask.tif      predicted mask, uint8 0/255 (the dataset's convention)
    <output>/<rel>/<slice>_overlay.png   prediction contour red, ground truth green (if present)
    <output>/summary.csv, summary.json   per patient: slices, slices with tumour, area per slice
                                         (px), volume (voxels; mm^3 with --spacing), max-area slice

--tta averages the tumour probabilities of 4 passes: identity, horizontal flip, vertical flip and
both flips. Works with any model whose eval outputs hold ``sem_seg`` (the semantic nets of
configs/lgg/ and Mask DINO). Runs on CUDA when available (``train.device=auto``), else CPU,
one batch at a time. Unreadable inputs are reported, the others processed; the exit code is 1
if anything failed (the failures are also listed in summary.json).
"""
import argparse
import logging
import sys

from detectron2.utils.logger import setup_logger
from tqdm.contrib.logging import logging_redirect_tqdm

from brainseg.inference import (
    SlicePredictor,
    VolumeSummary,
    build_inference_model,
    check_output_folder,
    predict_to_folder,
    resolve_inputs,
)
from brainseg.inference.cli import add_model_arguments, positive_float, positive_int, probability, run_cli

logger = logging.getLogger("brainseg")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--input", required=True, metavar="PATH", help="image, folder, patient folder or LGG tree")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation (4 passes)")
    parser.add_argument("--threshold", type=probability, default=0.5, help="tumour if probability > T (default 0.5)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="slices per forward pass (default 8)")
    parser.add_argument("--spacing", type=positive_float, nargs=3, metavar=("SX", "SY", "SZ"),
                        help="voxel size in mm (pixel x, pixel y, slice spacing): volumes also in mm^3")
    parser.add_argument("--no-overlays", action="store_true", help="write masks and summary only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Run the CLI; return the exit code (0: everything predicted, 1: some input failed)."""
    args = parse_args(argv)
    slices = resolve_inputs(args.input)
    check_output_folder(args.input, args.output)
    model, _ = build_inference_model(args.config_file, args.weights, args.opts)
    predictor = SlicePredictor(model, tta=args.tta)
    summary = VolumeSummary(spacing=args.spacing, metadata={
        "input": args.input, "config_file": args.config_file, "weights": args.weights,
        "threshold": args.threshold, "tta": predictor.tta_names,
    })
    logger.info(f"Predicting {len(slices)} slices from {args.input} with {type(model).__name__} "
                f"on {next(model.parameters()).device} (TTA: {', '.join(predictor.tta_names)})")
    with logging_redirect_tqdm(loggers=[logger]):
        predict_to_folder(predictor, slices, args.output, summary, batch_size=args.batch_size,
                          threshold=args.threshold, overlays=not args.no_overlays, progress=not args.no_progress)
    done = sum(len(v.slices) for v in summary.patients.values())
    logger.info(f"Wrote {done} masks for {len(summary.patients)} patients and the summary to {args.output}")
    if summary.failures:
        print(f"{len(summary.failures)} input file(s) failed:", file=sys.stderr)
        for failure in summary.failures:
            print(f"  {failure['error']}", file=sys.stderr)
        return 1
    return 0


def run(argv=None) -> int:
    """``main`` with user errors turned into one line on stderr and exit code 1."""
    return run_cli(main, argv)


if __name__ == "__main__":
    setup_logger(name="brainseg", abbrev_name="brainseg")
    sys.exit(run())
