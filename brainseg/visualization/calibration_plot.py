"""The reliability diagram of pixel-level tumour probabilities: per equal-width bin, the mean
predicted probability against the observed tumour frequency, and the pixel count of each bin."""
import io
import os
from typing import Optional, Union

import numpy as np

from brainseg.evaluation.calibration import ReliabilityBins
from brainseg.utils.io import atomic_write

__all__ = ["save_reliability_diagram"]


def save_reliability_diagram(
    bins: ReliabilityBins,
    path: Union[str, os.PathLike],
    *,
    title: Optional[str] = None,
) -> None:
    """Draw the reliability diagram of ``bins`` into a PNG at ``path`` (atomically).

    Top: observed tumour frequency per bin (bars over the bin's width) and the bin's mean predicted
    probability (markers), with the diagonal of perfect calibration; the ECE in the legend.
    Bottom: pixels per bin, log scale (empty bins are left blank).

    Args:
        bins: accumulated reliability bins (see :mod:`brainseg.evaluation.calibration`).
        path: the PNG to write.
        title: figure title (default "Reliability diagram").
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    edges = bins.edges()
    width = np.diff(edges)
    filled = bins.counts > 0
    confidence, observed = bins.mean_probability(), bins.observed_frequency()

    figure = Figure(figsize=(5, 6.5), dpi=100)
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1, label="perfect calibration")
    top.bar(edges[:-1][filled], observed[filled], width=width[filled], align="edge", color="tab:blue",
            alpha=0.6, edgecolor="tab:blue", label="observed tumour frequency")
    top.plot(confidence[filled], observed[filled], "o", color="tab:red", markersize=4,
             label=f"mean predicted probability (ECE {bins.ece():.4f})")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("observed tumour frequency")
    top.set_title(title or "Reliability diagram")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(edges[:-1][filled], bins.counts[filled], width=width[filled], align="edge", color="0.4")
    if filled.any():
        bottom.set_yscale("log")
    bottom.set_xlabel(f"predicted tumour probability ({bins.num_bins} equal-width bins)")
    bottom.set_ylabel("pixels")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write(path, buffer.getvalue())
