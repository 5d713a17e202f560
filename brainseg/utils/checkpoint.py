"""Checkpoints written atomically and loaded safely.

* Saving goes through a temporary file, fsync and rename, and ``last_checkpoint`` is only
  updated after the checkpoint is complete: a crash mid-write never damages the last good one.
* Loading uses ``torch.load(weights_only=True)``, which cannot execute code from the file.
  Pickle-based formats (``.pkl`` model-zoo files, full-object torch files) need
  ``allow_unsafe_load=True`` (``train.allow_unsafe_checkpoint=True`` on the command line):
  only for files you trust.
"""
import os
from typing import Any, Dict

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .errors import CheckpointError
from .io import atomic_write

__all__ = ["BrainSegCheckpointer", "add_to_checkpoint"]


class BrainSegCheckpointer(DetectionCheckpointer):
    """detectron2's DetectionCheckpointer with atomic saves and safe loading."""

    def __init__(self, model, save_dir: str = "", *, allow_unsafe_load: bool = False, **checkpointables):
        """
        Args:
            model, save_dir, checkpointables: as for DetectionCheckpointer.
            allow_unsafe_load: permit pickle-based files (they can run arbitrary code).
        """
        super().__init__(model, save_dir, **checkpointables)
        self.allow_unsafe_load = allow_unsafe_load

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if not os.path.isfile(filename):
            raise CheckpointError(f"checkpoint not found: {filename}")
        if filename.endswith(".pkl") and not self.allow_unsafe_load:
            raise CheckpointError(f"refusing to unpickle {filename}: pickle files can run code; "
                                  "pass train.allow_unsafe_checkpoint=True if you trust it")
        return super()._load_file(filename)

    def _torch_load(self, filename: str) -> Dict[str, Any]:
        try:
            return torch.load(filename, map_location="cpu", weights_only=not self.allow_unsafe_load)
        except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError...
            hint = "" if self.allow_unsafe_load else (
                " (loaded with weights_only=True; pass train.allow_unsafe_checkpoint=True for a trusted "
                "file holding other objects)")
            raise CheckpointError(f"cannot load checkpoint {filename}: {str(e).splitlines()[0]}{hint}") from None


def add_to_checkpoint(path: str, **values: Any) -> None:
    """Add top-level entries to a saved checkpoint, atomically (e.g. ``mask_threshold=0.4``).

    Args:
        path: a checkpoint written by :class:`BrainSegCheckpointer`.
        values: plain numbers, strings, lists or dicts, so that the file still loads with
            ``torch.load(weights_only=True)``.
    """
    data = torch.load(path, map_location="cpu", weights_only=True)
    data.update(values)
    atomic_write(path, lambda f: torch.save(data, f))
