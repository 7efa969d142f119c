"""The figures of a comparison: change maps centred on 0 and the by-layer panels (matplotlib)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from headscope.report.section import SectionFigures, fmt, numbers, value_range, varies


def delta_map(figs: SectionFigures, values: pd.DataFrame, column: str, title: str, name: str, caption: str,
              marks: pd.DataFrame | None = None, what: str | None = None) -> str:
    """A layer x head map of a change, centred on 0 (``marks``: (layer, head) rows get a dot), or the sentence
    saying it did not change (:meth:`~headscope.report.section.SectionFigures.head_map`)."""
    from headscope.report.figures import head_grid

    grid = head_grid(values, column)
    limit = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 0.0
    dots = None
    if marks is not None and len(marks):
        dots = np.zeros(grid.shape, dtype=bool)
        dots[marks["layer"].to_numpy(int), marks["head"].to_numpy(int)] = True
    return figs.head_map(grid, name, title, caption, what=what or f"{caption} (B - A)", cmap="RdBu_r", label="B - A",
                         vmin=-(limit or 1.0), vmax=limit or 1.0, marks=dots)


def layer_figure(layers: pd.DataFrame, scores: bool = True, changes: bool = True) -> Any:
    """Per layer: mean |change| of the role scores (``scores``), and roles gained and lost (``changes``); a
    panel whose numbers do not vary is left out (the page says its value in a sentence)."""
    import matplotlib.pyplot as plt

    from headscope.report.figures import COLUMN_WIDTH

    panels = int(scores) + int(changes)
    fig, grid = plt.subplots(panels, 1, figsize=(COLUMN_WIDTH, COLUMN_WIDTH * panels / 2), layout="constrained",
                             sharex=True, squeeze=False)
    axes = list(grid[:, 0])
    if scores:
        top = axes.pop(0)
        top.bar(layers["layer"], layers["mean_abs_delta_role_score"], color="grey")
        top.set_ylabel("mean |delta score|")
    if changes:
        bottom = axes.pop(0)
        width = 0.4
        bottom.bar(layers["layer"] - width / 2, layers["roles_gained"], width, label="gained", color="tab:blue")
        bottom.bar(layers["layer"] + width / 2, layers["roles_lost"], width, label="lost", color="tab:red")
        bottom.set_ylabel("head x role")
        bottom.legend(frameon=False)
    fig.axes[-1].set_xlabel("layer")
    fig.axes[-1].set_xticks(layers["layer"])
    return fig


def layer_constants(layers: pd.DataFrame) -> tuple[bool, bool, list[str]]:
    """Which of the by-layer panels vary (the mean |change| of the role scores; the roles gained and lost),
    and what each that does not says (a constant is said, not drawn)."""
    scores = varies(layers["mean_abs_delta_role_score"])
    changes = varies(numbers(layers["roles_gained"], layers["roles_lost"]))
    said = []
    if not scores and value_range(layers["mean_abs_delta_role_score"]) is not None:
        value = float(layers["mean_abs_delta_role_score"].dropna().iloc[0])
        said.append("no role score changed" if value == 0 else
                    f"the mean |change| of the role scores is {fmt(value)} in every layer")
    if not changes:
        gained, lost = int(layers["roles_gained"].iloc[0]), int(layers["roles_lost"].iloc[0])
        said.append("no role was gained or lost in any layer" if gained == lost == 0 else
                    f"every layer gained {gained} and lost {lost} head x role pairs")
    return scores, changes, said
