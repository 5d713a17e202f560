"""The figures of a model-comparison study (see :mod:`brainseg.visualization.comparison_report`).

* :func:`plot_slices`: the same test slices for every model, one row per slice: image | ground
  truth | one panel per model (prediction contour on the slice, with the slice's Dice).
* :func:`plot_dice_boxplot`: per-patient Dice per model, a box plot with the patients overlaid.
* :func:`plot_training_curves`: one subplot per logged series ("loss", "val dice", ...), one line
  per model.

Each function returns the PNG as bytes (matplotlib's Agg canvas, no display needed), or None when
its input holds nothing to draw. A model keeps the same colour in every figure (:func:`model_colors`).
"""

import io
import math
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from brainseg.evaluation.metrics import dice_score
from brainseg.visualization.overlay import FLAIR_CHANNEL, display_image, draw_overlay

__all__ = [
    "SlicePanel",
    "slice_dice",
    "slice_dice_labels",
    "model_colors",
    "plot_slices",
    "plot_dice_boxplot",
    "plot_training_curves",
]

DPI = 100
# model -> series name -> [(iteration, value), ...]
Curves = Mapping[str, Mapping[str, Sequence[Tuple[int, float]]]]


@dataclass
class SlicePanel:
    """One test slice as every model segmented it (a row of :func:`plot_slices`).

    Attributes:
        label: row label, e.g. "TCGA_CS_4941_19960909 slice 12".
        image: (H, W, 3) uint8 slice (pre-contrast, FLAIR, post-contrast) or (H, W) grayscale.
        truth: (H, W) bool ground-truth mask.
        predictions: model name -> (H, W) bool predicted mask, one per model of the study.
    """

    label: str
    image: np.ndarray
    truth: np.ndarray
    predictions: Dict[str, np.ndarray] = field(default_factory=dict)


def slice_dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of one 2-D slice, for display: 1.0 when prediction and truth are both empty.

    A slice without tumour that the model leaves empty is a perfect answer on the figure
    (unlike :func:`brainseg.evaluation.metrics.dice_score`, which returns ``nan`` and lets the
    evaluators decide how to count such cases).

    Args:
        prediction: (H, W) binary predicted mask.
        truth: (H, W) binary ground-truth mask.

    Returns:
        float: Dice in [0, 1].
    """
    dice = dice_score(prediction, truth)
    return 1.0 if math.isnan(dice) else dice


def slice_dice_labels(panel: SlicePanel, models: Sequence[str]) -> Dict[str, str]:
    """The text written on each model's panel of a slice, ``{model: "Dice 0.842"}``."""
    return {model: f"Dice {slice_dice(panel.predictions[model], panel.truth):.3f}" for model in models}


