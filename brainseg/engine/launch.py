"""``tools/train_net.py``: train and evaluate models from LazyConfig files (detectron2-style
driver), as importable functions; the script only calls :func:`launch_main`.

Examples:
    python tools/train_net.py --config-file configs/lgg/unext.py
    python tools/train_net.py --config-file configs/lgg/unext.py train.max_iter=2000 \\
        dataloader.train.total_batch_size=16
    python tools/train_net.py --config-file configs/lgg/unext.py --eval-only \\
        train.init_checkpoint=output/lgg_unext/model_best.pth
    python tools/train_net.py --config-file configs/lgg/unext.py --resume
    python tools/train_net.py --config-file configs/lgg/unext.py --num-gpus 2   # 2 processes (gloo on CPU)

Writes to ``train.output_dir``: config.yaml, log.txt, metrics.json, TensorBoard events,
checkpoints (model_XXXXXXX.pth, model_best.pth, model_final.pth), results.json (the test
split's metrics ``{task: {metric: value}}``) and overlay PNGs of the test split.

Calibration, always on the validation split (``dataloader.val``), never on test:
``train.calibration.enabled=True`` adds ``{"calibration": {"ece_val": ...}}`` to results.json and
writes reliability_val.png; after training, ``train.fit_temperature=True`` fits the logit
temperature and ``train.choose_threshold=True`` sets ``model.mask_threshold`` to the
validation-Dice-maximising threshold; both are stored in the evaluated checkpoint
(``"temperature"``, ``"mask_threshold"``; restored by --eval-only, tools/predict.py and
tools/export.py) and used for the test evaluation. ``train.save_probabilities=True`` writes the test split's
per-slice probabilities to probabilities/ (see :mod:`brainseg.evaluation.saved_probabilities`).
"""
import json
import logging
import math
import os
import sys
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog
from detectron2.engine import default_argument_parser, default_setup, default_writers, hooks, launch
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel

import brainseg.data  # noqa: F401  (registers the LGG datasets)
import brainseg.modeling  # noqa: F401  (registers the meta-architectures)
from brainseg.evaluation.build import resolve_dataset_name
from brainseg.evaluation.calibration import DEFAULT_NUM_BINS
from brainseg.evaluation.calibration_evaluation import CalibrationEvaluator
from brainseg.evaluation.saved_probabilities import ProbabilityWriter
from brainseg.evaluation.temperature import fit_temperature
from brainseg.inference.model import restore_calibration, set_calibration
from brainseg.modeling.postprocessing import model_mask_threshold
from brainseg.utils.checkpoint import BrainSegCheckpointer, add_to_checkpoint
from brainseg.utils.config import load_config, resolve_device
from brainseg.utils.errors import UserError
from brainseg.utils.io import atomic_write
from brainseg.utils.malloc import tune_glibc_malloc
from brainseg.utils.workers import end_finished_worker
from brainseg.utils.precision import PrecisionPolicy
from brainseg.utils.workers import WatchedLoader, make_opencv_fork_safe
from brainseg.visualization.calibration_plot import save_reliability_diagram
from brainseg.visualization.overlay import write_dataset_overlays

from .defaults import resolve_train_precision, with_train_defaults
from .hooks import BestCheckpointAndEarlyStop, RNGStateHook
from .trainer import BrainSegTrainer, NonFiniteLossError

__all__ = ["launch_main", "parse_args", "run", "main", "train", "evaluate", "calibrate_on_validation",
           "convert_epochs"]

logger = logging.getLogger("brainseg")


