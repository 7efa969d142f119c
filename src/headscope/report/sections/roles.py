"""The roles' section (Pande et al. 2021): which heads hold which role by the t-test, and where."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from headscope.analyses.roles import ABBREVIATIONS, CONVENTIONS, colocation, per_layer_counts
from headscope.report.figures import COLUMN_WIDTH
from headscope.report.heatmap import CHAR, FONT, MARGINS
from headscope.report.section import ReportSection, SectionStart, conventions_html, numbers, opens, silver_note

#: What each per-head column means, for the head grid's chooser (``role_<role>``, see :func:`meaning`).
MEANINGS: dict[str, str] = {}


def meaning(column: str) -> str | None:
    """The meaning of a ``role_<role>`` column of ``heads.csv``."""
    if column.startswith("role_"):
        return f"mean sieve-bias score of the role {column[5:]} (Pande et al. 2021; held above tau = 3 by default)"
    return None


@opens("roles")
def section(start: SectionStart) -> ReportSection:
    run = start.run
    table, summary, figs = start.table, start.summary, start.figs
    opts = {**start.options, **{k: v for k, v in summary.items() if k == "correction"}}
    # Runs from before roles_min_n have no tested column: they tested from two scores on.
    tested = table["tested"].astype(bool) if "tested" in table.columns else table["n"] >= 2
    untested = [r for r, ok in tested.groupby(table["role"], sort=False).any().items() if not ok]
    min_n = summary.get("min_n", 2)
    not_tested = (
        f"<p>Not tested: <b>{int((~tested).sum())} of {len(table)}</b> head x role rows (fewer than "
        f"roles_min_n = {html.escape(str(min_n))} units; t and p left empty, no role held)"
        + (": " + html.escape(", ".join(f"{r} (n = {int(table.loc[table['role'] == r, 'n'].max())})"
                                      for r in untested)) if untested else "")
        + ". Syntactic roles need dependency trees (--treebank or --parse spacy); block needs segment "
        "pairs.</p>" if (~tested).any() else "")
    unit = (f"<p>Unit of the t-tests: <b>{html.escape(str(summary['unit']))}</b>; "
            f"{html.escape(str(summary.get('unit_note', '')))}.</p>" if "unit" in summary else "")
    if summary.get("silver_sentences"):
        unit += (f"<p><b>{html.escape(silver_note(summary.get('parser')))}</b> Syntactic roles of "
                 f"{int(summary['silver_sentences'])} sentences rest on these trees.</p>")
    roles = table[~table["role"].isin(untested)]
    if roles.empty:
        return start.section("Heads hypothesis: roles", unit + not_tested)
    correction = {"bh": "Benjamini-Hochberg over all head x role tests",
                  "none": "none (as Pande et al.)"}.get(opts.get("correction", "?"), "?")
    rule = "significant t-test" if opts.get("role_rule", "ttest") == "ttest" else "mean score above tau"
    counts = per_layer_counts(roles)
    matrix = colocation(roles)
    both = int((roles["significant"] == roles["above_tau"]).sum())
    grid, letters = held_grid(roles)
    pictures = (
        figs.head_map(grid, "roles_grid", "roles held", "Roles held by each head (letters: which)",
                      what="roles held", cmap="Blues", label="roles", vmin=0, texts=letters,
                      width=grid_width(letters))
        + figs.plot(lambda: colocation_figure(matrix), "roles_colocation", "Co-location: heads holding both roles",
                    matrix.to_numpy(), "Co-location: no head holds any role.")
        + figs.plot(lambda: per_layer_figure(counts), "roles_per_layer", "Heads holding each role, per layer",
                    counts.to_numpy(), "Heads per layer: the same number of heads holds each role in every layer.")
        + figs.plot(lambda: pvalue_figure(roles), "roles_pvalues", "Histogram of the t-tests' p-values",
                    numbers(roles["p"]), "p-values: every test has the same p-value."))
    body = (
        f"<p>Sieve-bias scores per head and role (Pande et al. 2021); a head holds a role by the "
        f"<b>{rule}</b>: one-sided t-test of H0 mean &le; tau = {html.escape(str(opts.get('tau', '?')))} "
        f"at alpha = {html.escape(str(opts.get('alpha', '?')))}; multiple-testing correction: "
        f"<b>{html.escape(correction)}</b>. The t-test and the plain mean-above-tau rule agree on "
        f"{both} of {len(roles)} head x role pairs. Grid letters: "
        + ", ".join(f"{v} = {html.escape(k)}" for k, v in ABBREVIATIONS.items())
        + "; +k = k single-relation syntactic roles.</p>"
        + conventions_html(run, "roles", CONVENTIONS) + unit + not_tested + pictures
        + "<h3>Heads per layer holding each role</h3><div class='wide'>" + counts.to_html(border=0) + "</div>"
        + "<h3>Co-location</h3><div class='wide'>" + matrix.to_html(border=0) + "</div>"
    )
    return start.section("Heads hypothesis: roles", body)


def held_grid(roles: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per head, the number of roles held (shape (n_layers, n_heads)) and their letters (:data:`ABBREVIATIONS`;
    ``+k`` counts the per-relation syntactic roles)."""
    held = roles[roles["has_role"].astype(bool)]
    n_layers, n_heads = int(roles["layer"].max()) + 1, int(roles["head"].max()) + 1
    grid = np.zeros((n_layers, n_heads))
    letters = np.full((n_layers, n_heads), "", dtype=object)
    for (layer, head), group in held.groupby(["layer", "head"]):
        grid[layer, head] = len(group)
        others = sum(r not in ABBREVIATIONS for r in group["role"])
        letters[layer, head] = "".join(ABBREVIATIONS.get(r, "") for r in group["role"]) + (
            f"+{others}" if others else "")
    return grid, letters


