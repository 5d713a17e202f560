"""Put a demo run's test figures next to the range recorded over several seeds.

A training run is bit-identical only on the same machine with the same thread count; across
CPUs (AVX2 vs AVX-512/AMX kernels) and seeds the figures move, so the demo is recorded as
mean +- SD over seeds (``train.seed=0,1,2``) with the CPU and the training precision named. A
run trained in another precision than the recorded seeds (``train.precision=auto`` picks bf16 on
CPUs with native bf16) is flagged: the range is then not its reference.

Examples:
    # after `make demo`: this run next to the recorded range
    python tools/demo_summary.py output/demo_unext --reference configs/lgg/unext_demo_seeds.json
    # record the range from runs made with train.seed=0,1,2
    python tools/demo_summary.py output/seeds/unext_s0 output/seeds/unext_s1 output/seeds/unext_s2 \\
        --record configs/lgg/unext_demo_seeds.json --command "..."
"""
import argparse
import json
import os
import re
import statistics
from typing import Dict, List, Optional, Sequence

import torch
import yaml

from brainseg.utils.benchmark import cpu_model_name
from brainseg.utils.errors import UserError
from brainseg.utils.io import atomic_write

# (results.json task, metric, label, format) of the recorded figures
FIGURES = (
    ("lgg", "dice_volume_mean", "per-volume Dice (mean)", ".3f"),
    ("lgg", "dice_volume_median", "per-volume Dice (median)", ".3f"),
    ("lgg", "iou_volume_mean", "per-volume IoU", ".3f"),
    ("lgg", "dice_global", "global Dice", ".3f"),
    ("lgg", "hd95", "HD95 (px)", ".1f"),
    ("segm", "AP50", "segm AP50", ".1f"),
)


class SummaryError(UserError):
    """A run without results, or an unreadable reference file."""


def read_figures(run_dir: str) -> Dict[str, float]:
    """The test figures of one run, ``{"<task>/<metric>": value}``, from its ``results.json``."""
    path = os.path.join(run_dir, "results.json")
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, ValueError) as e:
        raise SummaryError(f"cannot read the results of run {run_dir}: {e}") from None
    return {f"{task}/{metric}": float(results[task][metric]) for task, metric, _, _ in FIGURES
            if metric in results.get(task, {})}


# the trainer's log line "precision: <policy description>" (BrainSegTrainer.train)
_PRECISION_LINE = re.compile(r"\bprecision: (fp32|bf16|fp16)\b")


def run_precision(run_dir: str) -> Optional[str]:
    """The precision a run trained in ("fp32", "bf16", "fp16"), from its ``log.txt``; None when
    the log does not say."""
    try:
        with open(os.path.join(run_dir, "log.txt")) as f:
            found = [m.group(1) for m in map(_PRECISION_LINE.search, f) if m]
    except OSError:
        return None
    return found[-1] if found else None


def record(run_dirs: Sequence[str], out: str, command: str) -> None:
    """Write the figures of seed runs (``train.seed`` read from each run's config) to ``out``."""
    runs = {}
    for run_dir in run_dirs:
        seed = _seed_of(run_dir)
        runs[str(seed)] = read_figures(run_dir)
    precisions = {run_precision(run_dir) for run_dir in run_dirs}
    if len(precisions) > 1:
        raise SummaryError(f"the runs trained in different precisions ({', '.join(sorted(map(str, precisions)))}); "
                           "record the seeds of one precision")
    reference = {"command": command, "cpu": cpu_model_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                 "threads": torch.get_num_threads(), "precision": precisions.pop(), "seeds": runs}
    atomic_write(out, json.dumps(reference, indent=2) + "\n")
    print(f"recorded {len(runs)} seeds in {out}")
    print(describe(reference))


class _PlainLoader(yaml.SafeLoader):
    """Reads a saved LazyConfig; the Python objects it pickled in (augmentations) become None."""


_PlainLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def _seed_of(run_dir: str) -> int:
    path = os.path.join(run_dir, "config.yaml")
    try:
        with open(path) as f:
            return int(yaml.load(f, Loader=_PlainLoader)["train"]["seed"])
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as e:
        raise SummaryError(f"cannot read train.seed from {path}: {e!r}") from None


def describe(reference: dict, current: Optional[Dict[str, float]] = None, current_precision: Optional[str] = None) -> str:
    """Lines ``label: [this run's value | ]mean +- SD (min-max) over seeds ...``, and a warning
    line when ``current_precision`` is not the recorded seeds' precision."""
    seeds = reference["seeds"]
    recorded_precision = reference.get("precision")
    settings = ", ".join(str(x) for x in (reference["cpu_capability"], f"{reference['threads']} threads",
                                          recorded_precision) if x)
    lines = [f"recorded over seeds {', '.join(sorted(seeds))} on {reference['cpu']} ({settings}): "
             "mean +- SD (min - max)"]
    for task, metric, label, fmt in FIGURES:
        key = f"{task}/{metric}"
        values: List[float] = [run[key] for run in seeds.values() if key in run]
        if len(values) < 2:
            continue
        spread = (f"{statistics.mean(values):{fmt}} +- {statistics.stdev(values):{fmt}} "
                  f"({min(values):{fmt}} - {max(values):{fmt}})")
        if current is not None and key in current:
            lines.append(f"  {label:26s} this run {current[key]:{fmt}}   recorded {spread}")
        else:
            lines.append(f"  {label:26s} {spread}")
    if current_precision and recorded_precision and current_precision != recorded_precision:
        lines.append(f"  NOTE: this run trained in {current_precision}, the recorded seeds in {recorded_precision} "
                     "(train.precision=auto follows the CPU): the range is not this run's reference; "
                     "BENCHMARKS.md 'Precision auto' records both")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``tools/demo_summary.py``: returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="tools/train_net.py output dirs")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--reference", metavar="JSON", help="recorded seed range to compare one run with")
    mode.add_argument("--record", metavar="JSON", help="write the seed range of the given runs here")
    parser.add_argument("--command", default="", help="with --record: the command that made the runs")
    args = parser.parse_args(argv)
    if args.record:
        record(args.runs, args.record, args.command)
        return 0
    try:
        with open(args.reference) as f:
            reference = json.load(f)
    except (OSError, ValueError) as e:
        raise SummaryError(f"cannot read the reference {args.reference}: {e}") from None
    for run_dir in args.runs:
        print(f"{run_dir}: test split")
        print(describe(reference, read_figures(run_dir), run_precision(run_dir)))
    return 0
