"""brainseg's training-loop settings (``cfg.train``) and their defaults, in one place.

``configs/common/train.py`` starts from :data:`TRAIN_DEFAULTS`; :func:`with_train_defaults`
fills in every key a config does not set, so that any detectron2 LazyConfig (e.g. the model
zoo's ``common/train.py``, which has none of brainseg's keys) runs in ``tools/train_net.py``.

Lengths are in iterations; set ``epochs`` / ``eval_period_epochs`` /
``checkpoint_period_epochs`` to speak in epochs instead (converted with the size of the
training set and ``dataloader.train.total_batch_size``).

Precision (:func:`resolve_train_precision`): ``train.precision`` ("auto" by default) picks fp16
autocast on CUDA, bf16 autocast on a CPU with native bf16 (AMX-BF16 / AVX512-BF16) and fp32 on
other CPUs (see :mod:`brainseg.utils.precision`); ``"fp32"``, ``"bf16"``, ``"fp16"`` force one.
The older switch ``train.amp.enabled=True`` still means "bf16 on CPU, fp16 on CUDA": it wins over
``precision="auto"``, an explicit ``"bf16"``/``"fp16"`` wins over it, and together with
``precision="fp32"`` it is a contradiction (an error). Training, validation and the test
evaluation run under the policy; BatchNorm statistics, losses and metrics stay float32.
"""
import copy
from typing import Any, Mapping, MutableMapping, Union

import torch

from brainseg.utils.errors import ConfigError
from brainseg.utils.precision import PrecisionPolicy, resolve_precision

__all__ = ["TRAIN_DEFAULTS", "with_train_defaults", "resolve_train_precision"]

TRAIN_DEFAULTS = dict(
    output_dir="./output/lgg",
    init_checkpoint="",
    # checkpoints load with torch.load(weights_only=True); True allows pickles (trusted files only)
    allow_unsafe_checkpoint=False,
    max_iter=6000,
    epochs=None,
    eval_period=500,
    eval_period_epochs=None,
    log_period=20,
    checkpointer=dict(period=500, max_to_keep=3),
    checkpoint_period_epochs=None,
    # the validation metric that picks model_best.pth ("lgg/<metric>", higher is better)
    best_metric="lgg/dice_volume_mean",
    # stop after this many evaluations without improvement of best_metric (0: never)
    early_stop_patience=0,
    device="auto",  # "auto": cuda when available, else cpu
    seed=0,
    # "auto": fp16 autocast on CUDA, bf16 autocast on a CPU with native bf16 (AMX-BF16/AVX512-BF16),
    # else fp32; or "fp32", "bf16", "fp16" (CUDA only). Precedence: see resolve_train_precision
    precision="auto",
    # the older mixed-precision switch: True means bf16 on CPU / fp16 (+ GradScaler) on CUDA and
    # wins over precision="auto"
    amp=dict(enabled=False),
    # clip the global L2 norm of all gradients to this value before each step (None: off)
    clip_grad_norm=None,
    # broadcast_buffers: BatchNorm statistics follow rank 0 in multi-process training
    ddp=dict(broadcast_buffers=True, find_unused_parameters=False),
    cudnn_benchmark=False,
    # warn (and repeat) when a data loader has produced no batch for this many seconds (None: off)
    data_stall_warning_seconds=300,
    # write overlay PNGs (image | truth | prediction) of the test split after training
    overlays=dict(enabled=True, max_patients=4),
    # after training, set model.mask_threshold to the candidate 0.05, 0.10, ..., 0.95 that maximises
    # Dice on dataloader.val (never test); stored in the evaluated checkpoint ("mask_threshold") and
    # used for the test evaluation, overlays, predict and export
    choose_threshold=False,
    # after training, fit the temperature T of the logits (sigmoid(logit / T)) minimising the
    # validation NLL; stored in the evaluated checkpoint ("temperature"), applied before choose_threshold
    fit_temperature=False,
    # what choose_threshold maximises: "dice_volume_mean" (mean per-patient Dice) or "dice_global"
    threshold_criterion="dice_volume_mean",
    # pixel-level ECE (num_bins equal-width bins) and reliability_val.png of dataloader.val, after
    # training and with --eval-only; results.json "calibration": {"ece_val": ...}
    calibration=dict(enabled=False, num_bins=15),
    # write the test split's per-slice tumour probabilities (float16 .npz) to <output_dir>/probabilities/
    save_probabilities=False,
)


def _fill(target: MutableMapping, defaults: Mapping[str, Any]) -> None:
    for key, value in defaults.items():
        if key not in target or target[key] is None and isinstance(value, Mapping):
            target[key] = copy.deepcopy(value)
        elif isinstance(value, Mapping) and isinstance(target[key], MutableMapping):
            _fill(target[key], value)


def with_train_defaults(cfg) -> None:
    """Add every :data:`TRAIN_DEFAULTS` key that ``cfg.train`` lacks (nested dicts too), in place;
    keys the config sets are kept. A config without ``train`` gets all of them.

    Args:
        cfg: a LazyConfig (``DictConfig``) or a plain dict.
    """
    if "train" not in cfg:
        cfg["train"] = copy.deepcopy(TRAIN_DEFAULTS)
    else:
        _fill(cfg["train"], TRAIN_DEFAULTS)


def resolve_train_precision(train_cfg: Mapping[str, Any], device: Union[str, torch.device]) -> PrecisionPolicy:
    """The precision policy of training and evaluation from ``cfg.train``.

    Precedence: an explicit ``train.precision`` (``"fp32"``, ``"bf16"``, ``"fp16"``) wins; with
    ``"auto"`` (the default), ``train.amp.enabled=True`` means bf16 on CPU and fp16 on CUDA,
    otherwise the machine decides (:func:`~brainseg.utils.precision.resolve_precision`).

    Args:
        train_cfg: ``cfg.train`` (missing keys count as their defaults).
        device: the device the model trains on.

    Returns:
        the :class:`~brainseg.utils.precision.PrecisionPolicy`.

    Raises:
        ConfigError: a bad ``train.precision``, or ``train.amp.enabled=True`` with
            ``train.precision=fp32``.
    """
    precision = train_cfg.get("precision", TRAIN_DEFAULTS["precision"])
    if (train_cfg.get("amp") or {}).get("enabled", False):
        chosen = str(precision).strip().lower()
        if chosen == "fp32":
            raise ConfigError("train.amp.enabled=True asks for mixed precision but train.precision='fp32' "
                              "forbids it; set only one of them")
        if chosen == "auto":
            precision = "fp16" if torch.device(device).type == "cuda" else "bf16"
    try:
        return resolve_precision(precision, device)
    except ConfigError as e:
        raise ConfigError(f"train.precision: {e}") from None
