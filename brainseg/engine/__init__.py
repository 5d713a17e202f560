"""Thin additions to detectron2's engine: strict config overrides, the trainer, hooks."""
from .checkpoint import BrainSegCheckpointer, CheckpointError
from .config import ConfigError, apply_strict_overrides, load_config, resolve_device
from .hooks import BestCheckpointAndEarlyStop, RNGStateHook
from .trainer import BrainSegTrainer, NonFiniteLossError

__all__ = ["BrainSegCheckpointer", "CheckpointError", "ConfigError", "apply_strict_overrides", "load_config", "resolve_device", "BestCheckpointAndEarlyStop", "RNGStateHook",
           "BrainSegTrainer", "NonFiniteLossError"]
