"""Pictures and reports: overlays of predictions on slices, dataset grids, the results table
and training curves of runs, and the seed range of the demo. Above evaluation (it scores what
it draws), below inference and engine (which write overlays with it)."""
from .browse import PredictionMasks, compose_grid, parse_grid, record_truth, tile_title
from .calibration_plot import save_reliability_diagram
from .comparison_report import ComparisonResults, SlicePanel, write_comparison_outputs
from .overlay import draw_overlay, save_overlay_png, write_dataset_overlays
from .report import write_report

__all__ = [
    "PredictionMasks",
    "compose_grid",
    "parse_grid",
    "record_truth",
    "tile_title",
    "draw_overlay",
    "save_overlay_png",
    "write_dataset_overlays",
    "write_report",
    "save_reliability_diagram",
    "ComparisonResults",
    "SlicePanel",
    "write_comparison_outputs",
]
