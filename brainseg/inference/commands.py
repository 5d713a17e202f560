"""The command-line tools over trained models, as importable functions: ``tools/predict.py``
(:func:`predict_main`) and ``tools/export.py`` (:func:`export_main`); the scripts only call them
through :func:`brainseg.utils.cli.run_cli`."""
import argparse
import logging
import sys
from typing import Optional, Sequence

from tqdm.contrib.logging import logging_redirect_tqdm

from brainseg.data import datasets_root
from brainseg.modeling.postprocessing import model_mask_threshold
from brainseg.utils.cli import positive_float, positive_int, probability

from .export import EXPORT_FORMATS, export_model
from .inputs import resolve_inputs
from .model import build_inference_model
from .predictor import SlicePredictor
from .run import check_output_folder, predict_to_folder
from .samples import load_sample_slices
from .summary import VolumeSummary

__all__ = ["predict_main", "export_main", "add_model_arguments"]

logger = logging.getLogger("brainseg")

PREDICT_HELP = """Segment tumours with a trained model: masks, overlays and per-patient volumes.

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

EXPORT_HELP = """Export a trained semantic net (UNet, ResUNet, UNeXt) to TorchScript and ONNX.

Example:
    python tools/export.py --config-file configs/lgg/unext.py \\
        --weights output/lgg_unext/model_best.pth --output output/export
    python tools/export.py --config-file configs/lgg/unet.py --weights model_best.pth \\
        --output export/ --format onnx --opset 18 --height 256 --width 256

Writes <output>/model.torchscript.pt, <output>/model.onnx and <output>/export.json (input/output
spec and the measured differences). The exported model is normalisation + net + sigmoid:

    input  "image": (B, 3, H, W) raw intensities 0..255 in file channel order (pre-contrast,
           FLAIR, post-contrast); uint8 or float for TorchScript, float32 for ONNX.
    output "tumour_probability": (B, 1, H, W) in [0, 1]; tumour where > the model's mask_threshold
           (recorded in export.json as "mask_threshold": the checkpoint's threshold chosen on the
           validation split when trained with train.choose_threshold=True, else the config's, 0.5
           in the shipped configs).

B is dynamic (checked with 1 and 3); H and W are fixed at export (default 256x256) and must be multiples of the net's
stride (32 for UNeXt; 2**depth for UNet/ResUNet): the graph does no padding. Each file is checked
against eager PyTorch on real slices (--sample-input, else the demo data in
$BRAINSEG_DATASETS/lgg_demo if present, else generated LGG-like slices) with batches of 1 and 3,
ONNX through onnxruntime when installed; a model whose probabilities differ by more than
--tolerance (1e-4) is not written (exit code 1).

Running the exported models:

    import numpy as np, onnxruntime, tifffile, torch
    image = tifffile.imread("P_12.tif").transpose(2, 0, 1)[None]            # (1, 3, 256, 256) uint8
    session = onnxruntime.InferenceSession("export/model.onnx")
    prob = session.run(None, {"image": image.astype(np.float32)})[0][0, 0]   # (256, 256)
    model = torch.jit.load("export/model.torchscript.pt")
    prob = model(torch.from_numpy(image))[0, 0]                             # uint8 input works
    mask = prob > 0.5
"""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config-file``, ``--weights`` and the trailing ``key=value`` config overrides."""
    parser.add_argument("--config-file", required=True, metavar="FILE", help="LazyConfig .py of the model")
    parser.add_argument("--weights", required=True, metavar="FILE", help="trained checkpoint (.pth)")
    parser.add_argument("opts", nargs="*", metavar="key=value", help="config overrides")