def model_colors(models: Sequence[str]) -> Dict[str, str]:
    """One matplotlib colour per model (the default cycle "C0", "C1", ..., in display order)."""
    return {model: f"C{index % 10}" for index, model in enumerate(models)}


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _bare(ax: Any) -> None:
    """No ticks and no frame, but keep the axis labels (``axis("off")`` would hide them)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def plot_slices(
    panels: Sequence[SlicePanel],
    models: Sequence[str],
    *,
    channel: Optional[int] = FLAIR_CHANNEL,
    panel_size: float = 1.9,
) -> Optional[bytes]:
    """One row per slice: image | ground truth | one panel per model.

    The ground-truth panel shows the truth contour (green) on the slice; each model panel shows
    the truth contour and the model's predicted contour (red) with the slice's Dice
    (:func:`slice_dice`) written in its top-left corner.

    Args:
        panels: the slices; each must have a prediction of every model in ``models``.
        models: the model columns, in display order.
        channel: image channel shown (default FLAIR); None for the RGB composite.
        panel_size: size of one panel in inches.

    Returns:
        bytes | None: the PNG, or None without panels.
    """
    if not panels:
        return None
    titles = ["image", "ground truth", *models]
    figure = _new_figure(len(titles) * panel_size, len(panels) * panel_size + 0.5)
    axes = figure.subplots(len(panels), len(titles), squeeze=False)
    for row, panel in enumerate(panels):
        thickness = max(1, int(np.shape(panel.truth)[0]) // 128)
        axes[row, 0].imshow(display_image(panel.image, channel))
        axes[row, 1].imshow(draw_overlay(panel.image, None, panel.truth, channel=channel, thickness=thickness))
        labels = slice_dice_labels(panel, models)
        for ax, model in zip(axes[row, 2:], models):
            overlay = draw_overlay(panel.image, panel.predictions[model], panel.truth, channel=channel,
                                   thickness=thickness)
            ax.imshow(overlay)
            ax.text(0.03, 0.97, labels[model], transform=ax.transAxes, ha="left", va="top", fontsize=7,
                    color="white", bbox={"facecolor": "black", "alpha": 0.6, "pad": 1.5, "linewidth": 0})
        axes[row, 0].set_ylabel(panel.label, fontsize=7)
        for ax in axes[row]:
            _bare(ax)
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=8)
    figure.suptitle("ground-truth contour green, prediction contour red", fontsize=8)
    return _png(figure)


def _finite(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def plot_dice_boxplot(per_patient: Sequence[Mapping[str, Any]], models: Sequence[str]) -> Optional[bytes]:
    """Box plot of the per-patient Dice of each model, every patient drawn as a point.

    Rows whose ``dice`` is missing or not finite (e.g. ``nan``: no tumour in truth nor
    prediction) are left out; each box is labelled with its number of patients.

    Args:
        per_patient: rows with ``model`` and ``dice`` (other keys ignored).
        models: the boxes, in display order.

    Returns:
        bytes | None: the PNG, or None when no row has a finite Dice.
    """
    values = {m: [float(r["dice"]) for r in per_patient if r.get("model") == m and _finite(r.get("dice"))]
              for m in models}
    drawn = [m for m in models if values[m]]
    if not drawn:
        return None
    colors = model_colors(models)
    figure = _new_figure(max(4.5, 1.4 * len(drawn) + 1.5), 4.0)
    ax = figure.subplots()
    positions = np.arange(1, len(drawn) + 1)
    ax.boxplot([values[m] for m in drawn], positions=positions, widths=0.55, showfliers=False,
               medianprops={"color": "black"})
    jitter = np.random.default_rng(0)  # fixed: the same study gives the same picture
    for position, model in zip(positions, drawn):
        x = position + jitter.uniform(-0.13, 0.13, len(values[model]))
        ax.scatter(x, values[model], s=14, color=colors[model], alpha=0.75, zorder=3, linewidths=0)
    ax.set_xticks(positions, [f"{m}\n(n={len(values[m])})" for m in drawn], fontsize=8)
    ax.set(ylabel="per-patient Dice", ylim=(-0.02, 1.02), title="Per-patient Dice on the test folds")
    ax.grid(axis="y", alpha=0.3)
    return _png(figure)


def plot_training_curves(curves: Curves, models: Sequence[str], *, columns: int = 3) -> Optional[bytes]:
    """One subplot per series name (in order of first appearance), one line per model.

    Args:
        curves: model -> series name -> ``(iteration, value)`` points (any order; sorted here).
        models: the lines, in display order (a model without a series has no line in it).
        columns: subplots per row.

    Returns:
        bytes | None: the PNG, or None when no series has a point.
    """
    series = list(dict.fromkeys(name for m in models for name, points in curves.get(m, {}).items() if points))
    if not series:
        return None
    colors = model_colors(models)
    columns = min(columns, len(series))
    rows = math.ceil(len(series) / columns)
    figure = _new_figure(4.2 * columns, 3.3 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, name in zip(axes, series):
        for model in models:
            points = curves.get(model, {}).get(name)
            if points:
                iterations, values = zip(*sorted(points))
                ax.plot(iterations, values, color=colors[model], label=model, linewidth=1.2,
                        marker="." if len(points) < 30 else None)
        ax.set(title=name, xlabel="iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(series):]:
        ax.set_visible(False)
    return _png(figure)
