"""Figures for papers: every figure is written as PNG and SVG at a size that fits one paper column."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

#: Width of one column of a two-column paper (ACL style), in inches.
COLUMN_WIDTH = 3.3

plt.rcParams.update({"font.size": 7, "axes.titlesize": 8, "svg.fonttype": "none", "figure.dpi": 100,
                     "savefig.dpi": 300, "svg.hashsalt": "headscope"})


def head_grid(heads: pd.DataFrame, column: str) -> np.ndarray:
    """A per-head column as an array of shape (n_layers, n_heads)."""
    n_layers = int(heads["layer"].max()) + 1
    n_heads = int(heads["head"].max()) + 1
    grid = np.full((n_layers, n_heads), np.nan)
    grid[heads["layer"].to_numpy(int), heads["head"].to_numpy(int)] = heads[column].to_numpy(float)
    return grid


def layer_head_heatmap(grid: np.ndarray, title: str, cmap: str = "viridis", label: str = "",
                       vmin: float | None = None, vmax: float | None = None) -> plt.Figure:
    """A layer x head heat map (layers down, heads across, 0-based)."""
    n_layers, n_heads = grid.shape
    height = min(COLUMN_WIDTH * 1.4, 0.9 + 0.2 * n_layers)
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, height), layout="constrained")
    im = ax.imshow(grid, cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    step = max(1, n_heads // 12)
    ax.set_xticks(range(0, n_heads, step))
    ax.set_yticks(range(0, n_layers, max(1, n_layers // 12)))
    fig.colorbar(im, ax=ax, label=label, shrink=0.9)
    return fig


def save_figure(fig: plt.Figure, directory: str | Path, name: str) -> dict[str, Path]:
    """Write ``name.png`` and ``name.svg`` into ``directory``; close the figure."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for ext in ("png", "svg"):
        path = directory / f"{name}.{ext}"
        fig.savefig(path, metadata={"Date": None} if ext == "svg" else {"Software": None})
        paths[ext] = path
    plt.close(fig)
    return paths
