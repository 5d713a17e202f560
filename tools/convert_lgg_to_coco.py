#!/usr/bin/env python
"""Convert an LGG (kaggle_3m) dataset into COCO instance-segmentation json files.

The command is :func:`brainseg.data.convert_command.main`; ``--help`` describes it.
"""
import sys

from brainseg.data.convert_command import main
from brainseg.utils.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
