#!/usr/bin/env python
"""Write an LGG TIFF tree as NIfTI case folders (BraTS names): :func:`brainseg.data.nifti_export.main`."""
import sys

from brainseg.data.nifti_export import main
from brainseg.utils.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
