"""brainseg: a detectron2-based toolkit for brain-tumour segmentation in MRI."""

import warnings

__version__ = "0.1.0"

# fvcore (imported by detectron2.layers) scripts its focal loss at import time, and torch >= 2.10
# warns that torch.jit.script is deprecated on every tool's start. brainseg never scripts a model.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
