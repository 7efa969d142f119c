"""The attention-based probing classifiers' section (Clark et al. 2019, section 5): UAS of each probe."""

from __future__ import annotations

import html
from pathlib import Path

from headscope.engine.results import RunResult
from headscope.report.section import ReportSection

#: How each probe variant is named in the paper.
VARIANTS = {"right_branching": "Right-branching", "distances_glove": "Distances+GloVe", "attn": "Attn",
            "attn_glove": "Attn+GloVe"}


def section(run: RunResult, figures: Path) -> ReportSection | None:
    doc = run.documents.get("probe")
    if not doc:
        return None
    rows = "".join(f"<tr><td>{html.escape(VARIANTS.get(v, v))}</td><td>{'' if u is None else f'{100 * u:.1f}'}"
                   f"</td></tr>" for v, u in doc["uas"].items())
    silver = " <b>Parses are silver</b> (spaCy en_core_web_sm)." if doc.get("silver") else ""
    body = (f"<p>Unlabelled attachment score (%, punctuation excluded) on {doc['eval']['sentences']} "
            f"evaluation sentences; probes trained on {doc['train']['sentences']} sentences "
            f"({html.escape(str(doc.get('split', '')))}).{silver}</p>"
            f"<table><tr><th>probe</th><th>UAS</th></tr>{rows}</table>")
    return ReportSection(key="probe", title="Attention-based probing classifiers", html=body)