def parse_predict_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=PREDICT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--input", required=True, metavar="PATH", help="image, folder, patient folder or LGG tree")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation (4 passes)")
    parser.add_argument("--threshold", type=probability, default=None,
                        help="tumour if probability > T (default: the model's mask_threshold: the one stored in "
                             "the checkpoint by train.choose_threshold, else the config's model.mask_threshold)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="slices per forward pass (default 8)")
    parser.add_argument("--spacing", type=positive_float, nargs=3, metavar=("SX", "SY", "SZ"),
                        help="voxel size in mm (pixel x, pixel y, slice spacing): volumes also in mm^3")
    parser.add_argument("--no-overlays", action="store_true", help="write masks and summary only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def predict_main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/predict.py``: returns the exit code (0: everything predicted, 1: some input failed)."""
    args = parse_predict_args(argv)
    slices = resolve_inputs(args.input)
    check_output_folder(args.input, args.output)
    model, _ = build_inference_model(args.config_file, args.weights, args.opts)
    predictor = SlicePredictor(model, tta=args.tta)
    threshold = model_mask_threshold(model) if args.threshold is None else args.threshold
    summary = VolumeSummary(spacing=args.spacing, metadata={
        "input": args.input, "config_file": args.config_file, "weights": args.weights,
        "threshold": threshold, "tta": predictor.tta_names,
    })
    logger.info(f"Predicting {len(slices)} slices from {args.input} with {type(model).__name__} "
                f"on {next(model.parameters()).device} (TTA: {', '.join(predictor.tta_names)})")
    with logging_redirect_tqdm(loggers=[logger]):
        predict_to_folder(predictor, slices, args.output, summary, batch_size=args.batch_size,
                          threshold=threshold, overlays=not args.no_overlays, progress=not args.no_progress)
    done = sum(len(v.slices) for v in summary.patients.values())
    logger.info(f"Wrote {done} masks for {len(summary.patients)} patients and the summary to {args.output}")
    if summary.failures:
        print(f"{len(summary.failures)} input file(s) failed:", file=sys.stderr)
        for failure in summary.failures:
            print(f"  {failure['error']}", file=sys.stderr)
        return 1
    return 0


def parse_export_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=EXPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--format", nargs="+", default=list(EXPORT_FORMATS), choices=EXPORT_FORMATS,
                        help="formats to write (default: both)")
    parser.add_argument("--opset", type=positive_int, default=17, help="ONNX opset, >= 17 (default 17)")
    parser.add_argument("--height", type=positive_int, default=256, help="exported input height (default 256)")
    parser.add_argument("--width", type=positive_int, default=256, help="exported input width (default 256)")
    parser.add_argument("--onnx-exporter", choices=("torchscript", "dynamo"), default="torchscript",
                        help="torch.onnx exporter: TorchScript-based (default: fast, writes exactly --opset) or "
                             "torch.export-based (torch's newer exporter; starts at opset 18)")
    parser.add_argument("--sample-input", metavar="PATH", help="slices to check the exports on (image, folder, tree)")
    parser.add_argument("--tolerance", type=positive_float, default=1e-4, help="max abs probability difference (1e-4)")
    return parser.parse_args(argv)


def export_main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/export.py``: returns the exit code (0: every format written and verified)."""
    args = parse_export_args(argv)
    model, _ = build_inference_model(args.config_file, args.weights, args.opts, device="cpu")
    source = args.sample_input
    if source is None and (datasets_root() / "lgg_demo").is_dir():
        source = datasets_root() / "lgg_demo"
    samples, origin = load_sample_slices(source, args.height, args.width, count=3)
    logger.info(f"Checking exports on {origin}")
    checks = export_model(
        model, args.output, samples, formats=args.format, opset=args.opset,
        dynamo=args.onnx_exporter == "dynamo", tolerance=args.tolerance,
        metadata={"config_file": args.config_file, "weights": args.weights, "samples": origin,
                  "mask_threshold": model_mask_threshold(model), "temperature": getattr(model, "temperature", 1.0)},
    )
    for check in checks:
        result = f"max abs diff {check.max_abs_diff:.2e}" if check.verified else check.note
        opset = f", opset {check.opset}" if check.opset is not None else ""
        logger.info(f"{check.format}: {check.path} ({result}{opset})")
        if check.opset is not None and check.opset != args.opset:
            logger.warning(f"requested ONNX opset {args.opset}, the exporter wrote opset {check.opset}")
    return 0
