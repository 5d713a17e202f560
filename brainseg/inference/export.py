"""Export a brainseg semantic model to TorchScript and ONNX, checked against eager PyTorch.

The exported graph is :class:`ExportableSegmenter`: pixel normalisation + ``model.net`` +
``sigmoid(logit / temperature)`` (the model's temperature, 1 unless fitted on validation), mapping raw intensities (B, 3, H, W) (channels pre-contrast, FLAIR, post-contrast,
0..255) to tumour probabilities (B, 1, H, W). The batch is dynamic; H and W are fixed at
export and must be multiples of the net's stride (``net.size_divisibility``, 32 for UNeXt),
so the graph needs no padding (256x256 LGG slices qualify). TorchScript takes uint8 or float
input (it casts); ONNX declares a float32 input.

Each model is written under a temporary name, loaded back and run on real slices (batch 1 and
the sample batch); it is renamed to its final name only if every probability is within the
tolerance of eager PyTorch. ONNX files are checked with onnxruntime when it is installed.
"""
import copy
import importlib.util
import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from brainseg.utils.errors import UserError
from brainseg.utils.io import atomic_write

from .predictor import SlicePredictor

__all__ = ["ExportError", "ExportableSegmenter", "FormatCheck", "EXPORT_FORMATS", "export_model"]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("torchscript", "onnx")
FILE_NAMES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
INPUT_NAME, OUTPUT_NAME = "image", "tumour_probability"


class ExportError(UserError, RuntimeError):
    """A model that cannot be exported, or an export that disagrees with PyTorch."""


class ExportableSegmenter(nn.Module):
    """Raw (B, 3, H, W) intensities -> (B, 1, H, W) tumour probabilities."""

    def __init__(self, net: nn.Module, pixel_mean: torch.Tensor, pixel_std: torch.Tensor, temperature: float = 1.0):
        """
        Args:
            net: maps normalised (B, C, H, W) images to (B, 1, H, W) tumour logits.
            pixel_mean, pixel_std: per-channel statistics, shape (C, 1, 1).
            temperature: the logits are divided by it before the sigmoid (as the model does).
        """
        super().__init__()
        self.net = net
        self.temperature = float(temperature)
        self.register_buffer("pixel_mean", pixel_mean.detach().float().clone().view(1, -1, 1, 1))
        self.register_buffer("pixel_std", pixel_std.detach().float().clone().view(1, -1, 1, 1))

    @classmethod
    def from_model(cls, model: nn.Module) -> "ExportableSegmenter":
        """A CPU copy of a semantic model's net and normalisation (the model is not changed).

        Raises:
            ExportError: the model is not a one-logit semantic model (``BrainSegSemantic``).
        """
        if not all(hasattr(model, name) for name in ("net", "pixel_mean", "pixel_std")):
            raise ExportError(f"{type(model).__name__} cannot be exported: only semantic models with "
                              "model.net, pixel_mean and pixel_std (BrainSegSemantic) are supported")
        if getattr(model.net, "out_channels", 1) != 1:
            raise ExportError(f"{type(model.net).__name__} has {model.net.out_channels} output channels; "
                              "export needs one tumour logit")
        net = copy.deepcopy(model.net).to("cpu", memory_format=torch.contiguous_format).eval()
        temperature = getattr(model, "temperature", 1.0)
        return cls(net, model.pixel_mean.cpu(), model.pixel_std.cpu(), temperature).eval()

    @property
    def size_divisibility(self) -> int:
        return int(getattr(self.net, "size_divisibility", 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.to(torch.float32) - self.pixel_mean) / self.pixel_std
        return torch.sigmoid(self.net(x) / self.temperature)


@dataclass
class FormatCheck:
    """How one exported model compares with eager PyTorch."""

    format: str
    path: str
    max_abs_diff: Optional[float]  # None: not run (no runtime installed)
    verified: bool
    note: str = ""
    opset: Optional[int] = None  # ONNX: the opset actually written


def _export_torchscript(module: nn.Module, example: torch.Tensor, path: Path, **_) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and tracer warnings: the result is checked below
        traced = torch.jit.trace(module, example, check_trace=False)
    traced.save(str(path))


def _export_onnx(module: nn.Module, example: torch.Tensor, path: Path, *, opset: int, dynamo: bool) -> None:
    kwargs = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset, dynamo=dynamo)
    if dynamo:
        kwargs.update(dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False)
    else:
        kwargs.update(dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    onnxscript_logger = logging.getLogger("onnxscript")
    level = onnxscript_logger.level
    onnxscript_logger.setLevel(logging.ERROR)  # the opset it could not convert to is reported below
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), **kwargs)
    finally:
        onnxscript_logger.setLevel(level)


