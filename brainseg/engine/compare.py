"""``tools/compare.py``: train and evaluate several models on the same patient folds and write
the comparison (tables, statistics, figures, report), resumably.

Examples:
    python tools/compare.py --config-file configs/lgg/unet.py configs/lgg/unext.py \\
        --data datasets/lgg --output output/compare --folds 5
    python tools/compare.py --config-file configs/lgg/unext_demo.py --data datasets/lgg_demo \\
        --output output/sweep --folds 3 --sweep optimizer.lr=1e-4,1e-3 -- train.max_iter=500
    python tools/compare.py --config-file configs/lgg/unet_demo.py configs/lgg/unext_demo.py \\
        --data datasets/lgg_demo --output output/cmp --test-dataset brats_test unet_demo:train.max_iter=300

Every config is trained and evaluated on each fold (each patient is tested by exactly one fold;
a fold's validation patients come from its training part) and each seed, one run after the other
in this process, through the library path of ``tools/train_net.py``
(:func:`brainseg.engine.launch.main`). ``key=value`` overrides apply to every model;
``<model>:key=value`` (the model's name or its config file's stem) to one. ``--sweep
key=v1,v2 ...`` trains the grid of settings (cartesian product): the table has one row per model
and setting, the pairwise tests compare the models of each setting. Overrides may also follow
``--``, which ends the lists of ``--config-file``, ``--seeds``, ``--sweep`` and ``--names``.

Output folder (``--output``):
    folds.json              the patient folds, written first and reused by every re-run
    coco/                   COCO json of each fold's validation and test patients (segm AP)
    runs/<model>/<setting>/fold<k>_seed<s>/
                            one run's train.output_dir (train_net's files) + compare_run.json
                            (training wall time, parameters, GFLOPs per slice, slices/s)
    ensembles/<model>/      with --test-dataset: the K-fold ensemble's lgg_per_patient.csv
    comparison.csv, comparison.md, per_patient.csv, slices.png, dice_boxplot.png,
    training_curves.png, report.html, log.txt

Resuming: run the same command again. A run with results.json is finished and kept; a run with a
checkpoint but no results.json resumes from it (``tools/train_net.py --resume``); the others
start. Training times add up over the attempts of a run.
"""
import argparse
import contextlib
import gc
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from detectron2.data import DatasetCatalog
from detectron2.utils.logger import setup_logger

from brainseg.data.folds import DEFAULT_NUM_FOLDS
from brainseg.data.volumes import is_volume_input
from brainseg.utils.benchmark import cpu_model_name
from brainseg.utils.errors import ConfigError, UserError
from brainseg.visualization.comparison_report import write_comparison_outputs

from . import launch
from .compare_collect import RUN_INFO, collect_study, read_json, update_run_info
from .compare_plan import (
    StudyRun,
    fold_dataset_names,
    parse_sweep,
    plan_runs,
    register_fold_datasets,
    split_model_overrides,
    study_folds,
    study_models,
    study_patients,
)
from .compare_predict import MAX_TIMED_SLICES
from .trainer import NonFiniteLossError

__all__ = ["FOLDS_FILE", "format_duration", "run_state", "train_run", "execute_runs", "run_study", "parse_args",
           "compare_main"]

logger = logging.getLogger("brainseg")

FOLDS_FILE = "folds.json"
# the loggers detectron2's setup_logger gives handlers to (cached per output folder)
_LOGGERS = ("brainseg", "detectron2", "fvcore")


def format_duration(seconds: float) -> str:
    """``"4 min 12 s"``, ``"1 h 3 min"`` or ``"12 s"``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


@contextlib.contextmanager
def _logging_scope(*, detach: bool) -> Iterator[None]:
    """Remove on exit the log handlers that detectron2's ``setup_logger`` adds inside the block
    (it caches them per output folder, so successive runs would log into every earlier run's
    log.txt); with ``detach``, the loggers' present handlers are also set aside meanwhile."""
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    saved = [(list(lg.handlers), lg.propagate, lg.level) for lg in loggers]
    if detach:
        for lg in loggers:
            lg.handlers.clear()
    setup_logger.cache_clear()
    try:
        yield
    finally:
        for lg, (handlers, propagate, level) in zip(loggers, saved):
            for handler in lg.handlers:
                if handler not in handlers:
                    handler.close()
            lg.handlers[:] = handlers
            lg.propagate = propagate
            lg.setLevel(level)
        setup_logger.cache_clear()


