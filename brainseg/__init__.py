"""brainseg: a detectron2-based toolkit for brain-tumour segmentation in MRI."""

__version__ = "0.1.0"