def convert_epochs(cfg) -> None:
    """Turn the epoch-based settings (``train.epochs`` ...) into iterations, in place."""
    keys = {"epochs": "max_iter", "eval_period_epochs": "eval_period", "checkpoint_period_epochs": None}
    if all(cfg.train.get(k) is None for k in keys):
        return
    names = cfg.dataloader.train.dataset.names
    num_images = len(DatasetCatalog.get(names) if isinstance(names, str) else
                     [r for n in names for r in DatasetCatalog.get(n)])
    iters_per_epoch = max(1, math.ceil(num_images / cfg.dataloader.train.total_batch_size))
    for key, target in keys.items():
        value = cfg.train.get(key)
        if value is None:
            continue
        iters = max(1, round(value * iters_per_epoch))
        if target is None:
            cfg.train.checkpointer.period = iters
        else:
            cfg.train[target] = iters
    logger.info(f"{num_images} training images, {iters_per_epoch} iterations per epoch: "
                f"max_iter={cfg.train.max_iter}, eval_period={cfg.train.eval_period}, "
                f"checkpoint period={cfg.train.checkpointer.period}")


def build_evaluator(cfg, split: str):
    """The evaluator of ``dataloader.<split>``: the config's own ``dataloader.<split>_evaluator``
    (``dataloader.evaluator`` for test, detectron2's name), as written. A config with one
    evaluator only (e.g. a stock detectron2 config) gets it pointed at the split's dataset, its
    files in ``<train.output_dir>/inference_<split>``."""
    own = cfg.dataloader.get("evaluator" if split == "test" else f"{split}_evaluator")
    if own is not None:
        return instantiate(own)
    node = OmegaConf.to_container(cfg.dataloader.evaluator, resolve=True)
    node["dataset_name"] = cfg.dataloader[split].dataset.names
    if "output_dir" in node:
        node["output_dir"] = os.path.join(cfg.train.output_dir, f"inference_{split}")
    return instantiate(node)


def watched(cfg, loader, name: str):
    """``loader`` with a warning after ``train.data_stall_warning_seconds`` without a batch."""
    seconds = cfg.train.get("data_stall_warning_seconds")
    return WatchedLoader(loader, name, warn_after=seconds) if seconds else loader


def evaluate(cfg, model, split: str = "test", *, precision: Optional[PrecisionPolicy] = None) -> dict:
    """Run ``model`` on ``dataloader.<split>`` and return the evaluators' results; the test split's
    probabilities are also saved when ``train.save_probabilities``.

    The forward passes run under ``precision`` (default: the training policy of ``cfg.train``,
    :func:`~brainseg.engine.defaults.resolve_train_precision`); outputs and metrics are float32."""
    if precision is None:
        precision = resolve_train_precision(cfg.train, resolve_device(cfg.train.get("device", "auto")))
    loader = watched(cfg, instantiate(cfg.dataloader[split]), f"dataloader.{split}")
    evaluator = build_evaluator(cfg, split)
    if split == "test" and cfg.train.get("save_probabilities", False):
        writer = ProbabilityWriter(os.path.join(cfg.train.output_dir, "probabilities"),
                                   resolve_dataset_name(cfg.dataloader.test.dataset.names),
                                   mask_threshold=model_mask_threshold(model))
        evaluator = DatasetEvaluators([evaluator, writer])
    results = inference_on_dataset(precision.wrap(model), loader, evaluator)
    if comm.is_main_process():
        logger.info(f"Evaluation on {split} ({cfg.dataloader[split].dataset.names}):")
        print_csv_format(results)
        lgg = results.get("lgg", {})
        if "dice_volume_mean" in lgg:
            logger.info(f"[{split}] per-volume Dice {lgg['dice_volume_mean']:.4f} (median "
                        f"{lgg['dice_volume_median']:.4f}), per-volume IoU {lgg['iou_volume_mean']:.4f}, "
                        f"global Dice {lgg['dice_global']:.4f}, global IoU {lgg['iou_global']:.4f}")
    return results


def _validation_pass(cfg, model, dataset_name: str, *, collect_logits: bool) -> CalibrationEvaluator:
    options = cfg.train.get("calibration", {})
    evaluator = CalibrationEvaluator(dataset_name, num_bins=options.get("num_bins", DEFAULT_NUM_BINS),
                                     criterion=cfg.train.get("threshold_criterion", "dice_volume_mean"),
                                     collect_logits=collect_logits)
    inference_on_dataset(model, watched(cfg, instantiate(cfg.dataloader.val), "dataloader.val"), evaluator)
    return evaluator


