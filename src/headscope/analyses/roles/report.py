"""The roles analysis's report section and figures (from a finished run's files alone)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from headscope.analyses.roles.options import (
    ABBREVIATIONS,
    CONVENTIONS,
)

if TYPE_CHECKING:
    from headscope.engine.results import RunResult
    from headscope.report.section import ReportSection


def colocation(roles: pd.DataFrame, column: str = "has_role") -> pd.DataFrame:
    """How many heads hold each pair of roles (the diagonal: how many hold the role).

    Parameters
    ----------
    roles : DataFrame
        ``roles.csv`` (``layer, head, role`` and ``column``).

    Returns
    -------
    DataFrame of shape (n_roles, n_roles), index and columns the roles in table order
    """
    order = list(dict.fromkeys(roles["role"]))
    held = roles.pivot_table(index=["layer", "head"], columns="role", values=column, aggfunc="max",
                             fill_value=False).reindex(columns=order, fill_value=False).astype(int)
    matrix = held.T.to_numpy() @ held.to_numpy()
    return pd.DataFrame(matrix, index=pd.Index(order, name="role"), columns=order)


def per_layer_counts(roles: pd.DataFrame, column: str = "has_role") -> pd.DataFrame:
    """Number of heads per layer that hold each role: index layer, one column per role."""
    order = list(dict.fromkeys(roles["role"]))
    counts = roles.assign(_held=roles[column].astype(bool)).pivot_table(
        index="layer", columns="role", values="_held", aggfunc="sum", fill_value=0)
    return counts.reindex(columns=order, fill_value=0).astype(int)


def roles_section(run: RunResult, figures: Path) -> ReportSection | None:
    """The report section of the roles analysis, from a finished run's ``roles.csv`` and summary."""
    if "roles" not in run.tables:
        return None
    from headscope.report.section import ReportSection, conventions_html, figure_html, silver_note

    table = run.tables["roles"]
    opts = {**run.run.get("analysis_options", {}).get("roles", {}),
            **{k: v for k, v in run.run.get("analyses", {}).get("roles", {}).items() if k == "correction"}}
    summary = run.run.get("analyses", {}).get("roles", {})
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
        return ReportSection(key="roles", title="Heads hypothesis: roles", html=unit + not_tested,
                             figures=[])
    names = [roles_grid_figure(roles, figures), colocation_figure(roles, figures),
             per_layer_figure(roles, figures), pvalue_figure(roles, figures)]
    correction = {"bh": "Benjamini-Hochberg over all head x role tests",
                  "none": "none (as Pande et al.)"}.get(opts.get("correction", "?"), "?")
    rule = "significant t-test" if opts.get("role_rule", "ttest") == "ttest" else "mean score above tau"
    counts = per_layer_counts(roles)
    both = int((roles["significant"] == roles["above_tau"]).sum())
    captions = ["Roles held by each head", "Co-location: heads holding both roles",
                "Heads holding each role, per layer", "Histogram of the t-tests' p-values"]
    body = (
        f"<p>Sieve-bias scores per head and role (Pande et al. 2021); a head holds a role by the "
        f"<b>{rule}</b>: one-sided t-test of H0 mean &le; tau = {html.escape(str(opts.get('tau', '?')))} "
        f"at alpha = {html.escape(str(opts.get('alpha', '?')))}; multiple-testing correction: "
        f"<b>{html.escape(correction)}</b>. The t-test and the plain mean-above-tau rule agree on "
        f"{both} of {len(roles)} head x role pairs. Grid letters: "
        + ", ".join(f"{v} = {html.escape(k)}" for k, v in ABBREVIATIONS.items())
        + "; +k = k single-relation syntactic roles.</p>"
        + conventions_html(run, "roles", CONVENTIONS) + unit + not_tested
        + "".join(figure_html(n, c) for n, c in zip(names, captions, strict=True))
        + "<h3>Heads per layer holding each role</h3>" + counts.to_html(border=0)
        + "<h3>Co-location</h3>" + colocation(roles).to_html(border=0)
    )
    return ReportSection(key="roles", title="Heads hypothesis: roles", html=body, figures=names)


def roles_grid_figure(roles: pd.DataFrame, figures: Path) -> str:
    """Layer x head grid: colour = number of roles held, letters = which (see :data:`ABBREVIATIONS`; ``+k``
    counts the per-relation syntactic roles)."""
    from headscope.report.figures import layer_head_heatmap, save_figure

    held = roles[roles["has_role"].astype(bool)]
    n_layers, n_heads = int(roles["layer"].max()) + 1, int(roles["head"].max()) + 1
    grid = np.zeros((n_layers, n_heads))
    letters = np.full((n_layers, n_heads), "", dtype=object)
    for (layer, head), group in held.groupby(["layer", "head"]):
        grid[layer, head] = len(group)
        others = sum(r not in ABBREVIATIONS for r in group["role"])
        letters[layer, head] = "".join(ABBREVIATIONS.get(r, "") for r in group["role"]) + (
            f"+{others}" if others else "")
    fig = layer_head_heatmap(grid, "roles held", cmap="Blues", label="roles", vmin=0)
    ax = fig.axes[0]
    for (layer, head), text in np.ndenumerate(letters):
        if text:
            ax.text(head, layer, text, ha="center", va="center", fontsize=4)
    save_figure(fig, figures, "roles_grid")
    return "roles_grid"


def colocation_figure(roles: pd.DataFrame, figures: Path) -> str:
    import matplotlib.pyplot as plt

    from headscope.report.figures import COLUMN_WIDTH, save_figure

    matrix = colocation(roles)
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, COLUMN_WIDTH), layout="constrained")
    im = ax.imshow(matrix.to_numpy(), cmap="Purples")
    ax.set_xticks(range(len(matrix)), matrix.columns, rotation=90, fontsize=5)
    ax.set_yticks(range(len(matrix)), matrix.index, fontsize=5)
    for (i, j), v in np.ndenumerate(matrix.to_numpy()):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=4)
    ax.set_title("heads holding both roles")
    fig.colorbar(im, ax=ax, shrink=0.8)
    save_figure(fig, figures, "roles_colocation")
    return "roles_colocation"


def per_layer_figure(roles: pd.DataFrame, figures: Path) -> str:
    import matplotlib.pyplot as plt

    from headscope.report.figures import COLUMN_WIDTH, save_figure

    counts = per_layer_counts(roles)
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, COLUMN_WIDTH * 0.75), layout="constrained")
    for role in counts.columns:
        ax.plot(counts.index, counts[role], marker="o", markersize=2, linewidth=0.8, label=role)
    ax.set_xlabel("layer")
    ax.set_ylabel("heads holding the role")
    ax.set_xticks(counts.index)
    ax.legend(fontsize=4, ncol=2)
    save_figure(fig, figures, "roles_per_layer")
    return "roles_per_layer"


def pvalue_figure(roles: pd.DataFrame, figures: Path) -> str:
    import matplotlib.pyplot as plt

    from headscope.report.figures import COLUMN_WIDTH, save_figure

    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, COLUMN_WIDTH * 0.6), layout="constrained")
    ax.hist(roles["p"].dropna(), bins=np.linspace(0, 1, 21).tolist(), color="grey")
    ax.set_xlabel("p (one-sided, uncorrected)")
    ax.set_ylabel("head x role tests")
    save_figure(fig, figures, "roles_pvalues")
    return "roles_pvalues"
