#!/usr/bin/env python
"""Benchmarks: a model's training and inference speed (default), ``ms_deform_attn`` (ours vs
PyTorch vs a PyPI peer), ``resampling`` (UNeXt's fused upsampling and pooling kernels vs the
PyTorch compositions) and ``loader`` (data-loader start methods).

The command is :func:`brainseg.engine.benchmark.main`; ``--help`` describes it.
"""
import sys

from brainseg.engine.benchmark import main
from brainseg.utils.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
