"""Peer segmentation nets for ``tools/benchmark.py --peers``: what a user would pick instead of
brainseg, built the way their documentation shows, with one tumour logit per pixel.

* ``smp_unet``: ``segmentation_models_pytorch.Unet`` with a ResNet-34 encoder (no pretrained
  weights), 3 input channels, 1 class;
* ``monai_basicunet``: MONAI's ``BasicUNet`` (2D, 3 input channels, 1 output channel);
* the reference UNeXt (Valanarasu & Patel; github.com/jeya-maria-jose/UNeXt-pytorch), imported
  from a local checkout with :func:`load_reference_unext`.

The peers are benchmark-only, not requirements of brainseg: a missing package raises
:class:`PeerUnavailableError` with one line saying what to install.
"""

import importlib.util
import sys
from pathlib import Path
from typing import Callable, Dict, Union

from torch import nn

from brainseg.utils.errors import ConfigError, UserError

__all__ = [
    "PEERS",
    "PeerUnavailableError",
    "build_smp_unet",
    "build_monai_basicunet",
    "load_reference_unext",
]


class PeerUnavailableError(UserError, ImportError):
    """A peer cannot be built here: a package it needs is not installed."""


def _not_installed(module: str, pip_name: str, needed_by: str = "") -> PeerUnavailableError:
    by = f" (needed by {needed_by})" if needed_by else ""
    return PeerUnavailableError(f"{module} is not installed{by}: pip install {pip_name}")


def build_smp_unet() -> nn.Module:
    """``segmentation_models_pytorch.Unet``: ResNet-34 encoder without pretrained weights,
    3 input channels, 1 logit channel.

    Raises:
        PeerUnavailableError: segmentation_models_pytorch is not installed.
    """
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise _not_installed("segmentation_models_pytorch", "segmentation-models-pytorch") from None
    return smp.Unet(encoder_name="resnet34", encoder_weights=None, in_channels=3, classes=1)


def build_monai_basicunet() -> nn.Module:
    """MONAI's ``BasicUNet(spatial_dims=2, in_channels=3, out_channels=1)`` (default widths).

    Raises:
        PeerUnavailableError: monai is not installed.
    """
    try:
        from monai.networks.nets import BasicUNet
    except ImportError:
        raise _not_installed("monai", "monai") from None
    return BasicUNet(spatial_dims=2, in_channels=3, out_channels=1)


# name (as given to --peers) -> builder of the net, a fresh instance per call
PEERS: Dict[str, Callable[[], nn.Module]] = {
    "smp_unet": build_smp_unet,
    "monai_basicunet": build_monai_basicunet,
}


def load_reference_unext(path: Union[str, Path], *, img_size: int = 256) -> nn.Module:
    """The reference UNeXt, ``UNext(num_classes=1, input_channels=3, deep_supervision=False,
    img_size=img_size)``, from the ``archs.py`` of a local checkout of its repository.

    ``archs.py`` is imported as a file (under the module name ``unext_reference_archs``); the
    checkout is on ``sys.path`` only during the import, for its own modules (``from utils import
    *``). Nothing is copied into brainseg.

    Args:
        path: the checkout's folder (the one holding ``archs.py``).
        img_size: the input size (the reference stores it in its patch embeddings).

    Returns:
        A fresh ``UNext`` instance.

    Raises:
        ConfigError: ``path`` has no ``archs.py``, or that file defines no ``UNext``.
        PeerUnavailableError: a package ``archs.py`` imports is not installed (e.g. timm, mmcv).
    """
    folder = Path(path).expanduser()
    archs = folder / "archs.py"
    if not archs.is_file():
        raise ConfigError(
            f"--reference-unext: no archs.py in {folder}; give the folder of a checkout of "
            "https://github.com/jeya-maria-jose/UNeXt-pytorch"
        )
    spec = importlib.util.spec_from_file_location("unext_reference_archs", archs)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as e:
        package = (e.name or str(e)).split(".")[0]
        raise _not_installed(package, package, f"the reference UNeXt {archs}") from None
    finally:
        sys.path.remove(str(folder))
    if not hasattr(module, "UNext"):
        raise ConfigError(f"--reference-unext: {archs} defines no UNext class")
    return module.UNext(num_classes=1, input_channels=3, deep_supervision=False, img_size=img_size)
