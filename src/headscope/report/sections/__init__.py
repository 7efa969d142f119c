"""Each analysis's section of the report, one module per analysis, built from a finished run's files alone.

A module has ``section(run, figures) -> ReportSection | None`` (None when the run has no output of that
analysis) and, when the analysis writes per-head columns, ``MEANINGS``: one line per column for the head
grid's chooser. :data:`SECTIONS` maps each analysis's registry name to its section; the page orders them by
the analysis's ``report_order``. An analysis itself writes tables and a summary, never HTML: its section
lives here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from headscope.engine.results import RunResult
from headscope.report.section import ReportSection
from headscope.report.sections import (
    ablation,
    coref,
    decoder_heads,
    distance,
    examples,
    head_effects,
    importance,
    probe,
    pruning,
    retrieval,
    roles,
    sep_gradient,
    similarity,
    span,
    surface,
    syntax,
)

Section = Callable[[RunResult, Path], "ReportSection | None"]

#: Analysis name -> its section.
SECTIONS: dict[str, Section] = {
    "ablation": ablation.section,
    "coref": coref.section,
    "decoder_heads": decoder_heads.section,
    "distance": distance.section,
    "examples": examples.section,
    "head_effects": head_effects.section,
    "importance": importance.section,
    "probe": probe.section,
    "pruning": pruning.section,
    "retrieval": retrieval.section,
    "roles": roles.section,
    "sep_gradient": sep_gradient.section,
    "similarity": similarity.section,
    "span": span.section,
    "surface": surface.section,
    "syntax": syntax.section,
}

#: Per-head column -> what it means (the head grid's chooser shows it).
MEANINGS: dict[str, str] = {
    **surface.MEANINGS, **decoder_heads.MEANINGS, **retrieval.MEANINGS, **syntax.MEANINGS, **coref.MEANINGS,
    **distance.MEANINGS, **importance.MEANINGS, **sep_gradient.MEANINGS, **head_effects.MEANINGS,
    **span.MEANINGS,
}


def meaning(column: str, causal: bool = False) -> str:
    """One line saying what a per-head column of ``heads.csv`` means ("" when no section says); ``causal``: in
    a decoder LM's words (it has no [CLS])."""
    if causal and column in surface.DECODER_MEANINGS:
        return surface.DECODER_MEANINGS[column]
    return MEANINGS.get(column) or roles.meaning(column) or ""


__all__ = ["MEANINGS", "SECTIONS", "Section", "meaning"]
