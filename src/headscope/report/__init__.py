"""The report: figures (PNG and SVG under ``figures/``) and a self-contained ``report/index.html``.

The names below are imported on first use (PEP 562): an analysis drawing with ``headscope.report.figures``
does not import ``report.build``, which imports the analyses (that would be an import circle).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from headscope.report.build import build_report
    from headscope.report.figures import head_grid, layer_head_heatmap, save_figure

_EXPORTS = {"build_report": "headscope.report.build", "head_grid": "headscope.report.figures",
            "layer_head_heatmap": "headscope.report.figures", "save_figure": "headscope.report.figures"}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'headscope.report' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


__all__ = ["build_report", "head_grid", "layer_head_heatmap", "save_figure"]
