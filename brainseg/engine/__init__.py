"""The top of the library: training loop, hooks, checkpoints, config loading and the
train / evaluate functions behind ``tools/train_net.py`` (:mod:`brainseg.engine.launch`)."""
from ..utils.checkpoint import BrainSegCheckpointer
from ..utils.config import apply_strict_overrides, load_config, resolve_device
from ..utils.errors import CheckpointError, ConfigError
from .defaults import TRAIN_DEFAULTS, with_train_defaults
from .hooks import BestCheckpointAndEarlyStop, RNGStateHook
from .trainer import BrainSegTrainer, NonFiniteLossError

__all__ = [
    "BrainSegCheckpointer",
    "CheckpointError",
    "ConfigError",
    "apply_strict_overrides",
    "load_config",
    "resolve_device",
    "TRAIN_DEFAULTS",
    "with_train_defaults",
    "BestCheckpointAndEarlyStop",
    "RNGStateHook",
    "BrainSegTrainer",
    "NonFiniteLossError",
]
