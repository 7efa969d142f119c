"""The example sequences' section: which sequences keep their full maps (shown in each head's profile and
opened in the viewer)."""

from __future__ import annotations

import html
from pathlib import Path

from headscope.analyses.examples import source_name
from headscope.engine.results import RunResult
from headscope.report.section import ReportSection


def viewer_page(k: int) -> str:
    """The viewer page of the ``k``-th kept sequence, relative to ``report/index.html``."""
    return f"view/example-{k}.html"


def section(run: RunResult, figures: Path) -> ReportSection | None:
    doc = run.documents.get("examples")
    if doc is None:
        return None
    items = "".join(
        f"<li>{html.escape(source_name(e['file']))}, line {int(e['line'])} ({len(e['pieces'])} tokens): "
        f"<q>{html.escape(e['text'])}</q> <a class='viewer-link' href='{viewer_page(k)}'>open in the viewer</a></li>"
        for k, e in enumerate(doc["examples"]))
    body = ("<p>Full attention maps of these sequences are kept (float16): each head's profile shows them, and "
            "the viewer shows every head on one sequence.</p>"
            + (f"<ol>{items}</ol>" if items else
               "<p>No sequence was short enough to keep (see --example-max-tokens).</p>"))
    return ReportSection(key="examples", title="Example sequences", html=body)
