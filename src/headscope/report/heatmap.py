"""The layer x head heat map drawn directly as SVG and PNG, without building a matplotlib figure.

A report draws dozens of these (one per surface statistic, syntax relation, decoder score ...), and
matplotlib spends about 0.1 s on each for its artists and layout, most of a report's time on a small run.
This draws the same picture (the look of :func:`headscope.report.figures.layer_head_heatmap`: matplotlib's
colour maps and tick choice, DejaVu Sans, fixed margins; the right one widens when the colour bar's ticks
and label need it, so they are never cut off) as SVG text and as a PIL image, in a few
milliseconds. Colours come from matplotlib's colour maps, so both paths agree cell for cell.
"""

from __future__ import annotations

import html
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage
    from PIL.ImageFont import FreeTypeFont

#: Inches: left (layer ticks and label), right (colour bar, ticks, label), bottom (head ticks and label), top.
MARGINS = (0.42, 0.75, 0.36, 0.22)
#: Font sizes in points, as the figures' rcParams (font.size 7, axes.titlesize 8).
FONT, TITLE = 7.0, 8.0
TICK = 3.5 / 72  # tick length, inches
DPI = 300


def heatmap_size(n_layers: int, width: float) -> tuple[float, float]:
    """Width and height in inches of a heat map of ``n_layers`` layers at ``width`` inches."""
    return width, min(width * 1.4, 0.9 + 0.2 * n_layers)


def cell_colours(grid: np.ndarray, cmap: str, vmin: float | None, vmax: float | None
                 ) -> tuple[np.ndarray, float, float]:
    """RGB of each cell (uint8, shape (n_layers, n_heads, 3); NaN cells white) and the colour range used."""
    import matplotlib

    finite = grid[np.isfinite(grid)]
    lo = float(vmin) if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = float(vmax) if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if hi <= lo:  # matplotlib's Normalize maps a constant to 0 as well
        hi = lo + 1e-12
    scaled = np.clip((grid - lo) / (hi - lo), 0.0, 1.0)
    rgba = matplotlib.colormaps[cmap](np.nan_to_num(scaled))
    rgb = np.rint(rgba[..., :3] * 255).astype(np.uint8)
    rgb[~np.isfinite(grid)] = 255
    return rgb, lo, hi


def colour_ticks(lo: float, hi: float) -> list[float]:
    """The colour bar's ticks inside [lo, hi], chosen as matplotlib's default locator does."""
    from matplotlib.ticker import MaxNLocator

    ticks = MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
    span = hi - lo
    return [float(t) for t in ticks if lo - 1e-9 * span <= t <= hi + 1e-9 * span]


def tick_label(value: float) -> str:
    """A tick's text: shortest form, with a real minus sign as matplotlib writes it."""
    text = f"{round(value, 10):g}"
    return text.replace("-", "\u2212")


#: Width of one character of the tick font, as a share of its size (DejaVu Sans digits are 0.64 em).
CHAR = 0.64


def label_step(n: int, cell: float, across: bool = True) -> int:
    """Every how many columns (``across``) or rows of ``cell`` points a 7-point index label fits: 1, 2, 5, ..."""
    need = len(str(max(n - 1, 0))) * CHAR * FONT + 2.0 if across else FONT + 1.0
    for step in (1, 2, 5, 10, 20, 50, 100):
        if step * cell >= need:
            return step
    return 100


def right_margin(lo: float, hi: float, label: str) -> float:
    """Inches right of the axes: the colour bar, its widest tick text and its label, never cut off."""
    widest = max((len(tick_label(t)) for t in colour_ticks(lo, hi)), default=1)
    needed = 0.08 + 0.10 + (TICK * 72 + 4 + widest * CHAR * FONT + (1.4 * FONT if label else 0) + 4) / 72
    return max(MARGINS[1], needed)


def _layout(shape: tuple[int, int], width: float, right: float | None = None) -> dict[str, float]:
    w, h = heatmap_size(shape[0], width)
    left, default_right, bottom, top = MARGINS
    right = default_right if right is None else right
    return {"w": w, "h": h, "x0": left, "x1": w - right, "y0": top, "y1": h - bottom,
            "cx0": w - right + 0.08, "cx1": w - right + 0.18}


