"""brainseg's LazyConfig files by name, for configs outside ``configs/`` (projects, your own):
like ``detectron2.model_zoo.get_config``, each call loads a fresh copy, so editing what it
returns changes nothing elsewhere::

    from brainseg.model_zoo import get_config
    dataloader = get_config("common/data.py").dataloader
    model = get_config("lgg/unext.py").model

The configs live in the repository's ``configs/`` folder next to the package (brainseg is
installed from a source checkout in editable mode, as ``make install`` does).
"""
from pathlib import Path

from detectron2.config import LazyConfig
from omegaconf import DictConfig

from .utils.errors import ConfigError

__all__ = ["CONFIGS_DIR", "get_config_file", "get_config"]

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"


def get_config_file(name: str) -> Path:
    """The path of ``configs/<name>``, e.g. ``get_config_file("lgg/unext.py")``.

    Raises:
        ConfigError: no such config file.
    """
    path = CONFIGS_DIR / name
    if not path.is_file():
        known = sorted(str(p.relative_to(CONFIGS_DIR)) for p in CONFIGS_DIR.rglob("*.py") if p.name != "__init__.py")
        raise ConfigError(f"no config '{name}' in {CONFIGS_DIR}; known: {', '.join(known)}")
    return path


def get_config(name: str) -> DictConfig:
    """A fresh ``LazyConfig.load`` of ``configs/<name>``."""
    return LazyConfig.load(str(get_config_file(name)))
