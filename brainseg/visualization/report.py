"""Compare brainseg runs: a results table (Markdown + CSV) and training curves (PNG).

Each run directory is a ``tools/train_net.py`` output dir with ``results.json``
(``{task: {metric: value}}``) and ``metrics.json`` (detectron2's JSONWriter: one JSON object
per line with ``iteration``, ``total_loss``, ... and, on evaluation iterations, metrics such
as ``lgg/dice_volume_mean``); ``config.yaml`` (optional) names the model.

Example:
    python tools/report.py output/lgg_unet output/lgg_resunet output/lgg_unext --out output/report

Writes ``results.md``, ``results.csv`` and ``training_curves.png`` into ``--out``.
"""

import argparse
import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from brainseg.utils.errors import UserError
from brainseg.utils.io import atomic_write

# (column, task, metric) of the results table, in order; the NSD and largest-component (*_lcc)
# columns follow hd95 / the LGG columns when some run has them (see table_columns).
COLUMNS = (
    ("dice_volume_mean", "lgg", "dice_volume_mean"),
    ("dice_volume_median", "lgg", "dice_volume_median"),
    ("dice_global", "lgg", "dice_global"),
    ("iou_global", "lgg", "iou_global"),
    ("hd95", "lgg", "hd95"),
    ("assd", "lgg", "assd"),
    ("lesion_f1_mean", "lgg", "lesion_f1_mean"),
    ("lesion_dice_mean", "lgg", "lesion_dice_mean"),
    ("seed_dice", "lgg", "seed_dice"),
    ("seed_iou", "lgg", "seed_iou"),
    ("segm/AP", "segm", "AP"),
    ("segm/AP50", "segm", "AP50"),
    ("segm/AP75", "segm", "AP75"),
    ("bbox/AP", "bbox", "AP"),
    ("bbox/AP50", "bbox", "AP50"),
)
LOSS_KEY = "total_loss"
VAL_DICE_KEYS = ("lgg/dice_volume_mean", "lgg/dice_global")  # first one present is plotted
TABLE_NOTE = (
    "LGG metrics are fractions in [0, 1] (dice_volume_*: per-patient 3-D Dice; *_global: pooled over "
    "all pixels; nsd_*: normalised surface Dice at that tolerance; lesion_*_mean: per-patient "
    "lesion-wise F1 / Dice; *_lcc: each patient's prediction cut to its largest 3-D component; "
    "seed_*: UNeXt's per-batch convention); hd95 and assd in voxels (mm when the dataset gives a "
    "spacing); COCO AP in percent (detectron2's convention)."
)


class ReportError(UserError):
    """A problem with a run directory or the report's output, reported as one line."""


@dataclass
class Run:
    """What the report uses of one training run."""

    name: str
    model: str
    results: Dict[str, Dict[str, float]]
    history: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def last_iteration(self) -> Optional[int]:
        return self.history[-1]["iteration"] if self.history else None


def read_history(path: str) -> List[Dict[str, Any]]:
    """Read detectron2's ``metrics.json`` into one dict per iteration, sorted by iteration.

    Lines of the same iteration are merged (later lines win, so a resumed or restarted run
    overrides the old values). A truncated last line (a run still writing) is ignored.

    Raises:
        ReportError: a malformed line other than the last, or a line without ``iteration``.
    """
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    by_iteration: Dict[int, Dict[str, Any]] = {}
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue
            raise ReportError(f"{path}: line {number} is not valid JSON") from None
        if not isinstance(entry, dict) or "iteration" not in entry:
            raise ReportError(f"{path}: line {number} has no 'iteration'")
        by_iteration.setdefault(int(entry["iteration"]), {}).update(entry)
    return [by_iteration[i] for i in sorted(by_iteration)]


def model_name(config_path: str) -> str:
    """Short model name from a run's ``config.yaml``: the class of ``model.net`` (semantic
    nets) or of ``model`` itself, e.g. "UNeXt"; "" when unavailable."""
    if not os.path.isfile(config_path):
        return ""
    try:
        with open(config_path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ReportError(f"{config_path}: not valid YAML ({e.__class__.__name__})") from None
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict):
        return ""
    for node in (model.get("net"), model):
        target = node.get("_target_") if isinstance(node, dict) else None
        if isinstance(target, str):
            return target.rsplit(".", 1)[-1].rsplit(":", 1)[-1]
    return ""