def grid_width(letters: np.ndarray) -> float:
    """Inches wide enough for the longest cell text at 7 points (one column at least, two at most)."""
    longest = max((len(str(t)) for t in letters.flat), default=0)
    cell = (longest * CHAR * FONT + 3) / 72
    needed = MARGINS[0] + MARGINS[1] + 0.3 + letters.shape[1] * cell
    return float(min(2 * COLUMN_WIDTH + 0.2, max(COLUMN_WIDTH, needed)))


def colocation_figure(matrix: pd.DataFrame) -> object:
    import matplotlib.pyplot as plt

    size = max(COLUMN_WIDTH, 1.2 + 0.28 * len(matrix))
    fig, ax = plt.subplots(figsize=(size, size), layout="constrained")
    values = matrix.to_numpy()
    im = ax.imshow(values, cmap="Purples")
    ax.set_xticks(range(len(matrix)), matrix.columns, rotation=90)
    ax.set_yticks(range(len(matrix)), matrix.index)
    top = values.max() or 1
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    ax.set_title("heads holding both roles")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def per_layer_figure(counts: pd.DataFrame) -> object:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, COLUMN_WIDTH * 0.75 + 0.12 * ((len(counts.columns) + 1) // 2)),
                           layout="constrained")
    for role in counts.columns:
        ax.plot(counts.index, counts[role], marker="o", markersize=2, linewidth=0.8, label=role)
    ax.set_xlabel("layer")
    ax.set_ylabel("heads holding the role")
    ax.set_xticks(counts.index)
    fig.legend(loc="outside lower center", ncols=2, frameon=False)
    return fig


def pvalue_figure(roles: pd.DataFrame) -> object:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, COLUMN_WIDTH * 0.6), layout="constrained")
    ax.hist(roles["p"].dropna(), bins=np.linspace(0, 1, 21).tolist(), color="grey")
    ax.set_xlabel("p (one-sided, uncorrected)")
    ax.set_ylabel("head x role tests")
    return fig
