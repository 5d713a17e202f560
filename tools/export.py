#!/usr/bin/env python
"""Export a trained semantic net (UNet, ResUNet, UNeXt) to TorchScript and ONNX.

Example:
    python tools/export.py --config-file configs/lgg/unext.py \\
        --weights output/lgg_unext/model_best.pth --output output/export
    python tools/export.py --config-file configs/lgg/unet.py --weights model_best.pth \\
        --output export/ --format onnx --opset 18 --height 256 --width 256

Writes <output>/model.torchscript.pt, <output>/model.onnx and <output>/export.json (input/output
spec and the measured differences). The exported model is normalisation + net + sigmoid:

    input  "image": (B, 3, H, W) raw intensities 0..255 in file channel order (pre-contrast,
           FLAIR, post-contrast); uint8 or float for TorchScript, float32 for ONNX.
    output "tumour_probability": (B, 1, H, W) in [0, 1]; tumour where > 0.5.

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
import argparse
import logging
import sys

from detectron2.utils.logger import setup_logger

from brainseg.data import datasets_root
from brainseg.inference import (
    EXPORT_FORMATS,
    ExportError,
    build_inference_model,
    export_model,
    load_sample_slices,
)
from brainseg.inference.cli import add_model_arguments, positive_float, positive_int, run_cli

logger = logging.getLogger("brainseg")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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


def main(argv=None) -> int:
    args = parse_args(argv)
    model, _ = build_inference_model(args.config_file, args.weights, args.opts, device="cpu")
    source = args.sample_input
    if source is None and (datasets_root() / "lgg_demo").is_dir():
        source = datasets_root() / "lgg_demo"
    samples, origin = load_sample_slices(source, args.height, args.width, count=3)
    logger.info(f"Checking exports on {origin}")
    checks = export_model(
        model, args.output, samples, formats=args.format, opset=args.opset,
        dynamo=args.onnx_exporter == "dynamo", tolerance=args.tolerance,
        metadata={"config_file": args.config_file, "weights": args.weights, "samples": origin},
    )
    for check in checks:
        result = f"max abs diff {check.max_abs_diff:.2e}" if check.verified else check.note
        opset = f", opset {check.opset}" if check.opset is not None else ""
        logger.info(f"{check.format}: {check.path} ({result}{opset})")
        if check.opset is not None and check.opset != args.opset:
            logger.warning(f"requested ONNX opset {args.opset}, the exporter wrote opset {check.opset}")
    return 0


def run(argv=None) -> int:
    """``main`` with user errors turned into one line on stderr and exit code 1."""
    return run_cli(main, argv, errors=(ExportError,))


if __name__ == "__main__":
    setup_logger(name="brainseg", abbrev_name="brainseg")
    sys.exit(run())