def load_run(run_dir: str) -> Run:
    """Load one run directory.

    Raises:
        ReportError: the directory, its ``results.json`` or its ``metrics.json`` is missing
            or unreadable.
    """
    if not os.path.isdir(run_dir):
        raise ReportError(f"run directory not found: {run_dir}")
    files = {name: os.path.join(run_dir, name) for name in ("results.json", "metrics.json")}
    for name, path in files.items():
        if not os.path.isfile(path):
            raise ReportError(f"{run_dir}: no {name} (is it a tools/train_net.py output dir of a finished run?)")
    try:
        with open(files["results.json"], encoding="utf-8") as f:
            results = json.load(f)
    except json.JSONDecodeError as e:
        raise ReportError(f"{files['results.json']}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(results, dict) or not all(isinstance(v, dict) for v in results.values()):
        raise ReportError(f"{files['results.json']}: expected {{task: {{metric: value}}}}")
    name = os.path.basename(os.path.normpath(run_dir))
    return Run(name, model_name(os.path.join(run_dir, "config.yaml")), results, read_history(files["metrics.json"]))


def table_columns(runs: Sequence[Run]) -> List[Tuple[str, str, str]]:
    """The table's (column, task, metric): :data:`COLUMNS`, with the NSD metrics some run has
    (``nsd_1mm``, ``nsd_2vox``, ...: their names carry the tolerance) after ``assd`` and the
    largest-component variants (``*_lcc``) after the last LGG column."""
    lgg_keys = sorted({key for run in runs for key in run.results.get("lgg", {})})
    nsd = [(k, "lgg", k) for k in lgg_keys if k.startswith("nsd_") and not k.endswith("_lcc")]
    lcc = [(k, "lgg", k) for k in lgg_keys if k.endswith("_lcc")]
    columns = list(COLUMNS)
    at = [c[0] for c in columns].index("assd") + 1
    columns[at:at] = nsd
    at = max(i for i, c in enumerate(columns) if c[1] == "lgg") + 1
    columns[at:at] = lcc
    return columns


def table_rows(runs: Sequence[Run]) -> List[Dict[str, Any]]:
    """One row per run: run, model, last iteration and the :func:`table_columns` (None if absent)."""
    rows = []
    columns = table_columns(runs)
    for run in runs:
        row: Dict[str, Any] = {"run": run.name, "model": run.model, "iterations": run.last_iteration}
        for column, task, metric in columns:
            value = run.results.get(task, {}).get(metric)
            row[column] = None if value is None else float(value)
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def to_markdown(rows: Sequence[Dict[str, Any]]) -> str:
    """The comparison table in Markdown, with the units note."""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(row[k]) for k in header) + " |" for row in rows]
    return "# brainseg results\n\n" + "\n".join(lines) + "\n\n" + TABLE_NOTE + "\n"


def to_csv(rows: Sequence[Dict[str, Any]]) -> str:
    """The comparison table as CSV (full precision, empty cells for absent metrics)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def plot_curves(runs: Sequence[Run]) -> bytes:
    """PNG bytes of the training loss and the validation Dice against iteration, one line per run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4), dpi=100)
    FigureCanvasAgg(figure)
    loss_ax, dice_ax = figure.subplots(1, 2)
    dice_label = "validation Dice"
    for run in runs:
        loss = [(e["iteration"], e[LOSS_KEY]) for e in run.history if LOSS_KEY in e]
        if loss:
            loss_ax.plot(*zip(*loss), label=run.name, linewidth=1, marker="." if len(loss) < 30 else None)
        key = next((k for k in VAL_DICE_KEYS if any(k in e for e in run.history)), None)
        if key is not None:
            dice = [(e["iteration"], e[key]) for e in run.history if key in e]
            dice_ax.plot(*zip(*dice), marker="o", markersize=3, label=f"{run.name} ({key.split('/')[-1]})")
    loss_ax.set(title="training loss", xlabel="iteration", ylabel=LOSS_KEY)
    dice_ax.set(title=dice_label, xlabel="iteration", ylabel="Dice (fraction)", ylim=(0, 1))
    for ax in (loss_ax, dice_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_report(run_dirs: Sequence[str], out_dir: str) -> List[str]:
    """Load the runs and write ``results.md``, ``results.csv`` and ``training_curves.png``.

    Returns:
        list[str]: the written paths.
    """
    runs = [load_run(d) for d in run_dirs]
    names = [r.name for r in runs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ReportError(f"several run directories are named {', '.join(duplicated)}; rename them to tell them apart")
    rows = table_rows(runs)
    outputs = {
        "results.md": to_markdown(rows),
        "results.csv": to_csv(rows),
        "training_curves.png": plot_curves(runs),
    }
    paths = []
    for name, data in outputs.items():
        path = os.path.join(out_dir, name)
        try:
            atomic_write(path, data)
        except OSError as e:
            raise ReportError(f"cannot write {path}: {e.strerror}") from None
        paths.append(path)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/report.py``: returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", metavar="OUTPUT_DIR", help="tools/train_net.py output dirs")
    parser.add_argument("--out", required=True, metavar="DIR", help="where to write the report")
    args = parser.parse_args(argv)
    paths = write_report(args.run_dirs, args.out)
    print("\n".join(f"wrote {p}" for p in paths))
    return 0
