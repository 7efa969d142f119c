"""The head effects section (issue 30): each head's exact ablation effect on the loss with its interval, and
attribution patching's estimate of it."""

from __future__ import annotations

import html
from typing import Any

from headscope.report.figures import head_grid
from headscope.report.section import ReportSection, SectionStart, opens

#: What each per-head column means, for the head grid's chooser.
MEANINGS = {
    "effect": "change of the loss when the head's output is replaced by its mean (or 0): exact ablation",
    "effect_low": "lower end of the 95% bootstrap interval of the ablation effect",
    "effect_high": "upper end of the 95% bootstrap interval of the ablation effect",
    "effect_atp": "attribution patching's first-order estimate of the ablation effect (AtP)",
}


def _row(d: dict[str, Any]) -> str:
    return (f"<tr><td>{html.escape(str(d['head']))}</td><td>{d['effect']:.4g}</td>"
            f"<td>[{d['effect_low']:.4g}, {d['effect_high']:.4g}]</td><td>{d['effect_atp']:.4g}</td>"
            f"<td>{d['effect_rank']}</td><td>{d['atp_rank']}</td></tr>")


@opens("head_effects")
def section(start: SectionStart) -> ReportSection:
    table, summary, figs = start.table, start.summary, start.figs
    boot = summary.get("bootstrap", {})
    atp = summary.get("atp", {})
    rho = atp.get("spearman")
    blind = atp.get("blind_spot", [])
    header = ("<tr><th>head</th><th>effect</th><th>interval</th><th>AtP estimate</th><th>rank</th>"
              "<th>AtP rank</th></tr>")
    what = "its mean output" if summary.get("ablation") == "mean" else "0"
    baseline = summary.get("baseline_loss")
    loss = html.escape(str(summary.get("loss", "?")))
    intro = f"Each head's output replaced by {what}; change of the {loss}"
    if isinstance(baseline, (int, float)):
        intro += f" (baseline {baseline:.4g})"
    intro += f". Interval: {boot.get('rests_on', '')}."
    if boot.get("note"):
        intro += f" {boot['note']}."
    agreement = ("Attribution patching (AtP) against the exact effects: Spearman "
                 f"{'undefined' if rho is None else f'{rho:.3f}'} over {atp.get('over', '')}. "
                 f"Blind spot ({atp.get('blind_spot_rule', '')}): {len(blind)} head{'' if len(blind) == 1 else 's'}.")
    parts = [f"<p>{html.escape(intro)}</p>", f"<table>{header}{''.join(_row(d) for d in summary.get('top', []))}"
             "</table>", f"<p>{html.escape(agreement)}</p>"]
    if blind:
        parts.append(f"<table>{header}{''.join(_row(d) for d in blind)}</table>")
    parts.append(figs.head_map(head_grid(table, "effect"), "head_effects_heads", "Ablation effect on the loss",
                               "Ablation effect of each head", label="loss change"))
    return start.section("Head effects (ablation and AtP)", "".join(parts))
