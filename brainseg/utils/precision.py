"""Numerical precision of forward passes: fp32, or autocast to bf16 / fp16, chosen by the machine.

``"auto"`` picks what is fast where it runs:

* CUDA: fp16 autocast with a gradient scaler (the classic AMP);
* CPU with native bf16 (Linux ``/proc/cpuinfo`` flag ``amx_bf16`` or ``avx512_bf16``, e.g.
  Intel Xeon Sapphire Rapids, AMD Zen 4): bf16 autocast. Measured on an AMX-BF16 Xeon, the
  UNeXt model runs 1.6x faster than in fp32;
* any other CPU (e.g. AVX2-only AMD EPYC, where bf16 is emulated and slower than fp32): fp32.

Kernels held below bf16 count as no native bf16, so ``"auto"`` stays fp32 when
``ONEDNN_MAX_CPU_ISA`` (or its old name ``DNNL_MAX_CPU_ISA``) names an ISA without bf16
(``AVX2``, ``AVX512_CORE``, ``AVX512_CORE_VNNI``, ...), or when ``ATEN_CPU_CAPABILITY`` holds
ATen's kernels below AVX-512 (e.g. ``ATEN_CPU_CAPABILITY=avx2``): that is how one runs the AVX2
kernel path on an AMX machine. ``torch.backends.cpu.get_cpu_capability()`` alone cannot detect
bf16 (it reports the vector width: ``"AVX512"`` on AVX-512 CPUs without bf16 too), so it is only
used for that check. Without ``/proc/cpuinfo`` (not Linux) the flags come from
``torch.cpu.get_capabilities()``. Other architectures (ARM) get fp32 from ``"auto"``.

Explicit values win over ``"auto"``: ``"fp32"``, ``"bf16"`` (on a CPU without native bf16 it
runs, emulated and slow, with a warning) and ``"fp16"`` (CUDA only).

Example::

    policy = resolve_precision("auto", "cpu")
    outputs = policy.run(model, inputs)  # under autocast; fp16/bf16 outputs back in float32
"""
import contextlib
import dataclasses
import logging
import os
from typing import Any, Callable, ContextManager, Optional, Tuple, Union

import torch
from torch import nn

from .errors import ConfigError

__all__ = ["PRECISIONS", "PrecisionPolicy", "resolve_precision", "cpu_supports_native_bf16", "native_bf16_flags",
           "to_float32"]

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# /proc/cpuinfo flags of instructions computing in bf16, best first, and how to name them
_BF16_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}
_ONEDNN_ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def to_float32(outputs: Any) -> Any:
    """``outputs`` with every float16/bfloat16 tensor cast to float32 (autograd follows the cast).

    Handles tensors, dicts, lists and tuples, and (by duck typing, in place) objects with fields
    such as detectron2's ``Instances`` (``get_fields``/``set``) or a ``tensor`` attribute such as
    ``Boxes``; anything else is returned as is.

    Args:
        outputs: what a model returned.

    Returns:
        the same structure, low-precision floats as float32.
    """
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.dtype in _LOW_PRECISION else outputs
    if isinstance(outputs, dict):
        return {key: to_float32(value) for key, value in outputs.items()}
    if type(outputs) in (list, tuple):
        return type(outputs)(to_float32(value) for value in outputs)
    if callable(getattr(outputs, "get_fields", None)) and callable(getattr(outputs, "set", None)):
        for name, value in list(outputs.get_fields().items()):
            outputs.set(name, to_float32(value))
    elif isinstance(getattr(outputs, "tensor", None), torch.Tensor):
        outputs.tensor = to_float32(outputs.tensor)
    return outputs


@dataclasses.dataclass(frozen=True)
class PrecisionPolicy:
    """The precision forward passes run in on one device type.

    Attributes:
        name: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        device_type: ``"cpu"`` or ``"cuda"`` (the type of the device the model runs on).
        dtype: the autocast dtype; None for fp32 (no autocast).
        reason: why this precision was chosen, for the log (e.g. ``"CPU has AMX-BF16"``).
    """

    name: str
    device_type: str
    dtype: Optional[torch.dtype]
    reason: str = ""

    @property
    def enabled(self) -> bool:
        """Whether forward passes run under autocast."""
        return self.dtype is not None

    @property
    def use_grad_scaler(self) -> bool:
        """Whether training needs a gradient scaler (fp16: its gradients underflow without one)."""
        return self.dtype == torch.float16

    def autocast(self) -> ContextManager:
        """``torch.autocast`` to :attr:`dtype` on :attr:`device_type`; a no-op context for fp32."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def run(self, function: Callable, *args, **kwargs) -> Any:
        """``function(*args, **kwargs)`` under :meth:`autocast`, its fp16/bf16 outputs cast back to
        float32 (:func:`to_float32`), so that losses and metrics are computed in float32."""
        with self.autocast():
            outputs = function(*args, **kwargs)
        return to_float32(outputs) if self.enabled else outputs

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` itself for fp32; else a module whose forward is :meth:`run` of ``module``
        (same training mode), e.g. for detectron2's ``inference_on_dataset``."""
        return _PrecisionModule(module, self) if self.enabled else module

    def describe(self) -> str:
        """One line for the log, e.g. ``"bf16 autocast (CPU has AMX-BF16)"``."""
        mode = self.name if not self.enabled else f"{self.name} autocast" + (
            " + GradScaler" if self.use_grad_scaler else "")
        return f"{mode} ({self.reason})" if self.reason else mode


