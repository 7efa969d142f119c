"""What an analysis contributes to the report: a titled block of HTML and the figures it wrote.

Every figure of a report shows data that varies: :class:`SectionFigures` draws a per-head map, or any other
figure, only when its values have a spread, and writes one sentence in its place otherwise (a statistic with
the same value for every head says nothing a picture could add). Each ``<figure>`` carries the range of the
values it shows (``data-min``, ``data-max``), so a test can check that none is empty or constant.
"""

from __future__ import annotations

import base64
import functools
import html
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from headscope.engine.results import RunResult


def value_range(values: Any) -> tuple[float, float] | None:
    """(smallest, largest) of the finite numbers in ``values`` (any array-like), None when there is none."""
    try:
        array = np.asarray(values, dtype=float).reshape(-1)
    except (TypeError, ValueError):  # pandas' missing values (pd.NA) or text among the numbers
        flat = pd.Series(np.ravel(np.asarray(values, dtype=object)))
        array = pd.to_numeric(flat, errors="coerce").to_numpy(float)
    finite = array[np.isfinite(array)]
    return (float(finite.min()), float(finite.max())) if finite.size else None


def varies(values: Any) -> bool:
    """Whether the finite numbers in ``values`` are not all the same (and there are some)."""
    span = value_range(values)
    return span is not None and span[1] - span[0] > 1e-12 * max(1.0, abs(span[0]), abs(span[1]))


def fmt(value: float) -> str:
    """A number in three significant digits (as the report writes statistics)."""
    return "–" if value is None or not math.isfinite(float(value)) else f"{float(value):.3g}"


def _range_attributes(name: str, values: Any) -> str:
    span = value_range(values) if values is not None else None
    attributes = f' data-figure="{html.escape(name)}"'
    if span is not None:
        attributes += f' data-min="{span[0]:.6g}" data-max="{span[1]:.6g}"'
    return attributes


def figure_html(name: str, caption: str, values: Any = None, wide: bool = False) -> str:
    """A figure of ``DIR/figures/{name}.svg`` with its caption, for a section's ``html`` (caption escaped).

    ``values``: the numbers the figure shows; their range goes into ``data-min`` and ``data-max``. ``wide``:
    the figure is wider than one paper column (shown twice as wide).
    """
    text = html.escape(caption)
    src = f"../figures/{html.escape(name)}.svg"
    kind = ' class="wide-figure"' if wide else ""
    return (f'<figure{kind}{_range_attributes(name, values)}><img src="{src}" alt="{text}">'
            f"<figcaption>{text}</figcaption></figure>")


def inline_figure_html(figures: Path, name: str, caption: str, values: Any = None) -> str:
    """A figure with ``figures/{name}.svg`` inside the page as a data URL, for pages that travel alone."""
    text = html.escape(caption)
    data = base64.b64encode((Path(figures) / f"{name}.svg").read_bytes()).decode("ascii")
    return (f'<figure{_range_attributes(name, values)}><img src="data:image/svg+xml;base64,{data}" alt="{text}">'
            f"<figcaption>{text}</figcaption></figure>")


def no_figure_html(sentence: str) -> str:
    """The sentence that stands where a figure would show nothing (escaped)."""
    return f'<p class="no-figure">{html.escape(sentence)}</p>'


@dataclass
class SectionFigures:
    """The figures of one section, written under ``directory``; each drawn only when its data varies.

    >>> figs = SectionFigures(figures_dir)                                             # doctest: +SKIP
    >>> body += figs.head_map(grid, "surface_prev", "attention to previous token", "prev")  # doctest: +SKIP
    >>> section = ReportSection("surface", "Surface statistics", body, figures=figs.names)  # doctest: +SKIP
    """

    directory: Path
    names: list[str] = field(default_factory=list)
    """The figures written, in order."""

    def head_map(self, grid: np.ndarray, name: str, title: str, caption: str, *, what: str | None = None,
                 **options: Any) -> str:
        """A layer x head map of ``grid`` (shape (n_layers, n_heads)), or a sentence when it has no spread.

        ``what`` names the statistic in that sentence (default: ``title``); ``options`` go to
        :func:`headscope.report.figures.save_heatmap` (``cmap``, ``label``, ``vmin``, ``vmax``, ``marks``,
        ``texts``).
        """
        from headscope.report.figures import save_heatmap

        what = what or title
        span = value_range(grid)
        if span is None:
            return no_figure_html(f"{what}: defined for no head, so no map.")
        if not varies(grid):
            return no_figure_html(f"{what}: {fmt(span[0])} for every head (no spread over heads, so no map).")
        from headscope.report.figures import COLUMN_WIDTH

        save_heatmap(grid, self.directory, name, title, **options)
        self.names.append(name)
        return figure_html(name, caption, grid, wide=float(options.get("width", COLUMN_WIDTH)) > 1.2 * COLUMN_WIDTH)

    def plot(self, draw: Any, name: str, caption: str, values: Any, empty: str) -> str:
        """Save the matplotlib figure ``draw()`` returns as ``name``, or the sentence ``empty`` when ``values``
        (what the figure shows) do not vary. ``draw`` is called only when they do."""
        from headscope.report.figures import COLUMN_WIDTH, save_figure

        if value_range(values) is None:
            return no_figure_html(f"{caption}: no value to draw.")
        if not varies(values):
            return no_figure_html(empty)
        fig: Figure = draw()
        wide = float(fig.get_size_inches()[0]) > 1.2 * COLUMN_WIDTH
        save_figure(fig, self.directory, name)
        self.names.append(name)
        return figure_html(name, caption, values, wide=wide)


