"""The head importance section (Michel et al. 2019): the gradient importance of every head."""

from __future__ import annotations

import html

from headscope.report.figures import head_grid
from headscope.report.section import ReportSection, SectionStart, opens

#: What each per-head column means, for the head grid's chooser.
MEANINGS = {
    "importance": "gradient importance E|dL/dxi| of the head, normalised (Michel et al. 2019)",
    "importance_raw": "gradient importance E|dL/dxi| of the head before normalisation",
}


@opens("importance")
def section(start: SectionStart) -> ReportSection:
    table, figs, loss = start.table, start.figs, start.first("loss")
    top = table.sort_values("importance", ascending=False).head(10)
    rows = "".join(f"<tr><td>L{int(r.layer)}H{int(r.head)}</td><td>{r.importance:.3g}</td>"
                   f"<td>{r.importance_raw:.3g}</td></tr>" for r in top.itertuples())
    body = (f"<p>Head importance E|dL/d&xi;<sub>h</sub>| (Michel et al. 2019), loss {html.escape(loss)}, "
            "normalised as transformers' bertology script.</p>"
            f"<table><tr><th>head</th><th>importance</th><th>raw</th></tr>{rows}</table>"
            + figs.head_map(head_grid(table, "importance"), "importance_heads", "Head importance",
                            "Head importance", label="importance"))
    return start.section("Head importance (gradients)", body)