def _ticks(n: int) -> range:
    """Every row and column is ticked (labels: see :func:`label_step`)."""
    return range(n)


def _ink(rgb: np.ndarray) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgb``."""
    r, g, b = (float(c) / 255 for c in rgb[:3])
    return "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "#fff"


def heatmap_svg(grid: np.ndarray, title: str, cmap: str = "viridis", label: str = "", vmin: float | None = None,
                vmax: float | None = None, width: float = 3.3, marks: np.ndarray | None = None,
                texts: np.ndarray | None = None) -> str:
    """The heat map of ``grid`` (shape (n_layers, n_heads)) as an SVG document (units: points).

    Layer 0 is the top row; every head and layer is ticked. ``marks``: a boolean array of the grid's shape,
    a dot in each True cell (a significant change, say); ``texts``: an array of strings of the grid's shape,
    written in the cells at 7 points (black or white, whichever reads on the cell).
    """
    rgb, lo, hi = cell_colours(grid, cmap, vmin, vmax)
    n_layers, n_heads = grid.shape
    g = _layout(grid.shape, width, right_margin(lo, hi, label))
    pt = 72.0
    x0, x1, y0, y1 = (g[k] * pt for k in ("x0", "x1", "y0", "y1"))
    cw, ch = (x1 - x0) / n_heads, (y1 - y0) / n_layers
    font = "font-family:'DejaVu Sans',sans-serif"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{g["w"] * pt:.2f}pt" height="{g["h"] * pt:.2f}pt" '
           f'viewBox="0 0 {g["w"] * pt:.2f} {g["h"] * pt:.2f}">',
           '<rect width="100%" height="100%" fill="#fff"/>', '<g shape-rendering="crispEdges">']
    for i in range(n_layers):
        for j in range(n_heads):
            r, gg, b = rgb[i, j]
            out.append(f'<rect x="{x0 + j * cw:.2f}" y="{y0 + i * ch:.2f}" width="{cw + 0.05:.2f}" '
                       f'height="{ch + 0.05:.2f}" fill="#{r:02x}{gg:02x}{b:02x}"/>')
    out.append("</g>")
    if texts is not None:
        for (i, j), text in np.ndenumerate(texts):
            if text:
                out.append(f'<text x="{x0 + (j + 0.5) * cw:.2f}" y="{y0 + (i + 0.5) * ch + FONT * 0.36:.2f}" '
                           f'text-anchor="middle" fill="{_ink(rgb[i, j])}" style="{font};font-size:{FONT}px">'
                           f"{html.escape(str(text))}</text>")
    if marks is not None:
        radius = max(0.8, 0.16 * min(cw, ch))
        for i, j in zip(*np.nonzero(marks), strict=True):
            out.append(f'<circle cx="{x0 + (j + 0.5) * cw:.2f}" cy="{y0 + (i + 0.5) * ch:.2f}" r="{radius:.2f}" '
                       f'fill="{_ink(rgb[i, j])}"/>')
    out.append(f'<rect x="{x0:.2f}" y="{y0:.2f}" width="{x1 - x0:.2f}" height="{y1 - y0:.2f}" fill="none" '
               'stroke="#000" stroke-width="0.8"/>')
    tick = TICK * pt
    step = label_step(n_heads, cw)
    for j in _ticks(n_heads):
        x = x0 + (j + 0.5) * cw
        out.append(f'<line x1="{x:.2f}" y1="{y1:.2f}" x2="{x:.2f}" y2="{y1 + tick:.2f}" stroke="#000" '
                   'stroke-width="0.8"/>')
        if j % step == 0:
            out.append(f'<text x="{x:.2f}" y="{y1 + tick + FONT + 1:.2f}" text-anchor="middle" '
                       f'style="{font};font-size:{FONT}px">{j}</text>')
    step = label_step(n_layers, ch, across=False)
    for i in _ticks(n_layers):
        y = y0 + (i + 0.5) * ch
        out.append(f'<line x1="{x0 - tick:.2f}" y1="{y:.2f}" x2="{x0:.2f}" y2="{y:.2f}" stroke="#000" '
                   'stroke-width="0.8"/>')
        if i % step == 0:
            out.append(f'<text x="{x0 - tick - 2:.2f}" y="{y + FONT * 0.36:.2f}" text-anchor="end" '
                       f'style="{font};font-size:{FONT}px">{i}</text>')
    out.append(f'<text x="{(x0 + x1) / 2:.2f}" y="{y1 + tick + 2 * FONT + 3:.2f}" text-anchor="middle" '
               f'style="{font};font-size:{FONT}px">head</text>')
    out.append(f'<text transform="translate({x0 - tick - 2 - 2.2 * FONT:.2f},{(y0 + y1) / 2:.2f}) rotate(-90)" '
               f'text-anchor="middle" style="{font};font-size:{FONT}px">layer</text>')
    out.append(f'<text x="{(x0 + x1) / 2:.2f}" y="{y0 - 0.45 * TITLE:.2f}" text-anchor="middle" '
               f'style="{font};font-size:{TITLE}px">{html.escape(title)}</text>')
    # The colour bar: 64 bands are finer than a printed column can show.
    cx0, cx1 = g["cx0"] * pt, g["cx1"] * pt
    bands = 64
    values = np.linspace(hi, lo, bands)
    colours, _, _ = cell_colours(values[:, None], cmap, lo, hi)
    band = (y1 - y0) / bands
    out.append('<g shape-rendering="crispEdges">')
    for k in range(bands):
        r, gg, b = colours[k, 0]
        out.append(f'<rect x="{cx0:.2f}" y="{y0 + k * band:.2f}" width="{cx1 - cx0:.2f}" height="{band + 0.05:.2f}" '
                   f'fill="#{r:02x}{gg:02x}{b:02x}"/>')
    out.append("</g>")
    out.append(f'<rect x="{cx0:.2f}" y="{y0:.2f}" width="{cx1 - cx0:.2f}" height="{y1 - y0:.2f}" fill="none" '
               'stroke="#000" stroke-width="0.8"/>')
    widest = 0
    for t in colour_ticks(lo, hi):
        y = y1 - (t - lo) / (hi - lo) * (y1 - y0)
        text = tick_label(t)
        widest = max(widest, len(text))
        out.append(f'<line x1="{cx1:.2f}" y1="{y:.2f}" x2="{cx1 + tick:.2f}" y2="{y:.2f}" stroke="#000" '
                   'stroke-width="0.8"/>')
        out.append(f'<text x="{cx1 + tick + 2:.2f}" y="{y + FONT * 0.36:.2f}" style="{font};font-size:{FONT}px">'
                   f"{text}</text>")
    if label:
        lx = cx1 + tick + 4 + widest * FONT * CHAR + FONT * 0.7
        out.append(f'<text transform="translate({lx:.2f},{(y0 + y1) / 2:.2f}) rotate(-90)" text-anchor="middle" '
                   f'style="{font};font-size:{FONT}px">{html.escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


@lru_cache(maxsize=4)
def _font(size_px: int) -> FreeTypeFont:
    import matplotlib
    from PIL import ImageFont

    return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"), size_px)


def heatmap_png(grid: np.ndarray, path: str | Path, title: str, cmap: str = "viridis", label: str = "",
                vmin: float | None = None, vmax: float | None = None, width: float = 3.3, dpi: int = DPI,
                marks: np.ndarray | None = None, texts: np.ndarray | None = None) -> None:
    """The heat map of ``grid`` written as a PNG at ``dpi`` (the same layout as :func:`heatmap_svg`)."""
    from PIL import Image, ImageDraw

    rgb, lo, hi = cell_colours(grid, cmap, vmin, vmax)
    n_layers, n_heads = grid.shape
    g = _layout(grid.shape, width, right_margin(lo, hi, label))
    px = float(dpi)
    size = (round(g["w"] * px), round(g["h"] * px))
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    x0, x1, y0, y1 = (g[k] * px for k in ("x0", "x1", "y0", "y1"))
    # Cells: the grid scaled up with nearest-neighbour, pasted into the axes box.
    cells = Image.fromarray(rgb, "RGB").resize((round(x1 - x0), round(y1 - y0)), Image.Resampling.NEAREST)
    image.paste(cells, (round(x0), round(y0)))
    line = max(1, round(0.8 / 72 * px))
    tick = TICK * px
    font, title_font = _font(round(FONT / 72 * px)), _font(round(TITLE / 72 * px))
    cw, ch = (x1 - x0) / n_heads, (y1 - y0) / n_layers
    if texts is not None:
        for (i, j), text in np.ndenumerate(texts):
            if text:
                draw.text((x0 + (j + 0.5) * cw, y0 + (i + 0.5) * ch), str(text), fill=_ink(rgb[i, j]), font=font,
                          anchor="mm")
    if marks is not None:
        radius = max(0.8, 0.16 * min(cw, ch) * 72 / px) * px / 72
        for i, j in zip(*np.nonzero(marks), strict=True):
            cx, cy = x0 + (j + 0.5) * cw, y0 + (i + 0.5) * ch
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=_ink(rgb[i, j]))
    draw.rectangle((x0, y0, x1, y1), outline="black", width=line)
    step = label_step(n_heads, cw * 72 / px)
    for j in _ticks(n_heads):
        x = x0 + (j + 0.5) * cw
        draw.line((x, y1, x, y1 + tick), fill="black", width=line)
        if j % step == 0:
            draw.text((x, y1 + tick + 2), str(j), fill="black", font=font, anchor="mt")
    step = label_step(n_layers, ch * 72 / px, across=False)
    for i in _ticks(n_layers):
        y = y0 + (i + 0.5) * ch
        draw.line((x0 - tick, y, x0, y), fill="black", width=line)
        if i % step == 0:
            draw.text((x0 - tick - 6, y), str(i), fill="black", font=font, anchor="rm")
    fsize = FONT / 72 * px
    draw.text(((x0 + x1) / 2, y1 + tick + 2 * fsize + 8), "head", fill="black", font=font, anchor="ms")
    draw.text(((x0 + x1) / 2, y0 - 0.45 * TITLE / 72 * px), title, fill="black", font=title_font, anchor="ms")
    _vertical_text(image, "layer", font, (x0 - tick - 6 - 2.2 * fsize, (y0 + y1) / 2))
    cx0, cx1 = g["cx0"] * px, g["cx1"] * px
    bar = np.linspace(hi, lo, round(y1 - y0))[:, None]
    colours, _, _ = cell_colours(bar, cmap, lo, hi)
    strip = Image.fromarray(np.repeat(colours, max(1, round(cx1 - cx0)), axis=1), "RGB")
    image.paste(strip, (round(cx0), round(y0)))
    draw.rectangle((cx0, y0, cx1, y1), outline="black", width=line)
    widest = 0.0
    for t in colour_ticks(lo, hi):
        y = y1 - (t - lo) / (hi - lo) * (y1 - y0)
        text = tick_label(t)
        draw.line((cx1, y, cx1 + tick, y), fill="black", width=line)
        draw.text((cx1 + tick + 6, y), text, fill="black", font=font, anchor="lm")
        widest = max(widest, draw.textlength(text, font=font))
    if label:
        _vertical_text(image, label, font, (cx1 + tick + 12 + widest + 0.7 * fsize, (y0 + y1) / 2))
    image.save(path, dpi=(dpi, dpi))


def _vertical_text(image: PILImage, text: str, font: FreeTypeFont, centre: tuple[float, float]) -> None:
    """``text`` turned a quarter to the left (reading upwards), centred at ``centre``."""
    from PIL import Image, ImageDraw

    box = ImageDraw.Draw(image).textbbox((0, 0), text, font=font)
    w, h = int(box[2] - box[0] + 4), int(box[3] - box[1] + 8)  # whole pixels (a FreeType box is in them)
    label = Image.new("L", (w, h), 0)
    ImageDraw.Draw(label).text((2 - box[0], 4 - box[1]), text, fill=255, font=font)
    label = label.rotate(90, expand=True)
    x, y = round(centre[0] - label.width / 2), round(centre[1] - label.height / 2)
    image.paste((0, 0, 0), (x, y, x + label.width, y + label.height), label)