def numbers(*parts: Iterable[Any]) -> np.ndarray:
    """The values of several series or arrays as one flat float array (for :meth:`SectionFigures.plot`)."""
    return np.concatenate([np.asarray(list(p) if not hasattr(p, "__array__") else p, dtype=float).reshape(-1)
                           for p in parts]) if parts else np.zeros(0)


def conventions_html(run: RunResult, analysis: str, meanings: dict[str, str]) -> str:
    """The report line saying which conventions produced an analysis's tables (from its ``run.json`` summary)."""
    used = run.run.get("analyses", {}).get(analysis, {}).get("conventions", "headscope")
    return (f"<p class='note'>Conventions: <b>{html.escape(str(used))}</b> "
            f"({html.escape(meanings.get(used, '?'))}).</p>")


def silver_note(parser: dict[str, Any] | None) -> str:
    """One sentence for the report: the trees are silver spaCy parses, by which model and version."""
    if not parser:
        return "Parses are silver (spaCy), not gold annotation."
    who = (f"{parser.get('model', parser.get('package', '?'))} {parser.get('model_version', '?')}, "
           f"spaCy {parser.get('spacy_version', '?')}")
    return f"Parses are silver: predicted by {who} (--parse spacy), not gold annotation."


def percent(x: Any) -> str:
    """A share as a percentage with one decimal; empty for a missing value."""
    return "" if pd.isna(x) else f"{100 * float(x):.1f}"


@dataclass
class ReportSection:
    """One section of ``report/index.html``.

    A module of :mod:`headscope.report.sections` builds it from the run's files only (so ``headscope report
    DIR`` can rebuild it without the model). Every string from the corpus must pass through
    ``html.escape`` before it goes into ``html``.
    """

    key: str
    """Anchor id and analysis name."""
    title: str
    """Section heading."""
    html: str
    """Body markup: tables, figure references, notes."""
    figures: list[str] = field(default_factory=list)
    """Names of the figures written under ``DIR/figures/`` (without extension)."""
    order: int = 50
    """Position on the page, smaller first."""


@dataclass
class SectionStart:
    """What every analysis's section starts from (:func:`opens`)."""

    key: str
    """The analysis's name: the section's anchor."""
    run: RunResult
    """The run (its other tables, ``heads.csv``, ``run.json``)."""
    table: pd.DataFrame
    """The analysis's table (``DIR/{table}.csv``)."""
    summary: dict[str, Any]
    """The analysis's summary in ``run.json`` (``analyses.<name>``; empty when absent)."""
    options: dict[str, Any]
    """The analysis's options in ``run.json`` (``analysis_options.<name>``; empty when absent)."""
    figs: SectionFigures
    """The section's figures."""

    def first(self, column: str) -> str:
        """The table's first value of ``column`` as text, "?" when the table is empty (a column whose value is
        the same in every row, such as the loss a pass used)."""
        return str(self.table[column].iloc[0]) if len(self.table) else "?"

    def section(self, title: str, body: str) -> ReportSection:
        """The section: ``body`` under ``title``, with the figures drawn so far."""
        return ReportSection(key=self.key, title=title, html=body, figures=self.figs.names)


def start_section(run: RunResult, figures: Path, name: str, table: str | None = None, rows: bool = False
                  ) -> SectionStart | None:
    """The opening of analysis ``name``'s section, or None when the run has no output of it (see :func:`opens`)."""
    frame = run.tables.get(table or name)
    if frame is None or (rows and frame.empty):
        return None
    return SectionStart(name, run, frame, run.run.get("analyses", {}).get(name, {}),
                        run.run.get("analysis_options", {}).get(name, {}), SectionFigures(figures))


def opens(name: str, table: str | None = None, rows: bool = False
          ) -> Callable[[Callable[[SectionStart], ReportSection | None]],
                        Callable[[RunResult, Path], ReportSection | None]]:
    """Decorator of an analysis's section: ``build(start)`` becomes ``section(run, figures)``, which gives None
    when the run has no output of the analysis and otherwise builds the section from its :class:`SectionStart`.

    >>> @opens("importance")                                           # doctest: +SKIP
    ... def section(start: SectionStart) -> ReportSection:
    ...     return start.section("Head importance", start.figs.head_map(...))

    Parameters
    ----------
    name : str
        The analysis (its summary and options in ``run.json``; the section's key).
    table : str, optional
        The table the section needs (default: ``name``); the run has no output of the analysis without it.
    rows : bool
        An empty table counts as none.
    """

    def wrap(build: Callable[[SectionStart], ReportSection | None]
             ) -> Callable[[RunResult, Path], ReportSection | None]:
        @functools.wraps(build)
        def section(run: RunResult, figures: Path) -> ReportSection | None:
            start = start_section(run, figures, name, table, rows)
            return None if start is None else build(start)

        return section

    return wrap
