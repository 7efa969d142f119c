"""The head similarity section (Clark et al. 2019, section 6): the heads placed by MDS of their distances."""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd

from headscope.analyses.base import head_name
from headscope.analyses.distance import PATTERNS
from headscope.analyses.similarity import CONVENTIONS
from headscope.report.figures import COLUMN_WIDTH, MIN_FONT
from headscope.report.section import ReportSection, SectionStart, conventions_html, opens
from headscope.report.sections.distance import pattern_colour


@opens("similarity", table="mds")
def section(start: SectionStart) -> ReportSection:
    run = start.run
    mds, figs = start.table, start.figs
    xy = mds[["x", "y"]].to_numpy(float)
    layer = mds["layer"].to_numpy(int)
    empty = "MDS: every head sits at the same point (no distances to place them by)."
    pictures = [figs.plot(lambda: mds_figure(mds, layer, "layer"), "similarity_mds_layer",
                          "MDS of the heads, coloured by layer", xy, empty)]
    for column, what in (("pattern", "cluster pattern"), ("head_pattern", "own pattern")):
        if column in run.heads.columns:
            colour = mds.merge(run.heads[["layer", "head", column]], on=["layer", "head"], how="left")[column]
            labels = colour.fillna("?").to_numpy(str)
            pictures.append(figs.plot(lambda labels=labels, what=what: mds_figure(mds, labels, what),
                                      f"similarity_mds_{column}", f"MDS of the heads, coloured by {what}", xy, empty))
    used = start.summary
    body = (f"<p>Heads placed by 2-D metric MDS of the mean Jensen-Shannon divergence between their attention "
            f"rows (Clark et al. 2019, section 6), over {html.escape(str(used.get('tokens_used', '?')))} query "
            f"tokens of {html.escape(str(used.get('tokens_seen', '?')))} (seeded sample). Heads are named where "
            "their label does not cover another's.</p>"
            + conventions_html(run, "similarity", CONVENTIONS) + "".join(pictures))
    return start.section("Head similarity", body)


def label_points(ax: Any, x: np.ndarray, y: np.ndarray, names: list[str], size: float) -> int:
    """Write ``names`` beside their points at ``size`` points where a label does not overlap one already
    written (the points farthest from the centre first); return how many were written."""
    fig = ax.figure
    fig.canvas.draw()
    to_px = ax.transData.transform
    points = to_px(np.column_stack([x, y]))
    scale = fig.dpi / 72
    height = size * 1.4 * scale
    centre = points.mean(axis=0)
    order = np.argsort(-np.hypot(*(points - centre).T))
    placed: list[tuple[float, float, float, float]] = []
    bbox = ax.get_window_extent()
    for k in order:
        width = len(names[k]) * 0.7 * size * scale + 2 * scale
        x0, y0 = points[k][0] + 2 * scale, points[k][1] - height / 2
        box = (x0, y0, x0 + width, y0 + height)
        if box[2] > bbox.x1 or box[1] < bbox.y0 or box[3] > bbox.y1:
            continue
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
            continue
        placed.append(box)
        ax.annotate(names[k], (x[k], y[k]), xytext=(2, 0), textcoords="offset points", va="center",
                    fontsize=size, color="0.25")
    return len(placed)


def mds_figure(mds: pd.DataFrame, colour: np.ndarray, what: str) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, COLUMN_WIDTH), layout="constrained")
    x, y = mds["x"].to_numpy(float), mds["y"].to_numpy(float)
    if what == "layer":
        sc = ax.scatter(x, y, c=colour, cmap="viridis", s=14)
        fig.colorbar(sc, ax=ax, label="layer", shrink=0.8)
    else:
        for value in sorted(set(colour), key=lambda v: (PATTERNS.index(v) if v in PATTERNS else len(PATTERNS), v)):
            sel = colour == value
            ax.scatter(x[sel], y[sel], s=14, color=pattern_colour(value), label=value)
        ax.legend(loc="best", markerscale=0.8, frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"Heads by JS distance (MDS), by {what}")
    label_points(ax, x, y, [head_name(la, he) for la, he in zip(mds["layer"], mds["head"], strict=True)], MIN_FONT)
    return fig
