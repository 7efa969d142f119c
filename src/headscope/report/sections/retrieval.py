"""The retrieval heads' section (Wu et al. 2024): needle-in-a-haystack prompts and each head's copy score."""

from __future__ import annotations

import html

from headscope.analyses.base import head_name
from headscope.report.figures import head_grid
from headscope.report.section import ReportSection, SectionStart, opens

#: What each per-head column means, for the head grid's chooser.
MEANINGS = {
    "retrieval_score": "share of answer tokens the head copied from the needle (Wu et al. 2024)",
    "retrieval_head": "1 when the retrieval score is above the run's threshold",
}


@opens("retrieval", rows=True)
def section(start: SectionStart) -> ReportSection:
    run = start.run
    table, summary, figs = start.table, start.summary, start.figs
    prompts = run.tables.get("retrieval_prompts")
    used = int(summary.get("used", 0))
    total = int(summary.get("prompts", 0 if prompts is None else len(prompts)))
    body = (f"<p>Greedy answers to {total} needle-in-a-haystack prompts of about "
            f"{int(summary.get('haystack_tokens', 0))} tokens; {used} reproduced the needle (ROUGE-1 recall above "
            f"{float(summary.get('rouge1_recall_min', 0.5)):g}) and are scored, {total - used} are left out. "
            f"Retrieval heads (score above {float(summary.get('threshold', 0.1)):g}): "
            f"<b>{int(table['retrieval_head'].astype(str).str.lower().eq('true').sum())}</b>.</p>")
    if table["retrieval_score"].notna().any():
        best = table.dropna(subset=["retrieval_score"]).sort_values("retrieval_score", ascending=False).head(5)
        body += "<p>Top heads: " + ", ".join(
            f"{html.escape(head_name(r.layer, r.head))} ({r.retrieval_score:.3f})" for r in best.itertuples()
        ) + "</p>"
    body += figs.head_map(head_grid(table, "retrieval_score"), "retrieval_score", "retrieval score",
                          "Retrieval score per head (Wu et al. 2024)", label="retrieval_score", vmin=0.0, vmax=1.0)
    return start.section("Retrieval heads", body)
