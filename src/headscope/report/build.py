"""Build the report of a finished run from its files alone (``headscope report DIR`` uses this too)."""

from __future__ import annotations

import html
from pathlib import Path

from headscope.analyses import REGISTRY
from headscope.engine.results import RunResult
from headscope.report.section import ReportSection


def collect_sections(run: RunResult, figures: Path) -> list[ReportSection]:
    """Every registered analysis's section for this run, in page order."""
    sections = []
    for cls in REGISTRY.values():
        section = cls.report(run, figures)
        if section is not None:
            sections.append(section)
    return sorted(sections, key=lambda s: (s.order, s.key))


def build_report(out: str | Path) -> Path:
    """Write ``figures/`` and ``report/index.html`` for the run in ``out``; return the page's path."""
    out = Path(out)
    run = RunResult.load(out)
    sections = collect_sections(run, out / "figures")
    model = run.run.get("model", {})
    counts = run.run.get("counts", {})
    summary = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                      for k, v in counts.items())
    body = "".join(f'<section id="{s.key}"><h2>{html.escape(s.title)}</h2>{s.html}</section>' for s in sections)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>headscope report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}
figure{{display:inline-block;margin:0.5em;width:330px}} figure img{{width:100%;height:auto}}
table{{border-collapse:collapse}} th,td{{padding:2px 8px;text-align:left;border-bottom:1px solid #ddd}}
</style></head><body>
<h1>headscope report</h1>
<p>Model <b>{html.escape(str(model.get("name", "?")))}</b> ({model.get("n_layers", "?")} layers x
{model.get("n_heads", "?")} heads)</p>
<table>{summary}</table>
{body}
</body></html>
"""
    report_dir = out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    index = report_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
