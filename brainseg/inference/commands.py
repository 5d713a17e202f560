"""The command-line tools over trained models, as importable functions: ``tools/predict.py``
(:func:`predict_main`) and ``tools/export.py`` (:func:`export_main`); the scripts only call them
through :func:`brainseg.utils.cli.run_cli`."""
import argparse
import functools
import logging
import sys
from typing import Dict, Optional, Sequence

from tqdm.contrib.logging import logging_redirect_tqdm

from brainseg.data import datasets_root, find_case_folders, is_volume_input
from brainseg.data.normalization import config_normalization
from brainseg.modeling.postprocessing import model_mask_threshold
from brainseg.utils.cli import positive_float, positive_int, probability
from brainseg.utils.errors import ConfigError
from brainseg.utils.precision import PRECISIONS

from .ensemble import average_probabilities
from .export import EXPORT_FORMATS, export_model
from .inputs import resolve_inputs
from .model import build_inference_model
from .predictor import SlicePredictor
from .grid import model_grid
from .run import check_output_folder, predict_to_folder
from .volume_run import predict_cases
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
    python tools/predict.py --config-file configs/lgg/unext.py --weights model_best.pth \\
        --input scans/ --output out/ --save-probabilities      # NIfTI case folders
    python tools/predict.py --config-file configs/lgg/unext.py --input scans/ --output out/ \\
        --weights fold0/model_best.pth fold1/model_best.pth fold2/model_best.pth   # ensemble: mean probability
    python tools/predict.py --config-file projects/MaskDINO/configs/maskdino_small_lgg_demo.py \\
        --weights output/maskdino_small_lgg_demo/model_best.pth --input slice.tif --output out/

NIfTI scans: --input is a case folder (one .nii/.nii.gz per sequence) or a folder of case
folders. BraTS 2021 (<case>_t1, _t1ce, _t2, _flair, _seg) and BraTS 2023 (<case>-t1n, -t1c,
-t2w, -t2f, -seg) names are recognised, others through --sequences t1=... flair=... t1ce=...;
FLAIR is required, a missing T1 / post-contrast T1 is replaced by FLAIR. Each volume is
normalised per channel from its own intensities, cut into axial slices, resampled to the
model's grid (--target-size / --target-spacing) and predicted; per case it writes

    <output>/<case>_mask.nii.gz      uint8 0/1 on the input's grid (shape, affine, sform/qform)
    <output>/<case>_prob.nii.gz      float32 probabilities (--save-probabilities)
    <output>/<case>_overlay.png      the slice with the largest predicted tumour
    <output>/summary.csv, .json      tumour volume in mm^3 from the header's voxel size

TIFF slices: --input is one image (.tif/.tiff/.png, 3 channels uint8: pre-contrast, FLAIR,
post-contrast), a folder of slices, a patient folder, or a whole kaggle_3m tree. ``*_mask.tif``
files are ground truth, never inputs. The output mirrors the input layout:

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

    input  "image": (B, 3, H, W) intensities on the 0..255 scale in file channel order
           (pre-contrast, FLAIR, post-contrast); uint8 or float for TorchScript, float32 for ONNX.
           When export.json says "intensity_normalization": "volume" (and always for NIfTI
           scans), first normalise each patient's volume with
           brainseg.data.normalize_intensities(x, brainseg.data.volume_intensity_range(volume)).
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


def add_model_arguments(parser: argparse.ArgumentParser, *, ensemble: bool = False) -> None:
    """``--config-file``, ``--weights`` (several with ``ensemble``) and the trailing ``key=value``
    config overrides."""
    parser.add_argument("--config-file", required=True, metavar="FILE", help="LazyConfig .py of the model")
    if ensemble:
        parser.add_argument("--weights", required=True, nargs="+", metavar="FILE",
                            help="trained checkpoint(s) (.pth); several: their mean probability (e.g. the K fold models)")
    else:
        parser.add_argument("--weights", required=True, metavar="FILE", help="trained checkpoint (.pth)")
    parser.add_argument("opts", nargs="*", metavar="key=value", help="config overrides")


