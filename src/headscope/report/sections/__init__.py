"""Each analysis's section of the report, one module per analysis, built from a finished run's files alone.

A module has ``section(run, figures) -> ReportSection | None`` (None when the run has no output of that
analysis) and, when the analysis writes per-head columns, ``MEANINGS``: one line per column for the head
grid's chooser. :data:`SECTIONS` maps each registered analysis's name to its section, the module of that name
found here; the page orders them by the analysis's ``report_order``. An analysis itself writes tables and a
summary, never HTML: its section lives here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from headscope.analyses import REGISTRY
from headscope.engine.results import RunResult
from headscope.report.section import ReportSection
from headscope.report.sections import roles, surface

Section = Callable[[RunResult, Path], "ReportSection | None"]


def _section_modules() -> dict[str, ModuleType]:
    """Each registered analysis's section: the module of this package named after it (an analysis registered
    outside headscope, without one here, has no section). Adding an analysis adds its module here and no line
    to this file."""
    modules = {}
    for name in sorted(REGISTRY):
        try:
            modules[name] = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    return modules


_MODULES = _section_modules()

#: Analysis name -> its section.
SECTIONS: dict[str, Section] = {name: module.section for name, module in _MODULES.items()}

#: Per-head column -> what it means (the head grid's chooser shows it); each section module's ``MEANINGS``.
MEANINGS: dict[str, str] = {column: text for module in _MODULES.values()
                            for column, text in getattr(module, "MEANINGS", {}).items()}


def meaning(column: str, causal: bool = False) -> str:
    """One line saying what a per-head column of ``heads.csv`` means ("" when no section says); ``causal``: in
    a decoder LM's words (it has no [CLS])."""
    if causal and column in surface.DECODER_MEANINGS:
        return surface.DECODER_MEANINGS[column]
    return MEANINGS.get(column) or roles.meaning(column) or ""


__all__ = ["MEANINGS", "SECTIONS", "Section", "meaning"]
