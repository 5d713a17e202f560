"""The brainseg registry of segmentation nets and a builder for it."""

from typing import Any

from detectron2.utils.registry import Registry
from torch import nn

__all__ = ["NET_REGISTRY", "build_net"]

NET_REGISTRY = Registry("BRAINSEG_NET")
NET_REGISTRY.__doc__ = """
Registry for dense segmentation nets: modules mapping a normalised image batch (B, C, H, W)
to per-pixel logits (B, K, H, W) of the same spatial size. A registered class can be built by name
with :func:`build_net` or used directly with LazyCall.
"""


def build_net(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered net by its name.

    Args:
        name: the registered class name, e.g. ``"UNeXt"``.
        **kwargs: constructor arguments of that class.

    Returns:
        The constructed net.
    """
    if name not in NET_REGISTRY:
        known = ", ".join(sorted(name for name, _ in NET_REGISTRY))
        raise KeyError(f"Unknown brainseg net {name!r}; registered nets: {known}")
    return NET_REGISTRY.get(name)(**kwargs)
