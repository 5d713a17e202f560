"""The output files of a model-comparison study: tables, figures and one self-contained HTML report.

``tools/compare.py`` trains several models on the same patient-level folds, scores every test
patient and computes the statistics (confidence intervals, paired tests with Holm's correction);
this module only renders those numbers, gathered in a :class:`ComparisonResults`.
:func:`write_comparison_outputs` writes into one folder:

* ``comparison.csv``: one row per model, the keys of :attr:`ComparisonResults.table` as columns
  (full precision, empty cells for absent values).
* ``comparison.md``: the model table (Dice as "mean ± SD", median, 95 % CI "[lo, hi]", then the
  other columns), the pairwise tests with Holm-adjusted p, the figures, notes and commands.
* ``per_patient.csv``: one row per patient, model and fold.
* ``slices.png``, ``dice_boxplot.png``, ``training_curves.png``: see
  :mod:`brainseg.visualization.comparison_figures`.
* ``report.html``: the title, notes, both tables, the figures and the commands in one file that
  works offline: inline CSS, the figures as base64 ``data:`` URIs, no script, no external link. The model table is ``<table id="models">``
  with one ``<tbody>`` row per model, the pairwise table ``<table id="pairwise">``.

A figure without input (no panels, no curves, no finite per-patient Dice) is not written (an old
file of that name is removed) and its report section says "not available"; so does the pairwise
section without tests.

Example::

    results = ComparisonResults(title="LGG, 5 folds", models=["UNet", "UNeXt"], table=rows,
                                per_patient=patients, pairwise=tests, curves=curves, panels=panels,
                                commands=["python tools/compare.py ..."], notes=["demo data"])
    paths = write_comparison_outputs(results, "output/compare")  # {"report.html": Path(...), ...}
"""

import base64
import csv
import html
import io
import math
import os
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple, Union

import numpy as np

from brainseg.utils.errors import UserError
from brainseg.utils.io import atomic_write
from brainseg.visualization.comparison_figures import SlicePanel, plot_dice_boxplot, plot_slices, plot_training_curves

__all__ = [
    "ComparisonReportError",
    "ComparisonResults",
    "SlicePanel",
    "model_table",
    "pairwise_table",
    "to_csv",
    "to_markdown",
    "to_html",
    "write_comparison_outputs",
]

PathLike = Union[str, os.PathLike]
Formatter = Callable[[Any], str]
# (file, section title, caption) of the figures, in report order
FIGURES = (
    ("slices.png", "Test slices", "The same test slices for every model; the slice's Dice on each model panel "
     "(1.0 when truth and prediction are both empty)."),
    ("dice_boxplot.png", "Per-patient Dice", "Per-patient Dice of each model over its test folds."),
    ("training_curves.png", "Training curves", "Logged series against iteration, one line per model."),
)
NOT_AVAILABLE = "not available"
HOLM_ALPHA = 0.05


class ComparisonReportError(UserError, ValueError):
    """Comparison results that do not fit together, or an output folder that cannot be written."""


