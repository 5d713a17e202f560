"""The compiled extension ``brainseg._C`` (C++/CUDA kernels), loaded once for every layer using it."""
import contextlib
import importlib
from types import ModuleType
from typing import Iterator, Optional, Tuple

import torch

__all__ = [
    "C_EXTENSION",
    "C_IMPORT_ERROR",
    "FUSED_CPU_DTYPES",
    "missing_extension_message",
    "fused_cpu_kernel_serves",
    "pytorch_compositions",
    "grad_wanted",
    "as_conv_under_autocast",
]


def _load_extension() -> Tuple[Optional[ModuleType], Optional[str]]:
    try:
        return importlib.import_module("brainseg._C"), None
    except ImportError as e:  # not built, or built against another torch
        return None, str(e)


# the extension module, or None when it cannot be imported (then C_IMPORT_ERROR says why)
C_EXTENSION, C_IMPORT_ERROR = _load_extension()


def missing_extension_message() -> Optional[str]:
    """One line saying how to build ``brainseg._C`` when it cannot be imported; None when it can."""
    if C_EXTENSION is not None:
        return None
    return f"brainseg._C is not built ({C_IMPORT_ERROR}): run `make install` first"


# dtypes the fused channels-last CPU kernels (upsampling, pooling) are compiled for
FUSED_CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


_compositions_only = False


@contextlib.contextmanager
def pytorch_compositions() -> Iterator[None]:
    """Within this context the fused CPU kernels do not serve: every layer runs its PyTorch
    composition, the same values to rounding. For tools that see only PyTorch's operators, such
    as ``torch.utils.flop_counter.FlopCounterMode`` (a convolution inside a C++ kernel would not
    be counted). Not thread-safe: it sets a process-wide switch."""
    global _compositions_only
    previous, _compositions_only = _compositions_only, True
    try:
        yield
    finally:
        _compositions_only = previous


def fused_cpu_kernel_serves(x: torch.Tensor) -> bool:
    """Whether a fused channels-last CPU kernel of ``brainseg._C`` can take ``x`` (else the layer
    runs its PyTorch composition): the extension is built, x is a channels-last contiguous 4-D CPU
    tensor of a :data:`FUSED_CPU_DTYPES` dtype, and no graph is being traced or exported
    (TorchScript, ONNX: they cannot hold the kernel) or compiled (``torch.compile`` fuses the
    composition itself; the kernel would split its graph), and not within
    :func:`pytorch_compositions`."""
    return (
        C_EXTENSION is not None
        and not _compositions_only
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not torch.onnx.is_in_onnx_export()
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in FUSED_CPU_DTYPES
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def grad_wanted(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether autograd would record an operation on these tensors (Nones ignored): gradients are
    enabled and one of them requires grad. Inference-only kernels run only when it is False."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def as_conv_under_autocast(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """The input, weight and bias a convolution would compute with: under autocast all three cast
    to the autocast dtype (for fused kernels that end or start with a convolution), else unchanged."""
    if not torch.is_autocast_enabled(x.device.type):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(x.device.type)
    return x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
