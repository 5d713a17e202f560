"""Training hooks: best-checkpoint tracking with early stopping, RNG state; both resumable."""
import logging
import math
import random
from typing import Optional

import numpy as np
import torch

from detectron2.checkpoint import Checkpointer
from detectron2.engine import HookBase

__all__ = ["BestCheckpointAndEarlyStop", "RNGStateHook"]

logger = logging.getLogger(__name__)


class BestCheckpointAndEarlyStop(HookBase):
    """After each evaluation, save ``model_best`` when the validation metric improves, and
    stop training after ``patience`` evaluations without improvement.

    Must be registered after the EvalHook that writes the metric to the event storage. Its
    state (best value and iteration, evaluations since the best) is part of the trainer's
    checkpoint, so ``--resume`` continues the comparison instead of restarting it.
    """

    def __init__(self, eval_period: int, checkpointer: Checkpointer, metric: str, *,
                 patience: int = 0, file_prefix: str = "model_best"):
        """
        Args:
            eval_period: iterations between evaluations (as given to the EvalHook).
            checkpointer: writes the best model.
            metric: storage key of the validation metric, higher is better
                (e.g. ``"lgg/dice_volume_mean"``).
            patience: evaluations without improvement before stopping; 0 never stops.
            file_prefix: name of the best checkpoint file.
        """
        self.eval_period = eval_period
        self.checkpointer = checkpointer
        self.metric = metric
        self.patience = patience
        self.file_prefix = file_prefix
        self.best_value: Optional[float] = None
        self.best_iter: Optional[int] = None
        self.evals_since_best = 0
        self._last_seen_iter: Optional[int] = None

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if self.eval_period > 0 and next_iter % self.eval_period == 0:
            self._check()

    def after_train(self) -> None:
        self._check()

    def _check(self) -> None:
        latest = self.trainer.storage.latest()
        if self.metric not in latest:
            available = sorted(k for k in latest if "/" in k)
            logger.warning(f"best-checkpoint metric '{self.metric}' not found among {available}")
            return
        value, metric_iter = latest[self.metric]
        if metric_iter == self._last_seen_iter or not math.isfinite(value):
            return
        self._last_seen_iter = metric_iter
        if self.best_value is None or value > self.best_value:
            self.best_value, self.best_iter, self.evals_since_best = float(value), int(metric_iter), 0
            self.checkpointer.save(self.file_prefix, iteration=metric_iter)
            logger.info(f"New best {self.metric} = {value:.4f} at iteration {metric_iter}: saved {self.file_prefix}")
            return
        self.evals_since_best += 1
        logger.info(f"{self.metric} = {value:.4f} (best {self.best_value:.4f} at iteration {self.best_iter}); "
                    f"{self.evals_since_best} evaluation(s) without improvement")
        if self.patience > 0 and self.evals_since_best >= self.patience:
            self.trainer.request_stop(f"early stopping: {self.metric} did not improve for "
                                      f"{self.evals_since_best} evaluations")

    def state_dict(self) -> dict:
        return {"best_value": self.best_value, "best_iter": self.best_iter,
                "evals_since_best": self.evals_since_best, "last_seen_iter": self._last_seen_iter}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_value = state_dict["best_value"]
        self.best_iter = state_dict["best_iter"]
        self.evals_since_best = state_dict["evals_since_best"]
        self._last_seen_iter = state_dict["last_seen_iter"]


class RNGStateHook(HookBase):
    """Puts the python, numpy and torch RNG states into every checkpoint and restores them on
    ``--resume``, so that random draws after a resume continue the interrupted sequence.
    (Stored as tensors and plain lists: loadable with ``torch.load(weights_only=True)``.)"""

    def state_dict(self) -> dict:
        version, state, gauss = random.getstate()
        name, keys, pos, has_gauss, cached = np.random.get_state()
        return {
            "python": [version, list(state), gauss],
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "torch": torch.get_rng_state(),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        version, state, gauss = state_dict["python"]
        random.setstate((version, tuple(state), gauss))
        name, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state_dict["torch"])
