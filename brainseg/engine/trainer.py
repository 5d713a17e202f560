"""The training loop: detectron2's SimpleTrainer with mixed precision on CPU or CUDA,
gradient-norm clipping, a non-finite-loss guard on every rank, and a clean way for hooks to
stop training early."""
import logging
import time
from typing import Optional, Union

import torch
import torch.distributed as dist
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

from brainseg.utils.precision import PrecisionPolicy, resolve_precision

__all__ = ["BrainSegTrainer", "NonFiniteLossError"]

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the weights were not updated with it."""


class BrainSegTrainer(SimpleTrainer):
    """SimpleTrainer with a precision policy (fp32, bf16 autocast, fp16 autocast + GradScaler on
    CUDA), optional clipping of the whole model's gradient norm, a loss check before every
    optimizer step, and :meth:`request_stop` for early stopping."""

    def __init__(
        self,
        model,
        data_loader,
        optimizer,
        *,
        precision: Union[str, PrecisionPolicy] = "fp32",
        device: str = "cpu",
        clip_grad_norm: Optional[float] = None,
    ):
        """
        Args:
            model, data_loader, optimizer: as for detectron2's SimpleTrainer.
            precision: the forward passes' precision: a policy, or a name ("auto", "fp32",
                "bf16", "fp16") resolved for ``device`` by
                :func:`~brainseg.utils.precision.resolve_precision`. fp16 adds a GradScaler.
            device: the device the model trains on ("cpu", "cuda", "cuda:1").
            clip_grad_norm: if set, rescale the gradients of all parameters together so that
                their global L2 norm is at most this value (detectron2's "full_model" clipping);
                the norm before clipping is logged as ``grad_norm``.
        """
        super().__init__(model, data_loader, optimizer)
        if clip_grad_norm is not None and not clip_grad_norm > 0:
            raise ValueError(f"train.clip_grad_norm must be a positive number or None, got {clip_grad_norm!r}")
        self.clip_grad_norm = clip_grad_norm
        self.precision = precision if isinstance(precision, PrecisionPolicy) else resolve_precision(precision, device)
        self.grad_scaler = torch.amp.GradScaler(self.precision.device_type) if self.precision.use_grad_scaler else None
        self.stop_reason: Optional[str] = None

    def request_stop(self, reason: str) -> None:
        """Finish the current iteration and leave the loop (hooks' after_train still run)."""
        self.stop_reason = reason

    def train(self, start_iter: int, max_iter: int) -> None:
        """Run iterations ``start_iter .. max_iter - 1``, or until a hook requests a stop."""
        logger.info(f"Starting training from iteration {start_iter}")
        logger.info(f"precision: {self.precision.describe()}")
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        with EventStorage(start_iter) as self.storage:
            try:
                self.before_train()
                for self.iter in range(start_iter, max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                    if self.stop_reason is not None:
                        logger.info(f"Stopping at iteration {self.iter + 1}: {self.stop_reason}")
                        break
                self.iter += 1
            finally:
                self.after_train()

    def run_step(self) -> None:
        assert self.model.training, "[BrainSegTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        loss_dict = self.precision.run(self.model, data)  # losses back in float32
        losses = sum(loss_dict.values())
        self._check_finite(losses, loss_dict)
        self.optimizer.zero_grad()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()
        self.after_backward()
        if self.clip_grad_norm is not None:
            self._clip_gradients()
        self._write_metrics(loss_dict, data_time)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def _clip_gradients(self) -> None:
        """Clip the global gradient norm (after unscaling AMP gradients) and log it."""
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
        parameters = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        total_norm = torch.nn.utils.clip_grad_norm_(parameters, self.clip_grad_norm)
        self.storage.put_scalar("grad_norm", float(total_norm), smoothing_hint=False)

    def _check_finite(self, losses: torch.Tensor, loss_dict: dict) -> None:
        """Raise :class:`NonFiniteLossError` on every rank if any rank's loss is not finite,
        before the optimizer could apply it."""
        finite = torch.isfinite(losses.detach()).to(torch.int32).reshape(1).cpu()
        if comm.get_world_size() > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not bool(finite.item()):
            values = {k: float(v.detach()) for k, v in loss_dict.items()}
            raise NonFiniteLossError(f"loss became NaN or infinite at iteration {self.iter}: {values}")

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
