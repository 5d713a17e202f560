#!/usr/bin/env python
"""Put a demo run's test figures next to the range recorded over several seeds.

The command is :func:`brainseg.visualization.seed_summary.main`; ``--help`` describes it.
"""
import sys

from detectron2.utils.logger import setup_logger

from brainseg.visualization.seed_summary import main
from brainseg.utils.cli import run_cli

if __name__ == "__main__":
    setup_logger(name="brainseg", abbrev_name="brainseg")
    sys.exit(run_cli(main))
