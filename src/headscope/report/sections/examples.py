"""The example sequences' section: which sequences keep their full maps (shown in each head's profile and
opened in the viewer)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from headscope.analyses.examples import source_name
from headscope.engine.results import RunResult
from headscope.report.section import ReportSection


def viewer_page(k: int) -> str:
    """The viewer page of the ``k``-th kept sequence, relative to ``report/index.html``."""
    return f"view/example-{k}.html"


def _tokens(example: dict[str, Any]) -> str:
    """How much of the sequence the kept map covers: all of it, or a decoder's first tokens."""
    n = len(example["pieces"])
    if "prefix_of" in example:
        return f"its first {n} of {int(example['prefix_of'])} tokens"
    return f"{n} tokens"


def section(run: RunResult, figures: Path) -> ReportSection | None:
    doc = run.documents.get("examples")
    if doc is None:
        return None
    items = "".join(
        f"<li>{html.escape(source_name(e['file']))}, line {int(e['line'])} ({_tokens(e)}): "
        f"<q>{html.escape(e['text'])}</q> <a class='viewer-link' href='{viewer_page(k)}'>open in the viewer</a></li>"
        for k, e in enumerate(doc["examples"]))
    prefix = any("prefix_of" in e for e in doc["examples"])
    body = ("<p>Full attention maps of these sequences are kept (float16): each head's profile shows them, and "
            "the viewer shows every head on one sequence.</p>"
            + ("<p>A decoder's long sequence gives its first tokens: a causal model's attention over them is "
               "exactly that of the prefix read alone.</p>" if prefix else "")
            + (f"<ol>{items}</ol>" if items else
               "<p>No sequence was short enough to keep (see --example-max-tokens).</p>"))
    return ReportSection(key="examples", title="Example sequences", html=body)