def native_bf16_flags(cpu_flags: str) -> Tuple[str, ...]:
    """The bf16 instruction-set flags (``amx_bf16``, ``avx512_bf16``) present in ``cpu_flags``.

    Args:
        cpu_flags: whitespace-separated CPU flags, e.g. the ``flags`` line of ``/proc/cpuinfo``.

    Returns:
        the flags found, best first (empty: no native bf16).
    """
    words = set(cpu_flags.split())
    return tuple(flag for flag in _BF16_FLAGS if flag in words)


def _read_cpu_flags() -> str:
    """The CPU's flags: the first ``flags`` line of ``/proc/cpuinfo``, else the flags
    ``torch.cpu.get_capabilities()`` reports as present ("" when neither is available)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return value
    except OSError:
        pass
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is None:
        return ""
    return " ".join(name for name, present in get_capabilities().items() if present is True)


def _onednn_isa_has_bf16(isa: str) -> bool:
    """Whether oneDNN held to ``isa`` (a ``ONEDNN_MAX_CPU_ISA`` value) may use bf16 instructions."""
    isa = isa.strip().upper()
    return isa in ("ALL", "DEFAULT") or "BF16" in isa or "AMX" in isa or isa.startswith("AVX10")


def _native_bf16() -> Tuple[bool, str]:
    """Whether bf16 runs natively on this CPU with the kernels allowed, and why (for the log)."""
    flags = native_bf16_flags(_read_cpu_flags())
    if not flags:
        return False, "no native bf16 on this CPU"
    for name in _ONEDNN_ISA_ENV:
        isa = os.environ.get(name)
        if isa:
            if not _onednn_isa_has_bf16(isa):
                return False, f"{name}={isa} holds oneDNN to an ISA without bf16"
            break
    aten = os.environ.get("ATEN_CPU_CAPABILITY")
    if aten and not torch.backends.cpu.get_cpu_capability().upper().startswith("AVX512"):
        return False, f"ATEN_CPU_CAPABILITY={aten} holds ATen's kernels below AVX-512"
    return True, f"CPU has {_BF16_FLAGS[flags[0]]}"


def cpu_supports_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX-BF16 or AVX512-BF16) with the kernels the
    environment allows (``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``: see the module doc)."""
    return _native_bf16()[0]


def resolve_precision(precision: str, device: Union[str, torch.device]) -> PrecisionPolicy:
    """The precision policy of ``precision`` on ``device``.

    Args:
        precision: ``"auto"`` (fp16 on CUDA, bf16 on a CPU with native bf16, else fp32),
            ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        device: the device the model runs on (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a
            ``torch.device``).

    Returns:
        the :class:`PrecisionPolicy`.

    Raises:
        ConfigError: ``precision`` is not one of :data:`PRECISIONS`, asks for fp16 on a CPU, or
            for mixed precision on a device type other than cpu and cuda.
    """
    name = precision.strip().lower() if isinstance(precision, str) else precision
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    device_type = torch.device(device).type
    if name == "auto":
        if device_type == "cuda":
            return PrecisionPolicy("fp16", device_type, torch.float16, "auto on CUDA")
        native, reason = _native_bf16() if device_type == "cpu" else (False, f"auto on {device_type}")
        return PrecisionPolicy("bf16", device_type, torch.bfloat16, reason) if native else \
            PrecisionPolicy("fp32", device_type, None, reason)
    if name != "fp32" and device_type not in ("cpu", "cuda"):
        raise ConfigError(f"precision {precision!r} on device type {device_type!r}: mixed precision runs on "
                          "cpu (bf16) and cuda (fp16, bf16) only")
    if name == "fp16" and device_type == "cpu":
        raise ConfigError(f"precision {precision!r} is for CUDA devices; on the CPU use 'bf16' or 'auto'")
    reason = "explicit"
    if name == "bf16" and device_type == "cpu":
        native, why = _native_bf16()
        if not native:
            logger.warning(f"precision 'bf16' without native bf16 here ({why}): bf16 is emulated and "
                           "usually slower than fp32; 'auto' would choose fp32")
            reason = f"explicit; emulated: {why}"
    return PrecisionPolicy(name, device_type, _DTYPES[name], reason)


class _PrecisionModule(nn.Module):
    """``module`` run under a :class:`PrecisionPolicy` (see :meth:`PrecisionPolicy.wrap`)."""

    def __init__(self, module: nn.Module, policy: PrecisionPolicy):
        super().__init__()
        self.module = module
        self.policy = policy
        self.train(module.training)

    def forward(self, *args, **kwargs):
        return self.policy.run(self.module, *args, **kwargs)
