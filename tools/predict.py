#!/usr/bin/env python
"""Segment tumours with a trained model: masks, overlays and per-patient volumes.

The command is :func:`brainseg.inference.commands.predict_main`; ``--help`` describes it.
"""
import sys

from detectron2.utils.logger import setup_logger

from brainseg.inference.commands import predict_main
from brainseg.utils.cli import run_cli

if __name__ == "__main__":
    setup_logger(name="brainseg", abbrev_name="brainseg")
    sys.exit(run_cli(predict_main))
