"""Loading LazyConfig files with strict command-line overrides."""
import difflib
import inspect
from typing import Iterable, List, Optional

import torch
from detectron2.config import LazyConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError

__all__ = ["load_config", "apply_strict_overrides", "resolve_device"]

_MISSING = object()


def _accepts_keyword(target, name: str) -> bool:
    """Whether the callable ``target`` of a LazyCall node takes keyword ``name``."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _check_key(cfg: DictConfig, key: str) -> None:
    """Raise :class:`ConfigError` unless ``key`` exists, or names an argument the LazyCall
    target of its parent node accepts (so unset keyword arguments can still be set)."""
    if OmegaConf.select(cfg, key, default=_MISSING) is not _MISSING:
        return
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    if isinstance(parent, DictConfig) and "_target_" in parent:
        target = parent._target_
        if isinstance(target, str):
            from detectron2.utils.registry import locate

            target = locate(target)
        if _accepts_keyword(target, leaf):
            return
    known = _all_keys(cfg)
    hint = difflib.get_close_matches(key, known, n=1)
    raise ConfigError(f"unknown config key '{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else ""))


def _all_keys(cfg, prefix: str = "") -> List[str]:
    keys = []
    if isinstance(cfg, DictConfig):
        for k in cfg.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            keys.extend(_all_keys(cfg._get_node(k), full + "."))
    return keys


def apply_strict_overrides(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Apply ``key=value`` overrides (hydra syntax), refusing keys that do not exist; hydra's
    ``+key=value`` adds a key that does not exist yet (e.g. an option of a plain dict node such
    as ``+dataloader.evaluator.lgg_options.largest_component=True``).

    Args:
        cfg: the loaded LazyConfig.
        overrides: strings like ``train.max_iter=100``.

    Returns:
        the same config, updated in place.

    Raises:
        ConfigError: a malformed override or an unknown key (with a close match when there is one).
    """
    overrides = list(overrides)
    for text in overrides:
        if "=" not in text:
            raise ConfigError(f"override '{text}' is not of the form key=value")
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:  # hydra raises its own OverrideParseException
        raise ConfigError(f"cannot parse overrides {overrides}: {e}") from None
    for override in parsed:
        key = override.key_or_group
        if override.is_add():
            if OmegaConf.select(cfg, key, default=_MISSING) is not _MISSING:
                raise ConfigError(f"config key '{key}' exists already: set it without the '+'")
        else:
            _check_key(cfg, key)
        OmegaConf.update(cfg, key, override.value(), merge=True)
    return cfg


def load_config(config_file: str, overrides: Optional[Iterable[str]] = None) -> DictConfig:
    """Load a LazyConfig python file and apply strict overrides.

    Config files are python and are executed: load only files you trust.

    Raises:
        ConfigError: missing file or bad override.
    """
    try:
        cfg = LazyConfig.load(config_file)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {config_file}") from None
    return apply_strict_overrides(cfg, overrides or [])


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` picks cuda when available, else cpu; an unavailable cuda is an error.

    Raises:
        ConfigError: ``device`` asks for CUDA on a machine without it.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={device} but no CUDA device is available")
    return device
