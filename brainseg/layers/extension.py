"""The compiled extension ``brainseg._C`` (C++/CUDA kernels), loaded once for every layer using it."""
import importlib
from types import ModuleType
from typing import Optional, Tuple

__all__ = ["C_EXTENSION", "C_IMPORT_ERROR", "missing_extension_message"]


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