def run_state(run: StudyRun) -> str:
    """``"finished"`` (results.json), ``"partial"`` (a checkpoint, no results) or ``"new"``."""
    if (run.output_dir / "results.json").is_file():
        return "finished"
    return "partial" if (run.output_dir / "last_checkpoint").is_file() else "new"


def train_run(run: StudyRun, *, resume: bool) -> None:
    """Train and evaluate one run through ``tools/train_net.py``'s library path, in this process.

    Raises:
        UserError: the loss became non-finite (naming the run), or any user error of the run.
    """
    args = launch.parse_args(["--config-file", run.model.config_file, *(["--resume"] if resume else []),
                              *run.overrides])
    try:
        with _logging_scope(detach=True):
            launch.main(args)
    except NonFiniteLossError as e:
        raise UserError(f"{run.label}: {e}; its last good checkpoint is kept in {run.output_dir}") from None
    finally:
        gc.collect()  # the run's model, optimizer and loader workers


def execute_runs(runs: Sequence[StudyRun]) -> int:
    """Train every run that is not finished (resuming partial ones), logging one line at the
    start and end of each; the training wall time is added to the run's ``compare_run.json``.

    Returns:
        the number of runs finished earlier (kept).
    """
    kept = 0
    for number, run in enumerate(runs, 1):
        head = f"run {number}/{len(runs)}: {run.label}"
        state = run_state(run)
        info = read_json(run.output_dir / RUN_INFO)
        if info.get("overrides", list(run.overrides)) != list(run.overrides):
            logger.warning(f"{head} was trained with other overrides ({' '.join(info['overrides'])}); "
                           f"delete {run.output_dir} to train it anew")
        if state == "finished":
            logger.info(f"{head}: finished earlier, kept")
            kept += 1
            continue
        logger.info(f"{head} ... " + ("resuming from its last checkpoint" if state == "partial" else "training"))
        spent = info.get("train_seconds", 0.0)
        start = time.perf_counter()
        try:
            train_run(run, resume=state == "partial")
        finally:
            update_run_info(run, train_seconds=spent + time.perf_counter() - start)
        logger.info(f"{head} ... done in {format_duration(time.perf_counter() - start)}")
    return kept


def _notes(args: argparse.Namespace, num_patients: int, num_folds: int, num_runs: int, kept: int) -> List[str]:
    """The report's notes: data, folds, seeds, machine and what the columns measure."""
    kind = "NIfTI cases" if is_volume_input(args.data) else "LGG TIFF tree"
    notes = [
        f"Data: {args.data} ({kind}, {num_patients} patients); {num_folds}-fold patient cross-validation "
        f"(folds in {FOLDS_FILE}; each fold's validation patients come from its training part).",
        f"Seeds: {', '.join(map(str, args.seeds))}; {num_runs} runs ({kept} finished by an earlier invocation).",
        f"Machine: {cpu_model_name()}, torch threads: {torch.get_num_threads()}.",
        "Per-patient metrics are averaged over seeds; dice_fold_mean / dice_fold_sd: mean and SD of the folds' "
        "mean Dice; segm AP50: mean over folds (segm_ap50_sd: SD over folds).",
        "Training (min): wall time of a run's train_net path (training, validation, test evaluation), mean "
        f"over runs. Slices / s: forward passes over up to {MAX_TIMED_SLICES} test slices at the evaluation "
        "size, model only. GFLOPs / slice: matmul and convolution FLOPs of one evaluation forward.",
    ]
    if args.test_dataset:
        notes.append(f"K-fold ensembles: the mean tumour probability of a model's {num_folds} fold models (every "
                     f"seed) on {args.test_dataset}, thresholded at the mean of their thresholds. The figure's "
                     f"slices come from {args.test_dataset}; single-model columns show the fold-0 models.")
    return notes


