"""The words and the page of a comparison: the summary sentences (the command prints them, the page opens with
them) and ``report/index.html``, laid out as a run's report."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from headscope.analyses.base import head_name
from headscope.comparison.figures import delta_map, layer_constants, layer_figure
from headscope.comparison.stats import CROSSED, MIN_N
from headscope.report.page import render_page
from headscope.report.section import ReportSection, SectionFigures, no_figure_html, numbers

if TYPE_CHECKING:
    from headscope.comparison.result import Comparison


def _count(counts: dict[str, int]) -> str:
    """``{"local": 2, "block": 1}`` as "3 (local 2, block 1)"; "none" when empty."""
    total = sum(counts.values())
    return f"{total} ({', '.join(f'{k} {v}' for k, v in counts.items())})" if total else "none"


def summary_lines(comparison: Comparison) -> list[str]:
    """What changed from A to B, in a few sentences (the command prints them; the page opens with them)."""
    s = comparison.summary
    lines = [f"A = {s['a']['model']}, B = {s['b']['model']} ({s['shape'][0]} layers x {s['shape'][1]} heads); "
             "every change is B - A."]
    if s["corpus_differences"]:
        lines.append("The inputs differ: " + "; ".join(s["corpus_differences"]) + ".")
    else:
        lines.append("Both runs read the same corpus files and used the same number of sequences.")
    roles = comparison.roles
    if roles is not None:
        tested = int(roles["tested"].sum()) if "tested" in roles.columns else int(roles["p"].notna().sum())
        crossed = sum(sum(c.values()) for c in s["roles_crossed_not_significant"].values())
        correction = "Benjamini-Hochberg" if s["correction"] == "bh" else "no correction"
        lines.append(f"Roles: {s['role_changes_significant']} of {tested} tested head x role mean scores changed "
                     f"significantly (Welch's t-test, alpha = {s['alpha']}, {correction}); roles gained: "
                     f"{_count(s['roles_gained'])}; lost: {_count(s['roles_lost'])}; {crossed} crossed the "
                     "threshold without a significant change.")
        if s.get("role_changes_not_tested"):
            lines.append(f"Not tested: {s['role_changes_not_tested']} of {len(roles)} head x role changes (fewer "
                         f"than min_n = {s['min_n']} scores in a run).")
    heads = comparison.heads
    if len(heads):
        moved = heads.assign(abs_delta=heads["delta"].abs()).groupby("statistic", sort=False)["abs_delta"].mean()
        moved = moved.dropna().sort_values(ascending=False)
        changed = moved[moved > 0]
        if len(changed):
            top = ", ".join(f"{k} ({v:.3g})" for k, v in changed.head(3).items())
            lines.append(f"Per-head statistics: {len(changed)} of {len(moved)} changed; largest mean |B - A|: {top}.")
        else:
            lines.append(f"Per-head statistics: none of {len(moved)} changed.")
    return lines


#: Layers per table of the by-layer summary: a wider table would not fit the page.
LAYERS_PER_TABLE = 12


def layer_tables(layers: pd.DataFrame) -> str:
    """The by-layer summary turned on its side (one row per measure, one column per layer), in tables of at
    most :data:`LAYERS_PER_TABLE` layers, so that it fits the page whatever the model's depth."""
    if layers.empty or "layer" not in layers.columns:
        return "<p class='note'>Nothing to summarise by layer.</p>"
    flipped = layers.set_index("layer").T
    flipped.index = [str(i).replace("mean_abs_delta_", "mean |B - A| of ") for i in flipped.index]
    parts = []
    for start in range(0, flipped.shape[1], LAYERS_PER_TABLE):
        part = flipped.iloc[:, start:start + LAYERS_PER_TABLE]
        part.columns = [f"L{int(c)}" for c in part.columns]
        parts.append(part.to_html(border=0, float_format="%.3g", classes="paged"))
    return "<div class='wide'>" + "".join(parts) + "</div>"


