#!/usr/bin/env python
"""GPU self-test: CUDA build, CUDA vs CPU deformable-attention kernels, 50 AMP training iterations
of UNeXt and Mask DINO; PASS/FAIL per check, exit code 1 on any failure (0 and SKIPPED without a GPU).

The command is :func:`brainseg.engine.gpu_selftest.main`; ``--help`` describes it.
"""
import sys

from brainseg.engine.gpu_selftest import main
from brainseg.utils.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
