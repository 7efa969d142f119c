"""The syntax heads' section (Clark et al. 2019, section 4): the best head of each relation against the best
fixed offset, and one layer x head map per frequent relation."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from headscope.analyses.syntax import CONVENTIONS
from headscope.report.figures import head_grid
from headscope.report.section import ReportSection, SectionStart, conventions_html, opens, percent, silver_note

#: Relations with at least this many held-out dependents get a heat map.
MIN_DEPENDENTS = 100

#: What each per-head column means, for the head grid's chooser.
MEANINGS = {
    "syntax_best_accuracy": "accuracy on the relation the head predicts best (its most-attended word is the "
                            "dependent's head)",
    "syntax_best_n": "arcs of the head's best relation",
    "syntax_best_baseline": "accuracy of the best fixed offset on the head's best relation",
}


@opens("syntax")
def section(start: SectionStart) -> ReportSection | None:
    run = start.run
    if "syntax_best" not in run.tables:
        return None
    best = run.tables["syntax_best"]
    table, summary, figs = start.table, start.summary, start.figs
    ordered = best.sort_values("n_held_out", ascending=False)
    ordered = pd.concat([ordered[ordered.relation == "all"], ordered[ordered.relation != "all"]])

    def cell(x: Any) -> str:
        return "" if pd.isna(x) else html.escape(str(x))

    def signed(x: Any) -> str:
        return "" if pd.isna(x) else f"{int(x):+d}"

    min_n = summary.get("min_n")

    def head_cell(b: Any) -> str:
        if bool(getattr(b, "below_min_n", False)) is True:
            return f"<i>n &lt; {html.escape(str(min_n))}</i>"  # listed, but no best head claimed
        return cell(b.head_name)

    def row(b: Any) -> str:
        return (f"<tr><td>{html.escape(str(b.relation))}</td><td>{b.n_held_out}</td><td>{head_cell(b)}</td>"
                f"<td>{cell(b.direction)}</td><td>{percent(b.accuracy)}</td><td>{signed(b.baseline_offset)}</td>"
                f"<td>{percent(b.baseline_accuracy)}</td><td>{cell(b.same_data_head_name)}</td>"
                f"<td>{percent(b.same_data_accuracy)}</td></tr>")

    below = ordered["below_min_n"].astype(str).str.lower().eq("true") if "below_min_n" in ordered else \
        pd.Series(False, index=ordered.index)
    rows = "".join(row(b) for b in ordered[~below].itertuples())
    few = ordered[below]
    folded = (f"<details><summary>{len(few)} relation{'s' if len(few) != 1 else ''} with fewer than {min_n} arcs "
              f"(no best head): {html.escape(', '.join(map(str, few['relation'])))}</summary>"
              f"<div class='wide'><table><tr><th>relation</th><th>n</th></tr>"
              + "".join(f"<tr><td>{html.escape(str(b.relation))}</td><td>{b.n_held_out}</td></tr>"
                        for b in few.itertuples()) + "</table></div></details>") if len(few) else ""
    notes = [f"Split: {html.escape(str(summary.get('split', '?')))}."]
    if min_n is not None:
        below = summary.get("relations_below_min_n", [])
        notes.append(f"A best head and offset are picked only for relations with at least syntax_min_n = {min_n} "
                     f"arcs in each non-empty split ({len(below)} relation{'s' if len(below) != 1 else ''} below "
                     f"it, listed without one); a head's best relation in the grid (syntax_best_accuracy) is "
                     f"chosen among relations with at least {min_n} arcs, next to that relation's best offset "
                     "(syntax_best_baseline).")
    if summary.get("silver"):
        notes.append(f"<b>{html.escape(silver_note(summary.get('parser')))}</b>")
    if summary.get("relation_collapse"):
        notes.append("Relation subtypes are collapsed (obl:tmod counts as obl).")
    clark = summary.get("conventions") == "clark"
    if clark:
        notes.append(f"Arcs to ROOT are scored, as in Clark et al.'s code ({summary.get('root_arcs_scored', '?')}"
                     "; never right for a head).")
    else:
        notes.append(f"Arcs to ROOT are left out ({summary.get('root_arcs_excluded', '?')}).")
    offsets = "-3..+2, 0 included, clipped into the sentence" if clark else "-3..+3"
    body = (
        "<p>Per relation, the head whose most-attended word (self and special tokens excluded) is most often "
        "the dependent's gold head, picked on the selection split and scored on the held-out split, against "
        f"the best fixed offset ({offsets}) picked the same way. The last two columns are Clark et al.'s way: "
        "picked and scored on the same held-out data (optimistic). Accuracies in %.</p>"
        f"<p>{' '.join(notes)}</p>" + conventions_html(run, "syntax", CONVENTIONS)
        + "<div class='wide'><table><tr><th>relation</th><th>n</th><th>head</th><th>direction</th><th>accuracy</th>"
        "<th>offset</th><th>baseline</th><th>same-data head</th><th>same-data accuracy</th></tr>"
        f"{rows}</table></div>{folded}")
    held = table[table["split"] == "held_out"]
    maps = []
    for b in ordered.itertuples():
        if b.n_held_out < MIN_DEPENDENTS or pd.isna(b.direction):
            continue
        sub = held[(held.relation == b.relation) & (held.direction == b.direction)]
        safe = "".join(c if c.isalnum() else "_" for c in str(b.relation))
        maps.append(figs.head_map(head_grid(sub, "accuracy"), f"syntax_{safe}", f"{b.relation} ({b.direction})",
                                  f"{b.relation}, {b.direction}, n = {b.n_held_out}",
                                  what=f"held-out accuracy on {b.relation} ({b.direction})",
                                  label="held-out accuracy", vmin=0.0, vmax=1.0))
    body += (f"<p>Held-out accuracy of every head, for relations with at least {MIN_DEPENDENTS} held-out "
             "dependents, in the direction of the best head.</p>" + "".join(maps))
    return start.section("Syntax heads", body)