def write_page(comparison: Comparison, out: Path) -> Path:
    """Write the figures (``figures/``) and the page (``report/index.html``) of a comparison, laid out as a
    run's report: what changed first, then the sections, the details folded at the end."""
    from headscope.report.build import figures_html, page_layout
    from headscope.report.figures import parallel_figures

    figures = out / "figures"
    s = comparison.summary
    name_a, name_b = html.escape(str(s["a"]["model"])), html.escape(str(s["b"]["model"]))
    conventions = s.get("conventions", {})
    used = sorted(set(conventions.get("a", {}).values()) | set(conventions.get("b", {}).values())) or ["headscope"]
    mixed = "".join(f"<li>{html.escape(m)}</li>" for m in s.get("mixed_conventions", []))
    # The first line names A and B, which the page's lead does already.
    lines = summary_lines(comparison)[1:]
    first = ("<ul class='findings'>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines)
             + "</ul>"
             + (f'<p class="warn">Compared across different conventions (--allow-mixed-conventions): the '
                f"changes below mix the models' difference with the definitions'.</p><ul>{mixed}</ul>" if mixed
                else f"<p>Conventions: {html.escape(', '.join(used))} (both runs).</p>"))
    sections: list[ReportSection] = []
    with parallel_figures():
        figs = SectionFigures(figures)
        roles = comparison.roles
        if roles is not None:
            sections.append(ReportSection("roles", "Roles", roles_html(comparison, figs)))
        heads = comparison.heads
        if len(heads):
            maps = "".join(delta_map(figs, heads[heads["statistic"] == stat], "delta", f"{stat}: B - A",
                                     f"compare_heads_{stat}", stat)
                           for stat in dict.fromkeys(heads["statistic"]))
            sections.append(ReportSection("statistics", "Per-head statistics (heads.csv)",
                                          "<p>Each map is centred on 0: red where B is higher, blue where A is."
                                          "</p>" + maps))
    sections.append(ReportSection("layers", "By layer", layer_tables(comparison.layers)))
    details = (f"<h4>compare.json</h4><pre class='config'>{html.escape(json.dumps(s, indent=1, default=str))}</pre>"
               f"<h4>Figure files</h4>{figures_html(figures)}")
    body = page_layout(f"headscope compare: {name_a} vs {name_b}",
                       f"<p class='lead'>A = <b>{name_a}</b>, B = <b>{name_b}</b>; changes are B - A.</p>",
                       [ReportSection("summary", "What changed", first)], sections, details,
                       "Details: the comparison's settings and counts (compare.json), figure files")
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    index = report / "index.html"
    index.write_text(render_page(f"headscope compare: {name_a} vs {name_b}", body, {}, []), encoding="utf-8")
    return index


def roles_html(comparison: Comparison, figs: SectionFigures) -> str:
    """The roles section of the page: the tests, the per-layer figure, one change map per role, the lists."""
    s = comparison.summary
    roles = comparison.roles
    assert roles is not None
    correction = "Benjamini-Hochberg" if s["correction"] == "bh" else "no correction"
    tested = roles["tested"] if "tested" in roles.columns else roles["p"].notna()
    crossed = roles[roles["change"].isin(CROSSED)]
    blocks = [
        f"<p>{int(roles['significant'].sum())} of {int(roles['p'].notna().sum())} head x role "
        f"mean scores changed significantly (Welch two-sided t-test, alpha = {s['alpha']}, {correction}). "
        f"Roles gained: {int((roles['change'] == 'gained').sum())}, lost: "
        f"{int((roles['change'] == 'lost').sum())} (has_role flipped <i>and</i> the change is significant "
        f"by this test). Crossed the threshold without a significant change: {len(crossed)}. A change is "
        f"tested only where both runs have at least min_n = {html.escape(str(s.get('min_n', MIN_N)))} scores "
        f"of the role ({int(tested.sum())} of {len(roles)} head x role rows), so no role is gained or lost on "
        "fewer.</p>"
        + (f'<p class="warn">Not tested: {int((~tested).sum())} of {len(roles)} head x role changes '
           f"(fewer than min_n = {html.escape(str(s.get('min_n', MIN_N)))} scores in a run).</p>"
           if (~tested).any() else "")]
    layers = comparison.layers
    if "roles_gained" in layers.columns:
        scores, changes, said = layer_constants(layers)
        if scores or changes:
            shown = [layers["mean_abs_delta_role_score"]] if scores else []
            shown += [layers["roles_gained"], layers["roles_lost"]] if changes else []
            blocks.append(figs.plot(lambda: layer_figure(layers, scores, changes), "compare_layers",
                                    "Where the models differ, by layer", numbers(*shown), ""))
        if said:
            blocks.append(no_figure_html(f"By layer: {' and '.join(said)}."))
    for role in dict.fromkeys(roles["role"]):
        part = roles[roles["role"] == role]
        blocks.append(delta_map(figs, part, "delta", f"{role}: change of mean score", f"compare_role_{role}",
                                f"{role} (dots: significant change)", marks=part[part["significant"]],
                                what=f"change of the {role} score (B - A)"))
    moved = roles[roles["change"].isin(["gained", "lost"])]
    columns = ["head_id", "role", "change", "mean_a", "mean_b", "p_adjusted"]
    if len(moved):
        listing = moved.assign(head_id=[head_name(r.layer, r.head) for r in moved.itertuples()])
        blocks.append("<h3>Roles gained and lost (significant change)</h3><div class='wide'>"
                      + listing[columns].to_html(index=False, border=0, float_format="%.3g") + "</div>")
    if len(crossed):
        listing = crossed.assign(head_id=[head_name(r.layer, r.head) for r in crossed.itertuples()])
        blocks.append("<h3>Crossed the threshold, change not significant</h3><p>has_role differs between the "
                      "runs, but the change of the mean score is not significant (or not tested): not a "
                      "role gained or lost.</p><div class='wide'>" + listing[columns].to_html(
                          index=False, border=0, float_format="%.3g", na_rep="not tested") + "</div>")
    top = roles[roles["significant"]].reindex(roles.loc[roles["significant"], "t"].abs()
                                               .sort_values(ascending=False).index).head(20)
    if len(top):
        blocks.append("<h3>Largest significant changes</h3><div class='wide'>" + top[
            ["layer", "head", "role", "mean_a", "mean_b", "delta", "t", "p_adjusted"]].to_html(
            index=False, border=0, float_format="%.3g") + "</div>")
    return "".join(blocks)
