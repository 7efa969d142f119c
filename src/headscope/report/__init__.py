"""The report: figures (PNG and SVG under ``figures/``) and a self-contained ``report/index.html``.

The names below are imported on first use (PEP 562): an analysis drawing with ``headscope.report.figures``
does not import ``report.build``, which imports the analyses (that would be an import circle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headscope.lazy import lazy_exports

if TYPE_CHECKING:
    from headscope.report.build import build_report
    from headscope.report.figures import head_grid, layer_head_heatmap, save_figure

_EXPORTS = {"build_report": "headscope.report.build", "head_grid": "headscope.report.figures",
            "layer_head_heatmap": "headscope.report.figures", "save_figure": "headscope.report.figures"}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


__all__ = ["build_report", "head_grid", "layer_head_heatmap", "save_figure"]
