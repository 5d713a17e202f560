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
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel

import brainseg.data  # noqa: F401  (registers the LGG datasets)
import brainseg.modeling  # noqa: F401  (registers the meta-architectures)
from brainseg.modeling.postprocessing import model_mask_threshold
from brainseg.utils.checkpoint import BrainSegCheckpointer
from brainseg.utils.config import load_config, resolve_device
from brainseg.utils.errors import UserError
from brainseg.utils.io import atomic_write
from brainseg.utils.malloc import tune_glibc_malloc
from brainseg.utils.workers import WatchedLoader, make_opencv_fork_safe
from brainseg.visualization.overlay import write_dataset_overlays

from .defaults import with_train_defaults
from .hooks import BestCheckpointAndEarlyStop, RNGStateHook
from .trainer import BrainSegTrainer, NonFiniteLossError

__all__ = ["launch_main", "parse_args", "run", "main", "train", "evaluate", "convert_epochs"]

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
    """Instantiate ``dataloader.evaluator`` for the dataset of ``dataloader.<split>``."""
    node = OmegaConf.to_container(cfg.dataloader.evaluator, resolve=True)
    node["dataset_name"] = cfg.dataloader[split].dataset.names
    if "output_dir" in node:
        node["output_dir"] = os.path.join(cfg.train.output_dir, f"inference_{split}")
    return instantiate(node)


def watched(cfg, loader, name: str):
    """``loader`` with a warning after ``train.data_stall_warning_seconds`` without a batch."""
    seconds = cfg.train.get("data_stall_warning_seconds")
    return WatchedLoader(loader, name, warn_after=seconds) if seconds else loader


def evaluate(cfg, model, split: str = "test") -> dict:
    """Run ``model`` on ``dataloader.<split>`` and return the evaluators' results."""
    loader = watched(cfg, instantiate(cfg.dataloader[split]), f"dataloader.{split}")
    results = inference_on_dataset(model, loader, build_evaluator(cfg, split))
    if comm.is_main_process():
        logger.info(f"Evaluation on {split} ({cfg.dataloader[split].dataset.names}):")
        print_csv_format(results)
        lgg = results.get("lgg", {})
        if "dice_volume_mean" in lgg:
            logger.info(f"[{split}] per-volume Dice {lgg['dice_volume_mean']:.4f} (median "
                        f"{lgg['dice_volume_median']:.4f}), per-volume IoU {lgg['iou_volume_mean']:.4f}, "
                        f"global Dice {lgg['dice_global']:.4f}, global IoU {lgg['iou_global']:.4f}")
    return results


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
    """Train with periodic validation, best/periodic checkpoints; evaluate the best model on test."""
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
    trainer = BrainSegTrainer(wrapped, None, optimizer, amp=cfg.train.amp.enabled, device=device,
                              clip_grad_norm=cfg.train.get("clip_grad_norm"))
    checkpointer = BrainSegCheckpointer(model, cfg.train.output_dir, trainer=trainer,
                                        allow_unsafe_load=cfg.train.get("allow_unsafe_checkpoint", False))
    val_split = "val" if "val" in cfg.dataloader else "test"
    eval_period = cfg.train.eval_period

    def validate() -> dict:
        sync_buffers_from_main(model)
        return evaluate(cfg, model, val_split)

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
    if os.path.isfile(best):
        logger.info(f"Evaluating the best validation checkpoint {best} on the test split")
        BrainSegCheckpointer(model, allow_unsafe_load=False).load(best)
    return evaluate(cfg, model, "test")


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
        BrainSegCheckpointer(model, cfg.train.output_dir,
                             allow_unsafe_load=cfg.train.get("allow_unsafe_checkpoint", False)
                             ).resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
        results = evaluate(cfg, model, "test")
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
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


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
