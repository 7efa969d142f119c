"""The attention span section (issue 30): where each decoder head's attention goes by distance at each context
length, which heads are streaming, and what the KV budget built from that costs against random heads."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from headscope.report.figures import head_grid
from headscope.report.section import ReportSection, SectionStart, opens

#: What each per-head column means, for the head grid's chooser.
MEANINGS = {
    "span_coverage_min": "least share of the head's attention on the sink and its local window, over the lengths",
}

#: Rows of span_check.csv, in words.
CHECK_ROWS = {"base": "every head whole", "budget": "sink + window on the streaming heads",
              "random": "the same budget on as many random heads", "budget_vs_random": "budget minus random"}


def _check(table: pd.DataFrame) -> str:
    rows = []
    for r in table.to_dict("records"):
        what = CHECK_ROWS.get(str(r["forward"]), str(r["forward"]))
        loss = "" if pd.isna(r.get("loss")) else f"{r['loss']:.4g}"
        change = ("" if pd.isna(r.get("change")) else
                  f"{r['change']:+.4g} [{r['change_low']:+.4g}, {r['change_high']:+.4g}]")
        rows.append(f"<tr><td>{html.escape(what)}</td><td>{loss}</td><td>{change}</td></tr>")
    return ("<table><tr><th>forward</th><th>loss per token</th><th>change, 95% interval</th></tr>"
            + "".join(rows) + "</table>")


@opens("span")
def section(start: SectionStart) -> ReportSection:
    run = start.run
    span, summary, figs = start.table, start.summary, start.figs
    lengths = [int(x) for x in summary.get("lengths", sorted(span["length"].unique()))]
    parts = [f"<p>{html.escape(str(summary.get('rule', '')))}. {int(summary.get('streaming_heads', 0))} of "
             f"{int(summary.get('streaming_heads', 0)) + int(summary.get('retrieval_heads', 0))} heads are "
             f"streaming; measured on {int(summary.get('texts', 0))} windows at "
             f"{', '.join(str(x) for x in lengths)} tokens.</p>"]
    means = summary.get("mean_fractions", {})
    if means:
        buckets = list(next(iter(means.values())))
        head = "".join(f"<th>{html.escape(b)}</th>" for b in buckets)
        body = "".join(f"<tr><td>{html.escape(str(length))}</td>"
                       + "".join(f"<td>{values[b]:.3f}</td>" for b in buckets) + "</tr>"
                       for length, values in means.items())
        parts.append(f"<p>Mean share of attention by distance, over heads:</p><table><tr><th>length</th>{head}"
                     f"</tr>{body}</table>")
    if "span_check" in run.tables:
        parts.append("<p>The budget checked on held-out text (loss of the model with each forward):</p>"
                     + _check(run.tables["span_check"]))
    elif summary.get("check_skipped"):
        parts.append(f"<p>No causal check: {html.escape(str(summary['check_skipped']))}.</p>")
    heads = run.heads
    if "span_coverage_min" in heads.columns:
        parts.append(figs.head_map(head_grid(heads, "span_coverage_min"), "span_coverage",
                                   "Share on the sink and the local window", "Least share of each head's attention "
                                   "on the sink and its local window, over the lengths", label="share",
                                   vmin=0.0, vmax=1.0))
    far = f"span_far_{lengths[-1]}" if lengths else ""
    if far in heads.columns and np.isfinite(pd.to_numeric(heads[far], errors="coerce")).any():
        parts.append(figs.head_map(head_grid(heads, far), "span_far", f"Attention beyond 512 at {lengths[-1]}",
                                   f"Share of each head's attention more than 512 tokens back, at {lengths[-1]} "
                                   "tokens", label="share"))
    return start.section("Attention span and KV budget", "".join(parts))
