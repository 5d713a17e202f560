#!/usr/bin/env python
"""Export a trained semantic net (UNet, ResUNet, UNeXt) to TorchScript and ONNX.

The command is :func:`brainseg.inference.commands.export_main`; ``--help`` describes it.
"""
import sys

from detectron2.utils.logger import setup_logger

from brainseg.inference.commands import export_main
from brainseg.utils.cli import run_cli

if __name__ == "__main__":
    setup_logger(name="brainseg", abbrev_name="brainseg")
    sys.exit(run_cli(export_main))
