"""The direct heat map (report/heatmap.py) against matplotlib's: same cell colours, same layout, valid SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from headscope.report.figures import COLUMN_WIDTH, layer_head_heatmap, save_heatmap
from headscope.report.heatmap import MARGINS, colour_ticks, heatmap_png, heatmap_size, heatmap_svg, tick_label


def _grid() -> np.ndarray:
    grid = np.random.default_rng(0).random((6, 12))
    grid[2, 3] = np.nan
    return grid


def _cell_centres(shape: tuple[int, int], dpi: int) -> list[tuple[int, int, int, int]]:
    """(layer, head, x, y) pixel centres of every cell, from the fixed margins."""
    w, h = heatmap_size(shape[0], COLUMN_WIDTH)
    left, right, bottom, top = MARGINS
    x0, x1, y0, y1 = left * dpi, (w - right) * dpi, top * dpi, (h - bottom) * dpi
    cw, ch = (x1 - x0) / shape[1], (y1 - y0) / shape[0]
    return [(i, j, int(x0 + (j + 0.5) * cw), int(y0 + (i + 0.5) * ch)) for i in range(shape[0])
            for j in range(shape[1])]


@pytest.mark.parametrize(("cmap", "vmin", "vmax"), [("viridis", None, None), ("RdBu_r", -0.5, 1.5)])
def test_png_cells_have_the_colour_maps_colours(tmp_path: Path, cmap: str, vmin: float | None,
                                                vmax: float | None) -> None:
    grid = _grid()
    heatmap_png(grid, tmp_path / "h.png", "title", cmap=cmap, label="x", vmin=vmin, vmax=vmax, width=COLUMN_WIDTH)
    image = np.asarray(Image.open(tmp_path / "h.png").convert("RGB"))
    w, h = heatmap_size(6, COLUMN_WIDTH)
    assert image.shape == (round(h * 300), round(w * 300), 3)
    lo = np.nanmin(grid) if vmin is None else vmin
    hi = np.nanmax(grid) if vmax is None else vmax
    for i, j, x, y in _cell_centres(grid.shape, 300):
        if np.isnan(grid[i, j]):
            assert tuple(image[y, x]) == (255, 255, 255)
            continue
        want = np.rint(np.asarray(matplotlib.colormaps[cmap]((grid[i, j] - lo) / (hi - lo))[:3]) * 255)
        np.testing.assert_array_equal(image[y, x], want)


def test_agrees_with_matplotlibs_heat_map(tmp_path: Path) -> None:
    grid = _grid()
    fig = layer_head_heatmap(grid, "title", label="x")
    fig.savefig(tmp_path / "mpl.png", dpi=300)
    reference = np.asarray(Image.open(tmp_path / "mpl.png").convert("RGB")).astype(int)
    heatmap_png(grid, tmp_path / "fast.png", "title", label="x", width=COLUMN_WIDTH)
    fast = np.asarray(Image.open(tmp_path / "fast.png").convert("RGB")).astype(int)
    assert fast.shape == reference.shape
    for i, j, x, y in _cell_centres(grid.shape, 300):
        # matplotlib resamples the image; at a cell's centre both show that cell's colour.
        assert np.abs(fast[y, x] - reference[y, x]).max() <= 2, (i, j)


def test_svg_is_valid_with_one_rect_per_cell_and_escaped_text() -> None:
    grid = _grid()
    svg = heatmap_svg(grid, "a <b> & c", label="x < y")
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert "a <b> & c" in texts and "x < y" in texts and "head" in texts and "layer" in texts
    fills = [r.get("fill") for g in root.iter(f"{ns}g") for r in g.iter(f"{ns}rect")]
    cells = fills[:grid.size]
    lo, hi = np.nanmin(grid), np.nanmax(grid)
    for k, fill in enumerate(cells):
        value = grid.flat[k]
        if np.isnan(value):
            assert fill == "#ffffff"
        else:
            rgb = np.rint(np.asarray(matplotlib.colormaps["viridis"]((value - lo) / (hi - lo))[:3]) * 255).astype(int)
            assert fill == "#{:02x}{:02x}{:02x}".format(*rgb)


def test_colour_ticks_and_labels() -> None:
    assert [round(t, 6) for t in colour_ticks(0.0, 1.0)] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert all(0.013 <= t <= 0.98 for t in colour_ticks(0.013, 0.98))
    assert tick_label(-0.02) == "\u22120.02" and tick_label(0.30000000000000004) == "0.3"


def test_save_heatmap_writes_both_files(tmp_path: Path) -> None:
    paths = save_heatmap(_grid(), tmp_path, "h", "title", label="x", vmin=0, vmax=1)
    assert paths["svg"].read_text().startswith("<svg") and Image.open(paths["png"]).format == "PNG"
