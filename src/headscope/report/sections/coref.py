"""The coreference heads' section (Clark et al. 2019, section 4.3): best head per mention type, baselines."""

from __future__ import annotations

import html

from headscope.analyses.base import head_name
from headscope.analyses.coref import BASELINES, MIN_N, best_heads
from headscope.report.figures import head_grid
from headscope.report.section import ReportSection, SectionStart, opens, percent

#: What each per-head column means, for the head grid's chooser.
MEANINGS = {"coref_accuracy": "share of mentions whose head word attends most to an antecedent's head word"}


@opens("coref", rows=True)
def section(start: SectionStart) -> ReportSection:
    table, summary, figs = start.table, start.summary, start.figs
    min_n = int(summary.get("min_n", start.options.get("coref_min_n", MIN_N)))
    best = best_heads(table, min_n)
    heads = table[(table["method"] == "head") & (table["mention_type"] == "all")]
    header = "".join(f"<th>{h}</th>" for h in ("mention type", "n", "best head", "accuracy", *BASELINES))
    body = "".join(
        f"<tr><td>{html.escape(str(r.mention_type))}</td><td>{int(r.n)}</td>"
        f"<td>{f'<i>n &lt; {min_n}</i>' if r.below_min_n else html.escape(str(r.best_head))}</td>"
        f"<td>{percent(r.accuracy)}</td>"
        + "".join(f"<td>{percent(getattr(r, b))}</td>" for b in BASELINES) + "</tr>" for r in best.itertuples())
    n_all = int(heads["n"].max()) if len(heads) else 0
    if n_all >= min_n:
        top = heads.sort_values(["accuracy", "layer", "head"], ascending=[False, True, True]).head(5)
        top_list = "Top heads over all mentions: " + ", ".join(
            f"{head_name(r.layer, r.head)} {percent(r.accuracy)}" for r in top.itertuples()) + "."
    else:
        top_list = f"No top heads: {n_all} mentions in all, fewer than coref_min_n = {min_n}."
    text = (f"<p>Share of mentions whose head word attends most to the head word of an earlier mention of "
            f"the same entity (Clark et al. 2019, section 4.3), in %. The best head is chosen on the same "
            f"data it is scored on, as in the paper, and named only for mention types with at least "
            f"coref_min_n = {min_n} mentions. {html.escape(top_list)}"
            f"</p><div class='wide'><table><tr>{header}</tr>{body}</table></div>"
            + figs.head_map(head_grid(heads, "accuracy"), "coref_accuracy", "antecedent accuracy, all mentions",
                            "Antecedent-selection accuracy per head, all mention types", label="accuracy", vmin=0))
    return start.section("Coreference heads", text)