def calibrate_on_validation(cfg, model, *, fit: bool) -> dict:
    """Calibration of ``model`` on ``dataloader.val`` (the test split is never used).

    With ``fit`` (after training): ``train.fit_temperature`` fits the temperature (one pass) and
    sets it on the model, then ``train.choose_threshold`` makes the threshold maximising
    ``train.threshold_criterion`` the model's (and the config's) ``mask_threshold``, on every
    process. With ``train.calibration.enabled``: the pixel-level ECE of the final model and
    ``reliability_val.png``.

    Returns:
        ``{"calibration": {...}}`` with the numbers computed: ``ece_val``, ``num_bins``,
        ``ece_val_before_temperature``, ``temperature``, ``threshold`` and ``<criterion>_val``
        (e.g. ``dice_volume_mean_val``: the validation score at the chosen threshold); ``{}`` when
        nothing is enabled, and on processes other than the main one.

    Raises:
        UserError: the config has no ``dataloader.val``, or the model applies no temperature.
    """
    report = cfg.train.get("calibration", {}).get("enabled", False)
    choose = fit and cfg.train.get("choose_threshold", False)
    scale = fit and cfg.train.get("fit_temperature", False)
    if not (report or choose or scale):
        return {}
    if "val" not in cfg.dataloader:
        raise UserError("calibration, train.choose_threshold and train.fit_temperature need dataloader.val: "
                        "they are never computed on the test split")
    unwrapped = getattr(model, "module", model)
    if scale and not hasattr(unwrapped, "temperature"):
        raise UserError(f"train.fit_temperature: {type(unwrapped).__name__} applies no temperature "
                        "(BrainSegSemantic does)")
    dataset_name = resolve_dataset_name(cfg.dataloader.val.dataset.names)
    results = {}
    if scale:
        evaluator = _validation_pass(cfg, model, dataset_name, collect_logits=True)
        factor = fit_temperature(evaluator.logits) if comm.is_main_process() else None
        temperature = unwrapped.temperature * comm.all_gather(factor)[0]  # rank 0's fit, on every rank
        set_calibration(model, cfg, temperature=temperature)
        logger.info(f"Temperature {temperature:.4f} fitted on {dataset_name} (validation NLL)")
        results["temperature"] = temperature
        if report:
            results["ece_val_before_temperature"] = evaluator.bins.ece()
    evaluator = _validation_pass(cfg, model, dataset_name, collect_logits=False)
    if report and comm.is_main_process():
        results.update(ece_val=evaluator.bins.ece(), num_bins=evaluator.bins.num_bins)
        path = os.path.join(cfg.train.output_dir, "reliability_val.png")
        save_reliability_diagram(evaluator.bins, path, title=f"Reliability on {dataset_name}")
        logger.info(f"Reliability diagram of {dataset_name} written to {path}")
    if choose:
        choice = evaluator.choose_threshold() if comm.is_main_process() else None
        choice = comm.all_gather(choice)[0]  # rank 0's choice, on every rank
        if choice is None:
            logger.warning(f"No threshold could be scored on {dataset_name} (no tumour, no prediction); "
                           f"keeping mask_threshold {model_mask_threshold(model):g}")
        else:
            set_calibration(model, cfg, mask_threshold=choice.threshold)
            logger.info(f"Tumour threshold {choice.threshold:g} chosen on {dataset_name}: {choice.criterion} "
                        f"{choice.score:.4f} (candidates {choice.thresholds[0]:g}..{choice.thresholds[-1]:g})")
            results.update({"threshold": choice.threshold, f"{choice.criterion}_val": choice.score})
    return {"calibration": results} if results and comm.is_main_process() else {}


def save_results(cfg, results: dict) -> None:
    """Write ``results.json`` (``{task: {metric: value}}``) into the output dir, atomically."""
    if comm.is_main_process() and results:
        path = os.path.join(cfg.train.output_dir, "results.json")
        atomic_write(path, json.dumps(results, indent=2, default=float))
        logger.info(f"Results saved to {path}")


