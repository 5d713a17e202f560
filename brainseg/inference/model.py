"""Build a model from a LazyConfig and load trained weights that must fit it exactly.

detectron2's checkpointer only logs missing, unexpected or wrongly-shaped keys and carries on
with partly random weights: fine for fine-tuning, wrong for inference. Here any mismatch is an
error naming the weights file.

A checkpoint may also hold what was fitted on the validation split after training: the
``mask_threshold`` (``train.choose_threshold``) and the ``temperature`` (``train.fit_temperature``);
:func:`restore_calibration` applies them, overriding the config.
"""
import logging
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from detectron2.config import instantiate
from omegaconf import DictConfig
from torch import nn

import brainseg.modeling  # noqa: F401  (registers the meta-architectures)
from brainseg.utils.checkpoint import BrainSegCheckpointer
from brainseg.utils.config import load_config, resolve_device
from brainseg.utils.errors import CheckpointError, ConfigError

__all__ = ["CALIBRATION_KEYS", "StrictCheckpointer", "build_inference_model", "restore_calibration",
           "set_calibration"]

logger = logging.getLogger("brainseg")

# checkpoint entries fitted on the validation split, each the name of a model attribute (and of
# the config's model.<name>, when it has one)
CALIBRATION_KEYS = ("mask_threshold", "temperature")


def _describe_keys(keys: List[str], what: str, limit: int = 3) -> str:
    shown = ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")
    return f"{len(keys)} {what} ({shown})"


def set_calibration(model: nn.Module, cfg: Optional[DictConfig] = None, **values: float) -> None:
    """Set ``mask_threshold`` and/or ``temperature`` of ``model`` (DDP-wrapped or not) and, for the
    keys its ``model`` node has, of ``cfg`` (the evaluator's threshold interpolates from it).

    Raises:
        ValueError: a key that is not in :data:`CALIBRATION_KEYS`.
    """
    unknown = sorted(set(values) - set(CALIBRATION_KEYS))
    if unknown:
        raise ValueError(f"unknown calibration keys {unknown}; expected some of {CALIBRATION_KEYS}")
    for key, value in values.items():
        setattr(getattr(model, "module", model), key, float(value))
        if cfg is not None and "model" in cfg and key in cfg.model:
            cfg.model[key] = float(value)


def restore_calibration(
    model: nn.Module, checkpoint: Mapping[str, Any], cfg: Optional[DictConfig] = None, *, source: str = ""
) -> Dict[str, float]:
    """Apply the :data:`CALIBRATION_KEYS` stored in a loaded checkpoint (see :func:`set_calibration`).

    Args:
        model: the model the checkpoint was loaded into.
        checkpoint: what the checkpointer's ``load`` returned (the entries besides the weights).
        cfg: the config, updated too.
        source: the checkpoint's name, for the log.

    Returns:
        ``{key: value}`` of what was applied (empty when the checkpoint holds none).
    """
    values = {key: float(checkpoint[key]) for key in CALIBRATION_KEYS if key in checkpoint}
    if values:
        set_calibration(model, cfg, **values)
        logger.info(f"From the checkpoint {source} (fitted on the validation split): "
                    + ", ".join(f"{key} {value:g}" for key, value in values.items()))
    return values


class StrictCheckpointer(BrainSegCheckpointer):
    """A :class:`BrainSegCheckpointer` that loads model weights only, and refuses checkpoints
    whose keys or shapes differ from the model's."""

    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> dict:
        """Load the model weights of ``path``.

        Raises:
            CheckpointError: missing or unreadable file, or a checkpoint that does not fit.
        """
        if not path or not os.path.isfile(path):
            raise CheckpointError(f"weights file not found: {path}")
        self._path = path
        return super().load(path, checkpointables=[] if checkpointables is None else checkpointables)

    def _load_model(self, checkpoint: dict):
        incompatible = super()._load_model(checkpoint)
        problems = []
        if incompatible.missing_keys:
            problems.append(_describe_keys(incompatible.missing_keys, "keys missing from the checkpoint"))
        if incompatible.unexpected_keys:
            problems.append(_describe_keys(incompatible.unexpected_keys, "keys the model does not have"))
        if incompatible.incorrect_shapes:
            key, in_file, in_model = incompatible.incorrect_shapes[0]
            problems.append(f"{len(incompatible.incorrect_shapes)} shape mismatches (e.g. {key}: "
                            f"{tuple(in_file)} in the file, {tuple(in_model)} in the model)")
        if problems:
            raise CheckpointError(f"weights {self._path} do not match the model of the config: " + "; ".join(problems))
        return incompatible


def build_inference_model(
    config_file: str,
    weights: str,
    overrides: Iterable[str] = (),
    *,
    device: Optional[str] = None,
) -> Tuple[nn.Module, DictConfig]:
    """Build ``cfg.model`` from a LazyConfig, load ``weights`` strictly and switch to eval mode.

    Args:
        config_file: a LazyConfig ``.py`` file (``configs/lgg/*.py``, ``projects/MaskDINO/configs/*.py``).
        weights: a checkpoint written by ``tools/train_net.py`` (``model_best.pth`` ...); its stored
            ``mask_threshold`` and ``temperature``, if any, replace the config's values.
        overrides: ``key=value`` config overrides (strict, as in ``tools/train_net.py``).
        device: "cpu", "cuda", or None for ``train.device`` of the config ("auto" by default).

    Returns:
        (model in eval mode on its device, the config).

    Raises:
        ConfigError: missing config file, bad override, no ``model`` in the config.
        CheckpointError: missing/unreadable weights, or weights that do not fit the model.
    """
    cfg = load_config(config_file, overrides)
    if "model" not in cfg:
        raise ConfigError(f"config {config_file} has no 'model'")
    train = cfg.get("train", {})
    if device is None:
        device = train.get("device", "auto")
    model = instantiate(cfg.model)
    checkpoint = StrictCheckpointer(model, allow_unsafe_load=train.get("allow_unsafe_checkpoint", False)).load(weights)
    restore_calibration(model, checkpoint, cfg, source=weights)
    model.to(resolve_device(device))
    model.eval()
    return model, cfg
