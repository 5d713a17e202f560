"""Batched tumour-probability prediction for any model following the brainseg contract
(eval outputs with ``sem_seg`` (2, H, W) (background, tumour) scores), with optional
flip test-time augmentation."""
import itertools
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from brainseg.utils.errors import ConfigError
from brainseg.utils.precision import resolve_precision
from brainseg.modeling.postprocessing import TUMOUR_PROBABILITY, tumour_probability

__all__ = ["TTA_FLIPS", "SlicePredictor"]

# Test-time augmentation: every flip of the dihedral group of the two image axes. The flip of a
# (C, H, W) image and of an (H, W) map are the same negative dims; each flip is its own inverse.
TTA_FLIPS: Dict[str, Tuple[int, ...]] = {
    "identity": (),
    "hflip": (-1,),
    "vflip": (-2,),
    "hvflip": (-2, -1),
}


class SlicePredictor:
    """Tumour probabilities of a batch of slices.

    Without TTA, one forward pass. With ``tta=True``, four passes: the identity, the horizontal
    flip, the vertical flip and both flips (:data:`TTA_FLIPS`); each probability map is flipped
    back and the four are averaged (a mean of probabilities, not of logits). Forward passes run in
    ``precision`` ("auto": bf16 autocast on a CPU with native bf16, fp16 on CUDA, else fp32; see
    :mod:`brainseg.utils.precision`); the probabilities are float32 whatever the precision.

    Example::

        model, cfg = build_inference_model("configs/lgg/unext.py", "model_best.pth")
        predictor = SlicePredictor(model, tta=True)
        probs = predictor([read_lgg_image(p) for p in paths])  # list of (H, W) tensors
    """

    def __init__(self, model: nn.Module, *, tta: bool = False, precision: str = "auto"):
        """
        Args:
            model: a detectron2-style model whose eval outputs hold ``sem_seg`` (else
                :class:`~brainseg.utils.errors.ConfigError` at the first call).
            tta: average over the four flips.
            precision: "auto", "fp32", "bf16" or "fp16", resolved for the device of the model's
                parameters (:func:`~brainseg.utils.precision.resolve_precision`; a bad value is a
                :class:`~brainseg.utils.errors.ConfigError`).
        """
        self.model = model.eval()
        first = next(itertools.chain(model.parameters(), model.buffers()), None)
        self.precision = resolve_precision(precision, first.device if first is not None else "cpu")
        self.flips = tuple(TTA_FLIPS.values()) if tta else (TTA_FLIPS["identity"],)

    @property
    def tta_names(self) -> List[str]:
        """Names of the passes averaged (``["identity"]`` without TTA)."""
        return [name for name, dims in TTA_FLIPS.items() if dims in self.flips]

    def _probabilities(self, images: List[torch.Tensor], sizes: Sequence[Tuple[int, int]],
                       dims: Tuple[int, ...]) -> List[torch.Tensor]:
        """Tumour probabilities (at ``sizes``) of ``images`` seen through the flip ``dims``, flipped back."""
        inputs = [{"image": im.flip(dims) if dims else im, "height": int(h), "width": int(w)}
                  for im, (h, w) in zip(images, sizes)]
        probs = []
        for output in self.precision.run(self.model, inputs):
            if TUMOUR_PROBABILITY not in output and "sem_seg" not in output:
                raise ConfigError(f"{type(self.model).__name__} returned no '{TUMOUR_PROBABILITY}' nor 'sem_seg' "
                                  f"(outputs: {sorted(output)}); prediction needs a tumour probability")
            p = tumour_probability(output).float().cpu()
            probs.append(p.flip(dims) if dims else p)
        return probs

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray],
                 output_sizes: Optional[Sequence[Tuple[int, int]]] = None) -> List[torch.Tensor]:
        """
        Args:
            images: (H, W, 3) slices (file channel order): uint8, or float on the 0..255 scale
                (normalised, see :mod:`brainseg.data.normalization`); sizes may differ.
            output_sizes: (height, width) of each probability map (the model resizes its output,
                as for a record's original size in evaluation); default: each image's own size.

        Returns:
            one float (H, W) tumour-probability tensor on the CPU per image.
        """
        tensors = [torch.from_numpy(np.ascontiguousarray(np.asarray(im).transpose(2, 0, 1))) for im in images]
        if not tensors:
            return []
        sizes = [t.shape[-2:] for t in tensors] if output_sizes is None else list(output_sizes)
        if len(sizes) != len(tensors):
            raise ValueError(f"{len(tensors)} images but {len(sizes)} output sizes")
        total = self._probabilities(tensors, sizes, self.flips[0])
        for dims in self.flips[1:]:
            total = [a + b for a, b in zip(total, self._probabilities(tensors, sizes, dims))]
        return [p / len(self.flips) for p in total]
