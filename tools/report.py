#!/usr/bin/env python
"""Compare brainseg runs: a results table (Markdown + CSV) and training curves (PNG).

The command is :func:`brainseg.visualization.report.main`; ``--help`` describes it.
"""
import sys

from detectron2.utils.logger import setup_logger

from brainseg.visualization.report import main
from brainseg.utils.cli import run_cli

if __name__ == "__main__":
    setup_logger(name="brainseg", abbrev_name="brainseg")
    sys.exit(run_cli(main))