@dataclass
class ComparisonResults:
    """Everything a comparison report shows; the numbers come computed (nothing is tested here).

    Attributes:
        title: report title.
        models: model names in display order, e.g. ["UNet", "ResUNet", "UNeXt", "Mask DINO"].
        table: one row per model with ``model`` and any metrics; known keys (``dice_mean``,
            ``dice_sd``, ``dice_fold_mean``, ``dice_fold_sd``, ``dice_median``, ``dice_ci_low``,
            ``dice_ci_high``, ``hd95_mean``,
            ``sensitivity``, ``precision``, ``lesion_f1``, ``lesion_dice``, ``segm_ap50``,
            ``params``, ``gflops_per_slice``, ``train_minutes``, ``slices_per_s``) get headers and
            formats, other keys are shown as they are.
        per_patient: rows with ``patient``, ``model``, ``fold``, ``dice`` and other metrics.
        pairwise: paired tests, rows with ``model_a``, ``model_b``, ``n``, ``median_difference``
            (A − B), ``p_value`` and ``p_holm`` (Holm-adjusted).
        curves: model -> series name ("loss", "val dice") -> ``(iteration, value)`` points.
        panels: the same test slices for every model.
        commands: the exact commands that reproduce the study.
        notes: free text lines (data, machine, wall time).
    """

    title: str
    models: List[str]
    table: List[Dict[str, Any]]
    per_patient: List[Dict[str, Any]] = field(default_factory=list)
    pairwise: List[Dict[str, Any]] = field(default_factory=list)
    curves: Dict[str, Dict[str, List[Tuple[int, float]]]] = field(default_factory=dict)
    panels: List[SlicePanel] = field(default_factory=list)
    commands: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def validate(self) -> None:
        """Check that the parts name the same models and the panels' arrays fit.

        Raises:
            ComparisonReportError: naming the first inconsistency.
        """
        models = list(self.models)
        if not models or len(set(models)) != len(models):
            raise ComparisonReportError(f"models must be a non-empty list of distinct names; got {models}")
        named = [row.get("model") for row in self.table]
        if sorted(map(str, named)) != sorted(models):
            raise ComparisonReportError(
                f"the table must have exactly one row per model {models}; its rows name {named}")
        _check_known(models, "per_patient", [row.get("model") for row in self.per_patient])
        _check_known(models, "pairwise", [row.get(k) for row in self.pairwise for k in ("model_a", "model_b")])
        _check_known(models, "curves", list(self.curves))
        for panel in self.panels:
            shape = np.shape(panel.image)[:2]
            if np.shape(panel.truth) != shape:
                raise ComparisonReportError(
                    f"panel {panel.label!r}: truth shape {np.shape(panel.truth)} != image shape {shape}")
            _check_known(models, f"panel {panel.label!r}", list(panel.predictions))
            for model in models:
                if model not in panel.predictions:
                    raise ComparisonReportError(f"panel {panel.label!r} has no prediction of model {model!r}")
                if np.shape(panel.predictions[model]) != shape:
                    raise ComparisonReportError(f"panel {panel.label!r}: the {model} prediction has shape "
                                                f"{np.shape(panel.predictions[model])}; the image is {shape}")


def _check_known(models: Sequence[str], part: str, names: Sequence[Any]) -> None:
    unknown = sorted({str(n) for n in names if n not in models})
    if unknown:
        raise ComparisonReportError(f"{part} names models {unknown} that are not among {list(models)}")


def _number(digits: int, scale: float = 1.0) -> Formatter:
    return lambda value: f"{float(value) * scale:.{digits}f}"


def _p_value(value: Any) -> str:
    return f"{float(value):.4f}" if float(value) >= 1e-4 else "<0.0001"


def _holm(value: Any) -> str:
    return _p_value(value) + (" *" if float(value) < HOLM_ALPHA else "")


def _plain(value: Any) -> str:
    return f"{float(value):.4g}" if isinstance(value, Real) and not isinstance(value, Integral) else str(value)


# (key, header, format) of the known metrics of a model row, shown after the Dice columns
MODEL_COLUMNS: Tuple[Tuple[str, str, Formatter], ...] = (
    ("hd95_mean", "HD95 mean (px)", _number(1)),
    ("sensitivity", "Sensitivity", _number(3)),
    ("precision", "Precision", _number(3)),
    ("lesion_f1", "Lesion F1", _number(3)),
    ("lesion_dice", "Lesion Dice", _number(3)),
    ("segm_ap50", "segm AP50 (%)", _number(1)),
    ("segm_ap50_sd", "segm AP50 SD over folds", _number(1)),
    ("params", "Params (M)", _number(2, 1e-6)),
    ("gflops_per_slice", "GFLOPs / slice", _number(2)),
    ("train_minutes", "Training (min)", _number(1)),
    ("slices_per_s", "Slices / s", _number(1)),
    ("n_patients", "Patients", _plain),
    ("runs", "Runs", _plain),
)
DICE_KEYS = ("dice_mean", "dice_sd", "dice_median", "dice_ci_low", "dice_ci_high", "dice_fold_mean", "dice_fold_sd")
PAIRWISE_COLUMNS: Tuple[Tuple[str, str, Formatter], ...] = (
    ("model_a", "Model A", str),
    ("model_b", "Model B", str),
    ("n", "n", str),
    ("median_difference", "Median difference (A − B)", _number(3)),
    ("p_value", "p", _p_value),
    ("p_holm", "p (Holm)", _holm),
)


def _cell(row: Dict[str, Any], key: str, formatter: Formatter) -> str:
    """``row[key]`` formatted: "-" when absent, "n/a" when not a number (nan)."""
    value = row.get(key)
    if value is None:
        return "-"
    if isinstance(value, Real) and not isinstance(value, bool) and math.isnan(value):
        return "n/a"
    return formatter(value)


