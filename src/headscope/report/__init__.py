"""The report: figures (PNG and SVG under ``figures/``) and a self-contained ``report/index.html``."""

from headscope.report.build import build_report
from headscope.report.figures import head_grid, layer_head_heatmap, save_figure

__all__ = ["build_report", "head_grid", "layer_head_heatmap", "save_figure"]
