"""The demo dataset generator (``datasets/prepare_lgg_demo.py``, ``make demo``): real anatomy
(the MNI152 template bundled with nilearn) with synthetic lesions, written in the exact
``kaggle_3m`` layout. :mod:`.render` draws one patient's volume; :mod:`.generate` writes the tree."""
from .generate import generate_lgg_demo

__all__ = ["generate_lgg_demo"]