def _keys(rows: Sequence[Dict[str, Any]]) -> List[str]:
    return list(dict.fromkeys(key for row in rows for key in row))


def _display(rows: Sequence[Dict[str, Any]], columns: Sequence[Tuple[str, str, Formatter]],
             first: Sequence[Tuple[str, Callable[[Dict[str, Any]], str]]], taken: Sequence[str]
             ) -> Tuple[List[str], List[List[str]]]:
    """Headers and text cells: the ``first`` computed columns, the known ``columns`` present, then
    the other keys (not in ``taken``) in order of first appearance."""
    present = _keys(rows)
    known = [(key, header, fmt) for key, header, fmt in columns if key in present]
    used = set(taken) | {key for key, _, _ in columns}
    known += [(key, key, _plain) for key in present if key not in used]
    headers = [h for h, _ in first] + [h for _, h, _ in known]
    cells = [[render(row) for _, render in first] + [_cell(row, k, fmt) for k, _, fmt in known] for row in rows]
    return headers, cells


def model_table(results: ComparisonResults) -> Tuple[List[str], List[List[str]]]:
    """The displayed model table, one row per model in display order.

    Returns:
        tuple: headers and rows of text cells (Dice as "mean ± SD", median, CI "[lo, hi]", the
        known metrics, then any other key).
    """
    rows = sorted(results.table, key=lambda row: results.models.index(row["model"]))
    present = set(_keys(rows))
    dice = _number(3)
    first: List[Tuple[str, Callable[[Dict[str, Any]], str]]] = [("Model", lambda r: str(r["model"]))]
    if "dice_mean" in present and "dice_sd" in present:
        first.append(("Dice per patient (mean ± SD)", lambda r: f"{_cell(r, 'dice_mean', dice)} ± {_cell(r, 'dice_sd', dice)}"))
    elif present & {"dice_mean", "dice_sd"}:
        key = "dice_mean" if "dice_mean" in present else "dice_sd"
        first.append((f"Dice {key[5:]}", lambda r: _cell(r, key, dice)))
    if "dice_fold_mean" in present and "dice_fold_sd" in present:
        first.append(("Dice over folds (mean ± SD)",
                      lambda r: f"{_cell(r, 'dice_fold_mean', dice)} ± {_cell(r, 'dice_fold_sd', dice)}"))
    if "dice_median" in present:
        first.append(("Dice median", lambda r: _cell(r, "dice_median", dice)))
    if present & {"dice_ci_low", "dice_ci_high"}:
        first.append(("Dice 95 % CI",
                      lambda r: f"[{_cell(r, 'dice_ci_low', dice)}, {_cell(r, 'dice_ci_high', dice)}]"))
    return _display(rows, MODEL_COLUMNS, first, ("model", *DICE_KEYS))


def pairwise_table(results: ComparisonResults) -> Tuple[List[str], List[List[str]]]:
    """The displayed pairwise tests (Holm-adjusted p below :data:`HOLM_ALPHA` marked "*")."""
    return _display(results.pairwise, PAIRWISE_COLUMNS, (), ())


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        return float(value)  # written as repr: reads back to the same float
    return value


