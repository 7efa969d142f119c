"""What an analysis contributes to the report: a titled block of HTML and the figures it wrote."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from headscope.engine.results import RunResult


def figure_html(name: str, caption: str) -> str:
    """A figure of ``DIR/figures/{name}.svg`` with its caption, for a section's ``html`` (caption escaped)."""
    text = html.escape(caption)
    src = f"../figures/{html.escape(name)}.svg"
    return f'<figure><img src="{src}" alt="{text}"><figcaption>{text}</figcaption></figure>'


def inline_figure_html(figures: Path, name: str, caption: str) -> str:
    """A figure with ``figures/{name}.svg`` inside the page as a data URL, for pages that travel alone."""
    text = html.escape(caption)
    data = base64.b64encode((Path(figures) / f"{name}.svg").read_bytes()).decode("ascii")
    return f'<figure><img src="data:image/svg+xml;base64,{data}" alt="{text}"><figcaption>{text}</figcaption></figure>'


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

    An analysis builds it in its ``report`` staticmethod from the run's files only (so ``headscope report
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
