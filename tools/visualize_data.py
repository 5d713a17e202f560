#!/usr/bin/env python
"""Browse a registered dataset: slices with their ground truth (and predictions) as PNG grids.

The command is :func:`brainseg.visualization.browse_command.main`; ``--help`` describes it.
"""
import sys

from detectron2.utils.logger import setup_logger

from brainseg.visualization.browse_command import main
from brainseg.utils.cli import run_cli

if __name__ == "__main__":
    setup_logger(name="brainseg", abbrev_name="brainseg")
    sys.exit(run_cli(main))