def to_csv(rows: Sequence[Dict[str, Any]], leading: Sequence[str] = ()) -> str:
    """Rows as CSV: the ``leading`` columns, then every other key in order of first appearance.

    Args:
        rows: dicts (absent keys and None give empty cells).
        leading: columns always written first, even when no row has them.

    Returns:
        str: the CSV text.
    """
    columns = list(dict.fromkeys([*leading, *_keys(rows)]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _csv_value(v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def _markdown_table(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    return "\n".join([line(headers), "|" + "|".join("---" for _ in headers) + "|", *map(line, cells)])


TABLE_NOTE = ("Dice: per-patient 3-D Dice over the test folds (mean ± SD, median, 95 % confidence interval); "
              "overlap metrics are fractions in [0, 1], HD95 in pixels, segm AP50 in percent.")
PAIRWISE_NOTE = (f"Paired tests on the per-patient Dice of the same patients; p (Holm): adjusted for all "
                 f"pairs by Holm's method, * below {HOLM_ALPHA}.")


def to_markdown(results: ComparisonResults, figures: Sequence[str] = ()) -> str:
    """The study in Markdown: tables, the written ``figures`` (file names), notes, commands."""
    parts = [f"# {results.title}", "## Models", _markdown_table(*model_table(results)), TABLE_NOTE,
             "## Pairwise tests"]
    if results.pairwise:
        parts += [_markdown_table(*pairwise_table(results)), PAIRWISE_NOTE]
    else:
        parts.append(f"Pairwise tests: {NOT_AVAILABLE}.")
    for name, title, caption in FIGURES:
        parts += [f"## {title}", f"![{title}]({name})\n\n{caption}" if name in figures else f"{NOT_AVAILABLE}."]
    parts += ["## Notes", "\n".join(f"- {n}" for n in results.notes) or "none",
              "## Commands", "```bash\n" + "\n".join(results.commands) + "\n```" if results.commands else "none"]
    return "\n\n".join(parts) + "\n"


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1150px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
#pairwise td:nth-child(2), #pairwise th:nth-child(2) { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 0.5em 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, .note { color: #555; font-size: 0.9em; } .na { color: #888; font-style: italic; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
"""


def _html_table(table_id: str, headers: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    return f'<table id="{table_id}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


def _not_available(what: str) -> str:
    return f'<p class="na">{html.escape(what)}: {NOT_AVAILABLE}.</p>'


def to_html(results: ComparisonResults, figures: Dict[str, bytes]) -> str:
    """The self-contained report page.

    Args:
        results: the study.
        figures: file name (as in :data:`FIGURES`) -> PNG bytes of the figures drawn; the others
            are "not available".

    Returns:
        str: the HTML document (every text escaped, images inlined, nothing external).
    """
    e = html.escape
    parts = [f"<h1>{e(results.title)}</h1>", "<h2>Notes</h2>",
             "<ul>" + "".join(f"<li>{e(n)}</li>" for n in results.notes) + "</ul>" if results.notes
             else _not_available("Notes"),
             "<h2>Models</h2>", _html_table("models", *model_table(results)), f'<p class="note">{e(TABLE_NOTE)}</p>',
             "<h2>Pairwise tests</h2>"]
    if results.pairwise:
        parts += [_html_table("pairwise", *pairwise_table(results)), f'<p class="note">{e(PAIRWISE_NOTE)}</p>']
    else:
        parts.append(_not_available("Pairwise tests"))
    for name, title, caption in FIGURES:
        parts.append(f"<h2>{e(title)}</h2>")
        if name in figures:
            data = base64.b64encode(figures[name]).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(title)}">'
                         f"<figcaption>{e(caption)}</figcaption></figure>")
        else:
            parts.append(_not_available(title))
    parts += ["<h2>Commands</h2>",
              f"<pre>{e(chr(10).join(results.commands))}</pre>" if results.commands else _not_available("Commands")]
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{e(results.title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def write_comparison_outputs(results: ComparisonResults, out_dir: PathLike) -> Dict[str, Path]:
    """Validate ``results``, render everything, then write the files (see the module docstring).

    Nothing is written until every file is rendered; each file is written atomically.

    Args:
        results: the study.
        out_dir: output folder (created).

    Returns:
        dict[str, Path]: file name -> path of every file written (figures without input are absent).

    Raises:
        ComparisonReportError: inconsistent results, or a file that cannot be written.
    """
    results.validate()
    drawn = {
        "slices.png": plot_slices(results.panels, results.models),
        "dice_boxplot.png": plot_dice_boxplot(results.per_patient, results.models),
        "training_curves.png": plot_training_curves(results.curves, results.models),
    }
    figures = {name: png for name, png in drawn.items() if png is not None}
    rows = sorted(results.table, key=lambda row: results.models.index(row["model"]))
    outputs: Dict[str, Union[str, bytes]] = {
        "comparison.csv": to_csv(rows, ("model",)),
        "comparison.md": to_markdown(results, list(figures)),
        "per_patient.csv": to_csv(results.per_patient, ("patient", "model", "fold")),
        **figures,
        "report.html": to_html(results, figures),
    }
    out_dir = Path(out_dir)
    paths = {}
    try:
        for name, data in outputs.items():
            atomic_write(out_dir / name, data)
            paths[name] = out_dir / name
        for name in drawn.keys() - figures.keys():
            (out_dir / name).unlink(missing_ok=True)  # a figure of an earlier study would mislead
    except OSError as err:
        raise ComparisonReportError(f"cannot write the comparison outputs into {out_dir}: {err.strerror}") from None
    return paths
