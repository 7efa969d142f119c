"""Figures for papers: every figure is written as PNG and SVG at a size that fits one paper column."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

#: Width of one column of a two-column paper (ACL style), in inches.
COLUMN_WIDTH = 3.3

#: The smallest text of any figure, in points: readable at one paper column's width.
MIN_FONT = 7

plt.rcParams.update({"font.size": MIN_FONT, "axes.titlesize": 8, "legend.fontsize": MIN_FONT,
                     "xtick.labelsize": MIN_FONT, "ytick.labelsize": MIN_FONT, "svg.fonttype": "none",
                     "figure.dpi": 100, "savefig.dpi": 300, "svg.hashsalt": "headscope"})


def head_grid(heads: pd.DataFrame, column: str) -> np.ndarray:
    """A per-head column as an array of shape (n_layers, n_heads)."""
    n_layers = int(heads["layer"].max()) + 1
    n_heads = int(heads["head"].max()) + 1
    grid = np.full((n_layers, n_heads), np.nan)
    grid[heads["layer"].to_numpy(int), heads["head"].to_numpy(int)] = heads[column].to_numpy(float)
    return grid


def layer_head_heatmap(grid: np.ndarray, title: str, cmap: str = "viridis", label: str = "",
                       vmin: float | None = None, vmax: float | None = None) -> plt.Figure:
    """A layer x head heat map (layer 0 at the top, heads across, 0-based, every one ticked) of ``grid``.

    The axes and the colour bar sit at the fixed margins of :mod:`headscope.report.heatmap` (which draws the
    same picture without matplotlib, for :func:`save_heatmap`) rather than a layout engine. Use this one when
    the figure gets more marks before it is saved.
    """
    from headscope.report.heatmap import MARGINS, heatmap_size, label_step

    n_layers, n_heads = grid.shape
    width, height = heatmap_size(n_layers, COLUMN_WIDTH)
    left, right, bottom, top = MARGINS
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((left / width, bottom / height, (width - left - right) / width,
                       (height - bottom - top) / height))
    cax = fig.add_axes(((width - right + 0.08) / width, bottom / height, 0.1 / width,
                        (height - bottom - top) / height))
    im = ax.imshow(grid, cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    axes_width, axes_height = (width - left - right) * 72 / n_heads, (height - bottom - top) * 72 / n_layers
    across, down = label_step(n_heads, axes_width), label_step(n_layers, axes_height, across=False)
    ax.set_xticks(range(n_heads), [str(j) if j % across == 0 else "" for j in range(n_heads)])
    ax.set_yticks(range(n_layers), [str(i) if i % down == 0 else "" for i in range(n_layers)])
    fig.colorbar(im, cax=cax, label=label)
    return fig


#: Worker processes that render figures while the report goes on (set inside :func:`parallel_figures`).
_pool: ProcessPoolExecutor | None = None
_pending: list[Future[None]] = []


@contextmanager
def parallel_figures(workers: int | None = None) -> Iterator[None]:
    """Render the figures saved inside this block in worker processes; leaving it waits for all of them.

    Rendering (PNG at 300 dpi and SVG) is most of a report's time, and each figure is independent, so the
    figures are pickled to a pool and drawn there while the sections go on. Errors of a worker are raised on
    leaving. With one CPU, or nested, the figures are rendered in this process as before.
    """
    global _pool
    n = workers if workers is not None else min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                                   else os.cpu_count() or 1)
    if _pool is not None or n < 2:
        yield
        return
    # fork is cheap and needs no re-import; where it is not the default (macOS, Windows) use spawn.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    _pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context(method))
    try:
        yield
        for future in _pending:
            future.result()
    finally:
        _pending.clear()
        _pool.shutdown(wait=True, cancel_futures=True)
        _pool = None


def _render(fig: plt.Figure, paths: dict[str, Path]) -> None:
    fig.savefig(paths["svg"], metadata={"Date": None})
    # The first save has placed every axes; without this the PNG would run the constrained layout again,
    # which is about 40% of drawing a figure (bench/write_phase.py).
    fig.set_layout_engine("none")
    fig.savefig(paths["png"], metadata={"Software": None})
    plt.close(fig)


def _render_pickled(data: bytes, paths: dict[str, Path]) -> None:
    _render(pickle.loads(data), paths)


def _heatmap_files(grid: np.ndarray, options: dict[str, Any], paths: dict[str, Path]) -> None:
    from headscope.report.heatmap import heatmap_png, heatmap_svg

    options = {"width": COLUMN_WIDTH, **options}
    paths["svg"].write_text(heatmap_svg(grid, **options), encoding="utf-8")
    heatmap_png(grid, paths["png"], **options)


def save_heatmap(grid: np.ndarray, directory: str | Path, name: str, title: str, **options: Any
                 ) -> dict[str, Path]:
    """A layer x head heat map of ``grid`` (shape (n_layers, n_heads)) written as ``name.svg`` and ``name.png``.

    Drawn by :mod:`headscope.report.heatmap` (the look of :func:`layer_head_heatmap` without building a
    matplotlib figure: a report has dozens of these). ``options``: ``cmap``, ``label``, ``vmin``, ``vmax``,
    ``marks`` (boolean array: a dot per True cell), ``texts`` (array of strings written in the cells), ``width``
    (inches, default one column). Prefer :meth:`headscope.report.section.SectionFigures.head_map`, which
    writes a sentence instead of a map without spread.
    Inside :func:`parallel_figures` a worker draws it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {ext: directory / f"{name}.{ext}" for ext in ("svg", "png")}
    if _pool is None:
        _heatmap_files(np.asarray(grid, dtype=float), {"title": title, **options}, paths)
    else:
        _pending.append(_pool.submit(_heatmap_files, np.asarray(grid, dtype=float), {"title": title, **options},
                                     paths))
    return paths


def save_figure(fig: plt.Figure, directory: str | Path, name: str) -> dict[str, Path]:
    """Write ``name.png`` and ``name.svg`` into ``directory``; close the figure.

    Inside :func:`parallel_figures` the files are written by a worker and exist once that block has ended.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {ext: directory / f"{name}.{ext}" for ext in ("svg", "png")}
    if _pool is None:
        _render(fig, paths)
    else:
        data = pickle.dumps(fig)
        plt.close(fig)
        _pending.append(_pool.submit(_render_pickled, data, paths))
    return paths