def write_overlays(cfg, model) -> None:
    """Overlay PNGs (image | truth | prediction) of some test patients, when enabled."""
    options = cfg.train.get("overlays", {})
    if not options.get("enabled", False) or not comm.is_main_process():
        return
    out_dir = os.path.join(cfg.train.output_dir, "overlays")
    paths = write_dataset_overlays(model, instantiate(cfg.dataloader.test), out_dir,
                                   max_patients=options.get("max_patients", 4), threshold=model_mask_threshold(model))
    logger.info(f"Wrote {len(paths)} overlay figures to {out_dir}")


def sync_buffers_from_main(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    Between DDP's broadcasts each rank's statistics follow its own batches; a multi-process
    evaluation then scores a mix of models. After this, it scores exactly the model that rank 0
    checkpoints (and that ``model_best.pth`` is chosen for)."""
    if comm.get_world_size() == 1:
        return
    with torch.no_grad():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def check_replicas_agree(model: torch.nn.Module) -> None:
    """In multi-process runs, verify that every rank ended with the same parameters.

    (BatchNorm running statistics are per-rank between DDP's buffer broadcasts from rank 0;
    the checkpoint holds rank 0's.)"""
    if comm.get_world_size() == 1:
        return
    with torch.no_grad():
        checksum = float(sum(p.double().sum() for p in model.parameters()))
    checksums = comm.all_gather(checksum)
    if len(set(checksums)) != 1:
        raise RuntimeError(f"ranks ended training with different weights (checksums {checksums})")
    logger.info(f"All {len(checksums)} ranks agree on the weights (checksum {checksum:.6f})")


def build_model(cfg, device: str) -> torch.nn.Module:
    model = instantiate(cfg.model)
    model.to(device)
    logger.info(f"Model: {type(model).__name__} with {sum(p.numel() for p in model.parameters()):,} parameters")
    return model


def train(args, cfg, model, device: str) -> dict:
    """Train with periodic validation, best/periodic checkpoints; evaluate the best model on test.
    Training, validation and the test evaluation share one precision policy (``train.precision``)."""
    precision = resolve_train_precision(cfg.train, device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    wrapped = model
    if comm.get_world_size() > 1:
        ddp = cfg.train.get("ddp", {})
        wrapped = DistributedDataParallel(
            model, device_ids=[comm.get_local_rank()] if device.startswith("cuda") else None,
            broadcast_buffers=ddp.get("broadcast_buffers", False),
            find_unused_parameters=ddp.get("find_unused_parameters", False))
    # The data loader is built after the checkpoint is loaded, so that it resumes its stream.
    trainer = BrainSegTrainer(wrapped, None, optimizer, precision=precision, device=device,
                              clip_grad_norm=cfg.train.get("clip_grad_norm"))
    checkpointer = BrainSegCheckpointer(model, cfg.train.output_dir, trainer=trainer,
                                        allow_unsafe_load=cfg.train.get("allow_unsafe_checkpoint", False))
    val_split = "val" if "val" in cfg.dataloader else "test"
    eval_period = cfg.train.eval_period

    def validate() -> dict:
        sync_buffers_from_main(model)
        return evaluate(cfg, model, val_split, precision=precision)

    trainer.register_hooks([
        hooks.IterationTimer(),
        RNGStateHook(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        hooks.EvalHook(eval_period, validate),
        BestCheckpointAndEarlyStop(eval_period, checkpointer, cfg.train.best_metric,
                                   patience=cfg.train.get("early_stop_patience", 0)),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter),
                             period=cfg.train.log_period) if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    if "start_iter" in cfg.dataloader.train:
        cfg.dataloader.train.start_iter = start_iter
    trainer.reset_data_loader(lambda: watched(cfg, instantiate(cfg.dataloader.train), "dataloader.train"))
    trainer.train(start_iter, cfg.train.max_iter)
    check_replicas_agree(model)
    if trainer.stop_reason is not None and comm.is_main_process():
        checkpointer.save("model_final")
    best = os.path.join(cfg.train.output_dir, "model_best.pth")
    comm.synchronize()
    evaluated = best if os.path.isfile(best) else os.path.join(cfg.train.output_dir, "model_final.pth")
    if os.path.isfile(best):
        logger.info(f"Evaluating the best validation checkpoint {best} on the test split")
        # a threshold stored with these weights (an earlier choose_threshold run) belongs to them
        restore_calibration(model, BrainSegCheckpointer(model, allow_unsafe_load=False).load(best), cfg, source=best)
    calibration = calibrate_on_validation(cfg, model, fit=True)
    fitted = [key for key, option in (("mask_threshold", "choose_threshold"), ("temperature", "fit_temperature"))
              if cfg.train.get(option, False)]
    if fitted and comm.is_main_process():
        store_calibration(evaluated, {key: float(getattr(model, key)) for key in fitted})
    comm.synchronize()
    return {**evaluate(cfg, model, "test", precision=precision), **calibration}


def store_calibration(checkpoint: str, values: dict) -> None:
    """Record what was fitted on the validation split (``mask_threshold``, ``temperature``) in
    ``checkpoint``, the weights it was fitted for."""
    if not os.path.isfile(checkpoint):
        logger.warning(f"{checkpoint} not found: {sorted(values)} fitted on validation not stored with the weights")
        return
    add_to_checkpoint(checkpoint, **values)
    logger.info(f"Stored {values} in {checkpoint}")


def main(args) -> None:
    cfg = load_config(args.config_file, args.opts)
    with_train_defaults(cfg)  # any detectron2 LazyConfig runs: brainseg's train.* keys default when absent
    device = resolve_device(cfg.train.get("device", "auto"))
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="brainseg", abbrev_name="brainseg")
    convert_epochs(cfg)
    make_opencv_fork_safe()  # before any DataLoader forks its workers
    if device == "cpu":
        if "OMP_NUM_THREADS" not in os.environ:  # an explicit OMP_NUM_THREADS wins
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
        tune_glibc_malloc()  # reuse freed activation memory instead of page-faulting it in again
    model = build_model(cfg, device)
    if args.eval_only:
        checkpoint = BrainSegCheckpointer(model, cfg.train.output_dir,
                                          allow_unsafe_load=cfg.train.get("allow_unsafe_checkpoint", False)
                                          ).resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
        restore_calibration(model, checkpoint, cfg, source=cfg.train.init_checkpoint)
        if cfg.train.get("choose_threshold", False) or cfg.train.get("fit_temperature", False):
            logger.warning("train.choose_threshold / fit_temperature apply after training; --eval-only uses "
                           "the checkpoint's values")
        calibration = calibrate_on_validation(cfg, model, fit=False)
        precision = resolve_train_precision(cfg.train, device)
        logger.info(f"precision: {precision.describe()}")
        results = {**evaluate(cfg, model, "test", precision=precision), **calibration}
    else:
        results = train(args, cfg, model, device)
    save_results(cfg, results)
    write_overlays(cfg, model)


def run(args) -> None:
    """Entry point of every process: turn user errors into one line, tear down the group."""
    try:
        main(args)
        comm.synchronize()  # no rank tears gloo down while another still talks to it
    except (UserError, NonFiniteLossError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        if isinstance(e, KeyError) and "is not registered" not in str(message):
            raise  # a KeyError that is not a user's unknown dataset name is a bug: show it
        if isinstance(e, NonFiniteLossError):
            message += "; training stopped, the last good checkpoint is kept (see last_checkpoint)"
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(1)
    finally:
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            dist.destroy_process_group()
    if distributed:
        end_finished_worker()


def parse_args(argv=None):
    parser = default_argument_parser(epilog=__doc__)
    # a free local port by default (detectron2's default port is fixed per user: two runs collide)
    parser.set_defaults(dist_url="auto")
    args = parser.parse_args(argv)
    if args.num_machines > 1 and args.dist_url == "auto":
        parser.error("multi-machine runs need --dist-url tcp://<address of machine 0>:<port>")
    return args


def launch_main(argv: Optional[Sequence[str]] = None) -> None:
    """``tools/train_net.py``: parse ``argv`` and run :func:`run` in ``--num-gpus`` processes."""
    args = parse_args(argv)
    launch(run, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
