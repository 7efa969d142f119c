"""What an analysis contributes to the report: a titled block of HTML and the figures it wrote."""

from __future__ import annotations

from dataclasses import dataclass, field


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
