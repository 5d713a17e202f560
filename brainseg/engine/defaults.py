"""brainseg's training-loop settings (``cfg.train``) and their defaults, in one place.

``configs/common/train.py`` starts from :data:`TRAIN_DEFAULTS`; :func:`with_train_defaults`
fills in every key a config does not set, so that any detectron2 LazyConfig (e.g. the model
zoo's ``common/train.py``, which has none of brainseg's keys) runs in ``tools/train_net.py``.

Lengths are in iterations; set ``epochs`` / ``eval_period_epochs`` /
``checkpoint_period_epochs`` to speak in epochs instead (converted with the size of the
training set and ``dataloader.train.total_batch_size``).
"""
import copy
from typing import Any, Mapping, MutableMapping

__all__ = ["TRAIN_DEFAULTS", "with_train_defaults"]

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
    # mixed precision: fp16 AMP on CUDA, bf16 autocast on CPU
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
