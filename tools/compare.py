#!/usr/bin/env python
"""Compare models on the same patient folds: tables, statistics, figures and an HTML report.

The command is :func:`brainseg.engine.compare.compare_main`; ``--help`` describes it.
"""
import sys

from brainseg.engine.compare import compare_main
from brainseg.utils.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(compare_main))