def parse_predict_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=PREDICT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, ensemble=True)
    parser.add_argument("--input", required=True, metavar="PATH",
                        help="NIfTI case folder or folder of case folders; or image, folder, patient folder or LGG tree")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation (4 passes)")
    parser.add_argument("--threshold", type=probability, default=None,
                        help="tumour if probability > T (default: the model's mask_threshold: the one stored in "
                             "the checkpoint by train.choose_threshold, else the config's model.mask_threshold)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="slices per forward pass (default 8)")
    parser.add_argument("--spacing", type=positive_float, nargs=3, metavar=("SX", "SY", "SZ"),
                        help="voxel size in mm (pixel x, pixel y, slice spacing): volumes also in mm^3")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write the tumour probabilities (<case>_prob.nii.gz, float32; <slice>_prob.tif)")
    parser.add_argument("--target-size", type=positive_int, metavar="PX",
                        help="run the model with the larger side of each slice resampled to PX pixels "
                             "(default: the config's evaluation resize, else 256)")
    parser.add_argument("--target-spacing", type=positive_float, metavar="MM",
                        help="run the model on slices resampled to MM mm pixels (NIfTI; wins over --target-size)")
    parser.add_argument("--sequences", nargs="+", metavar="NAME=FILE",
                        help="NIfTI file of each sequence in a case folder when not named like BraTS, e.g. "
                             "t1=T1.nii.gz flair=FLAIR.nii.gz t1ce=T1C.nii.gz seg=labels.nii.gz (glob patterns allowed)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto (default): bf16 where the CPU runs it natively, fp16 on CUDA, else fp32")
    parser.add_argument("--no-overlays", action="store_true", help="write masks and summary only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def _sequence_mapping(pairs: Optional[Sequence[str]]) -> Optional[Dict[str, str]]:
    if not pairs:
        return None
    mapping = {}
    for pair in pairs:
        name, sep, pattern = pair.partition("=")
        if not sep or not pattern:
            raise ConfigError(f"--sequences expects NAME=FILE pairs (e.g. flair=FLAIR.nii.gz); got {pair!r}")
        mapping[name] = pattern
    return mapping


def predict_main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/predict.py``: returns the exit code (0: everything predicted, 1: some input failed)."""
    args = parse_predict_args(argv)
    volumes = is_volume_input(args.input)
    if volumes:
        cases = find_case_folders(args.input)
        if args.spacing:
            logger.warning("--spacing is ignored for NIfTI input: the voxel size comes from each file's header")
    else:
        slices = resolve_inputs(args.input)
    check_output_folder(args.input, args.output)
    models = [build_inference_model(args.config_file, weights, args.opts) for weights in args.weights]
    model, cfg = models[0]
    predictors = [SlicePredictor(m, tta=args.tta, precision=args.precision) for m, _ in models]
    predictor = predictors[0] if len(predictors) == 1 else functools.partial(average_probabilities, predictors)
    thresholds = sorted({model_mask_threshold(m) for m, _ in models})
    if args.threshold is None and len(thresholds) > 1:
        raise ConfigError(f"the checkpoints have different mask thresholds {thresholds}; give --threshold")
    threshold = thresholds[0] if args.threshold is None else args.threshold
    grid = model_grid(cfg, size=args.target_size, spacing=args.target_spacing)
    normalization = "volume" if volumes else config_normalization(cfg)
    summary = VolumeSummary(spacing=None if volumes else args.spacing, metadata={
        "input": args.input, "config_file": args.config_file, "weights": args.weights,
        "threshold": threshold, "tta": predictors[0].tta_names, "intensity_normalization": normalization,
        "precision": predictors[0].precision.name,
        "grid": {"size": grid.size, "spacing_mm": grid.spacing},
    })
    what = f"{len(cases)} NIfTI case(s)" if volumes else f"{len(slices)} slices"
    ensemble = f" (mean of {len(models)} checkpoints)" if len(models) > 1 else ""
    logger.info(f"Predicting {what} from {args.input} with {type(model).__name__}{ensemble} on "
                f"{next(model.parameters()).device} (TTA: {', '.join(predictors[0].tta_names)}; "
                f"{predictors[0].precision.describe()}; "
                f"intensities: {normalization}; grid: " + (f"{grid.spacing:g} mm" if grid.spacing else f"{grid.size} px")
                + ")")
    common = dict(threshold=threshold, batch_size=args.batch_size, grid=grid, save_probabilities=args.save_probabilities,
                  overlays=not args.no_overlays, progress=not args.no_progress)
    with logging_redirect_tqdm(loggers=[logger]):
        if volumes:
            predict_cases(predictor, cases, args.output, summary, mapping=_sequence_mapping(args.sequences), **common)
        else:
            predict_to_folder(predictor, slices, args.output, summary, normalization=normalization, **common)
    done = sum(len(v.slices) for v in summary.patients.values())
    logger.info(f"Wrote the masks of {done} slices of {len(summary.patients)} patient(s) and the summary to {args.output}")
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
    model, cfg = build_inference_model(args.config_file, args.weights, args.opts, device="cpu")
    source = args.sample_input
    if source is None and (datasets_root() / "lgg_demo").is_dir():
        source = datasets_root() / "lgg_demo"
    samples, origin = load_sample_slices(source, args.height, args.width, count=3)
    logger.info(f"Checking exports on {origin}")
    checks = export_model(
        model, args.output, samples, formats=args.format, opset=args.opset,
        dynamo=args.onnx_exporter == "dynamo", tolerance=args.tolerance,
        metadata={"config_file": args.config_file, "weights": args.weights, "samples": origin,
                  "mask_threshold": model_mask_threshold(model), "temperature": getattr(model, "temperature", 1.0),
                  "intensity_normalization": config_normalization(cfg)},
    )
    for check in checks:
        result = f"max abs diff {check.max_abs_diff:.2e}" if check.verified else check.note
        opset = f", opset {check.opset}" if check.opset is not None else ""
        logger.info(f"{check.format}: {check.path} ({result}{opset})")
        if check.opset is not None and check.opset != args.opset:
            logger.warning(f"requested ONNX opset {args.opset}, the exporter wrote opset {check.opset}")
    return 0