def _onnx_opset(path: Path) -> Optional[int]:
    """The default-domain opset of an ONNX file (None if the onnx package is missing)."""
    if importlib.util.find_spec("onnx") is None:
        return None
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _torchscript_runner(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still the TorchScript loader
        loaded = torch.jit.load(str(path), map_location="cpu").eval()

    def run(images: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return loaded(images).numpy()

    return run


def _onnx_runner(path: Path) -> Optional[Callable[[torch.Tensor], np.ndarray]]:
    """An onnxruntime session, or None when onnxruntime is not installed."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {INPUT_NAME: images.float().numpy()})[0]


_EXPORTERS = {"torchscript": (_export_torchscript, _torchscript_runner), "onnx": (_export_onnx, _onnx_runner)}
# the input dtypes each format is checked with (TorchScript casts inside; ONNX input is float32)
_CHECKED_DTYPES = {"torchscript": (torch.float32, torch.uint8), "onnx": (torch.float32,)}


def _max_abs_diff(run: Callable[[torch.Tensor], np.ndarray], batches: Sequence[torch.Tensor],
                  references: Sequence[np.ndarray], dtypes: Sequence[torch.dtype]) -> float:
    diff = 0.0
    for images, reference in zip(batches, references):
        for dtype in dtypes:
            output = run(images.to(dtype))
            if output.shape != reference.shape:
                return float("inf")
            diff = max(diff, float(np.abs(output - reference).max()))
    return diff


def _check_model_agreement(model: nn.Module, module: ExportableSegmenter, samples: np.ndarray,
                           tolerance: float) -> float:
    """Max difference between the export module and the model's own eval pipeline."""
    predictor = SlicePredictor(model, precision="fp32")  # the exported graphs are fp32
    expected = torch.stack(predictor(list(samples.transpose(0, 2, 3, 1))))
    with torch.inference_mode():
        got = module(torch.from_numpy(samples))[:, 0]
    diff = float((got - expected.to(got.device)).abs().max())
    if diff > tolerance:
        raise ExportError(f"the export module disagrees with {type(model).__name__} itself "
                          f"(max abs diff {diff:.2e} > {tolerance:g}); nothing written")
    return diff


def export_model(
    model: nn.Module,
    out_dir: Union[str, os.PathLike],
    samples: np.ndarray,
    *,
    formats: Sequence[str] = EXPORT_FORMATS,
    opset: int = 17,
    dynamo: bool = False,
    tolerance: float = 1e-4,
    metadata: Optional[Dict] = None,
) -> List[FormatCheck]:
    """Export ``model``, check each file against eager PyTorch, then move the files in place.

    Args:
        model: a semantic model (``BrainSegSemantic``) with its trained weights.
        out_dir: destination folder (created).
        samples: (N, 3, H, W) uint8 slices; H, W fix the exported size. Checked with
            batch 1 (the first slice) and batch N.
        formats: any of "torchscript", "onnx".
        opset: ONNX opset (>= 17). torch's ``torch.export``-based exporter starts at 18 and
            may not convert down; the opset actually written is in the returned checks.
        dynamo: use torch's ``torch.export``-based ONNX exporter; default: the TorchScript-based
            one (faster, writes exactly ``opset``).
        tolerance: maximum allowed absolute difference of probabilities.
        metadata: extra fields for ``export.json``.

    Returns:
        one :class:`FormatCheck` per format.

    Raises:
        ExportError: unsupported model, bad size or format, or a disagreeing export (then no
            model file is written).
    """
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown or not formats:
        raise ExportError(f"unknown export format(s) {unknown}; choose from {list(EXPORT_FORMATS)}")
    if opset < 17:
        raise ExportError(f"ONNX opset must be >= 17; got {opset}")
    if samples.ndim != 4 or samples.shape[1] != 3 or samples.dtype != np.uint8:
        raise ExportError(f"samples must be uint8 (N, 3, H, W); got {samples.dtype} {samples.shape}")
    module = ExportableSegmenter.from_model(model)
    height, width = samples.shape[-2:]
    stride = module.size_divisibility
    if height % stride or width % stride:
        raise ExportError(f"export size {height}x{width} must be a multiple of the net's stride {stride}")
    model_diff = _check_model_agreement(model, module, samples, tolerance)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    batches = [torch.from_numpy(samples[:1]), torch.from_numpy(samples)]
    with torch.inference_mode():
        references = [module(b).numpy() for b in batches]
    checks, temporaries = [], {}
    try:
        for fmt in formats:
            export, runner = _EXPORTERS[fmt]
            final = out_dir / FILE_NAMES[fmt]
            tmp = temporaries[fmt] = out_dir / f".tmp{os.getpid()}-{final.name}"
            export(module, batches[-1].float(), tmp, opset=opset, dynamo=dynamo)
            written_opset = _onnx_opset(tmp) if fmt == "onnx" else None
            run = runner(tmp)
            if run is None:
                checks.append(FormatCheck(fmt, str(final), None, False, "onnxruntime not installed: not verified",
                                          written_opset))
                continue
            diff = _max_abs_diff(run, batches, references, _CHECKED_DTYPES[fmt])
            if not diff <= tolerance:
                raise ExportError(f"{fmt} export disagrees with PyTorch (max abs diff {diff:.2e} > {tolerance:g} "
                                  f"on batches of 1 and {len(samples)}); nothing written")
            checks.append(FormatCheck(fmt, str(final), diff, True, opset=written_opset))
        for check in checks:
            os.replace(temporaries[check.format], check.path)
    finally:
        for tmp in temporaries.values():
            tmp.unlink(missing_ok=True)
    report = {**(metadata or {}), "input": {"name": INPUT_NAME, "shape": ["batch", 3, int(height), int(width)],
                                            "values": "raw intensities 0..255 (uint8 or float)"},
              "output": {"name": OUTPUT_NAME, "shape": ["batch", 1, int(height), int(width)]},
              "requested_opset": opset, "tolerance": tolerance, "export_module_vs_model_max_abs_diff": model_diff,
              "formats": [asdict(c) for c in checks]}
    atomic_write(out_dir / "export.json", json.dumps(report, indent=2))
    return checks
