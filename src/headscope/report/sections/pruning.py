"""The pruning section (Michel et al. 2019): held-out loss as heads are pruned, against random orders, and
whether the surviving heads are those with an identified behaviour."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from headscope.analyses.stats import CONFIDENCE
from headscope.report.figures import COLUMN_WIDTH
from headscope.report.section import ReportSection, SectionStart, numbers, opens


@opens("pruning")
def section(start: SectionStart) -> ReportSection:
    table, summary, figs = start.table, start.summary, start.figs
    claim = summary.get("seed_claim", {})
    if claim.get("analyses"):
        sentence = (f"Of the heads surviving to 50%, {claim['share_survivors']:.0%} have an identified "
                    f"behaviour (from {', '.join(claim['analyses'])}) against {claim['share_pruned']:.0%} of the "
                    f"pruned heads and {claim['share_all']:.0%} of all heads (Fisher's exact test, one-sided, "
                    f"p = {claim['p']:.3g}).")
        if claim.get("note"):
            sentence += f" Note: {claim['note']}."
        parts = [("any of them", claim), *claim.get("by_analysis", {}).items()]
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{c['survivors_with_behaviour']} / {c['survivors']}</td>"
            f"<td>{c['pruned_with_behaviour']} / {c['pruned']}</td><td>{c['p']:.3g}</td></tr>"
            for name, c in parts)
        extra = (f"<p>{html.escape(sentence)}</p><table><tr><th>behaviour from</th><th>survivors with it</th>"
                 f"<th>pruned with it</th><th>p (one-sided)</th></tr>{rows}</table>")
    else:
        extra = "<p>No behaviour analysis ran: the seed claim is not tested.</p>"
    ranked = sorted(set(table["order"]) - {"importance", "random"})
    controls = "random orders" + (f" and the ranking of {', '.join(ranked)} (weakest first)" if ranked else "")
    absent = summary.get("rankings", {}).get("absent", {})
    if absent:
        controls += "; no ranking of " + ", ".join(f"{k} ({v})" for k, v in absent.items())
    boot = summary.get("bootstrap")
    bands = (f" Bands: {boot['confidence']:.0%} bootstrap intervals over the held-out sequences "
             f"({boot['resamples']} resamples)." if boot else "")
    check = summary.get("loss_check", {})
    warning = (f"<p><strong>The loss does not measure pruning here.</strong> {html.escape(check['note'])}.</p>"
               if check.get("note") else "")
    versus = summary.get("importance_vs_random")
    if versus:
        verdict = "lower than" if versus["better"] else "not distinguishable from (or above)"
        warning += (f"<p>Averaged over the fractions between 0 and 1, the importance order's loss is {verdict} "
                    f"the random orders' (difference, {CONFIDENCE:.0%} interval "
                    f"[{versus['difference_low']:.3g}, {versus['difference_high']:.3g}]).</p>")
    body = (warning + "<p>Heads pruned step by step by importance re-estimated after each step (Michel et al. "
            f"2019) and, as controls, in {html.escape(controls)}; loss on held-out sequences."
            f"{html.escape(bands)}</p>" + extra
            + figs.plot(lambda: pruning_figure(table), "pruning_curve", "Loss against the fraction of heads pruned",
                        numbers(table["loss"]), "Pruning: the held-out loss is the same at every fraction."))
    return start.section("Pruning heads", body)


def pruning_figure(table: pd.DataFrame) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.4), layout="constrained")

    def band(grp: pd.DataFrame, colour: str, alpha: float) -> None:
        if {"loss_low", "loss_high"} <= set(grp.columns):  # runs before the intervals have none
            ax.fill_between(grp["fraction"], grp["loss_low"], grp["loss_high"], color=colour, alpha=alpha,
                            linewidth=0)

    imp = table[table["order"] == "importance"]
    band(imp, "tab:blue", 0.2)
    ax.plot(imp["fraction"], imp["loss"], "o-", label="importance", color="tab:blue")
    for k, (_, grp) in enumerate(table[table["order"] == "random"].groupby("seed")):
        band(grp, "grey", 0.1)
        ax.plot(grp["fraction"], grp["loss"], "-", color="grey", alpha=0.6, label="random" if k == 0 else None)
    ranked = sorted(set(table["order"]) - {"importance", "random"})
    for name, colour in zip(ranked, ("tab:orange", "tab:green", "tab:red", "tab:purple"), strict=False):
        grp = table[table["order"] == name]
        band(grp, colour, 0.15)
        ax.plot(grp["fraction"], grp["loss"], "s--", markersize=2, color=colour, label=f"{name} ranking")
    ax.set_xlabel("fraction of heads pruned")
    ax.set_ylabel(f"held-out {table['loss_kind'].iloc[0]}")
    ax.legend(frameon=False)
    return fig