def run_study(args: argparse.Namespace, command: str) -> Dict[str, Path]:
    """The whole study: check the inputs, fold, train, collect and write the outputs.

    Args:
        args: parsed by :func:`parse_args`.
        command: the command line, for the report.

    Returns:
        output file name -> path (see :func:`~brainseg.visualization.comparison_report.write_comparison_outputs`).

    Raises:
        UserError: bad inputs (config files, overrides, --sweep, --data, --folds, --test-dataset).
    """
    started = time.perf_counter()
    common, models = split_model_overrides(args.opts, study_models(args.config_file, args.names))
    settings, plain = parse_sweep(args.sweep)
    if args.test_dataset and args.test_dataset not in DatasetCatalog.list():
        raise ConfigError(f"--test-dataset {args.test_dataset} is not a registered dataset")
    patients = study_patients(args.data)
    output = Path(args.output)
    folds = study_folds(output / FOLDS_FILE, patients, args.folds)
    runs = plan_runs(models, settings, fold_dataset_names(args.data, folds), args.seeds, output, [*common, *plain])
    with _logging_scope(detach=False):
        setup_logger(str(output / "log.txt"), name="brainseg", abbrev_name="brainseg")
        logger.info(f"{len(runs)} runs: {len(models)} models x {len(settings)} settings x {len(folds)} folds x "
                    f"{len(args.seeds)} seeds, into {output}")
        datasets = register_fold_datasets(args.data, folds, output / "coco")
        kept = execute_runs(runs)
        title = f"Model comparison on {Path(args.data).resolve().name}: {len(folds)}-fold patient cross-validation"
        results = collect_study(runs, datasets, output, title=title, test_dataset=args.test_dataset,
                                commands=[command], notes=_notes(args, len(patients), len(folds), len(runs), kept))
        results.notes.append(f"Wall time of this invocation: {format_duration(time.perf_counter() - started)}.")
        paths = write_comparison_outputs(results, output)
        logger.info(f"Comparison written to {output} (report: {paths['report.html']})")
    return paths


def _seeds(values: Sequence[str]) -> List[int]:
    try:
        return [int(v) for v in values]
    except ValueError:
        raise ConfigError(f"--seeds must be integers, got {' '.join(values)}") from None


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line of ``tools/compare.py``; a ``key=value`` caught by a list option
    (``--config-file``, ``--seeds``, ``--names``) counts as an override.

    Raises:
        ConfigError: ``--seeds`` that are not integers.
    """
    parser = argparse.ArgumentParser(prog="tools/compare.py", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", nargs="+", required=True, metavar="FILE", help="LazyConfig files")
    parser.add_argument("--data", required=True, metavar="ROOT", help="LGG TIFF tree or NIfTI dataset root")
    parser.add_argument("--output", required=True, metavar="DIR", help="study folder (re-run to resume)")
    parser.add_argument("--folds", type=int, default=DEFAULT_NUM_FOLDS, help="number of patient folds")
    parser.add_argument("--seeds", nargs="+", default=["0"], metavar="S", help="train.seed values")
    parser.add_argument("--sweep", nargs="+", action="extend", default=[], metavar="KEY=V1,V2",
                        help="settings grid (cartesian product)")
    parser.add_argument("--names", nargs="+", metavar="NAME", help="model names (default from the config files)")
    parser.add_argument("--test-dataset", metavar="NAME",
                        help="registered dataset on which each model's K-fold ensemble is evaluated")
    parser.add_argument("opts", nargs="*", metavar="KEY=VALUE", help="config overrides (MODEL:KEY=VALUE: one model)")
    args = parser.parse_intermixed_args(argv)
    caught = []
    for name in ("config_file", "seeds", "names"):
        values = getattr(args, name)
        if values is not None:
            caught += [v for v in values if "=" in v]
            setattr(args, name, [v for v in values if "=" not in v])
    args.opts = caught + args.opts
    args.seeds = _seeds(args.seeds)
    return args


def compare_main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/compare.py``: run (or resume) the study of ``argv`` (default ``sys.argv[1:]``).

    Returns:
        0, or 130 after Ctrl-C (user errors raise :class:`~brainseg.utils.errors.UserError`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        run_study(parse_args(argv), "python tools/compare.py " + shlex.join(argv))
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue the study", file=sys.stderr)
        return 130
    return 0
