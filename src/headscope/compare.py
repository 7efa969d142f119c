"""Two finished runs side by side: ``headscope compare RUN_A RUN_B --out DIR``.

Works from the run directories alone (no model). For every head:

- every numeric statistic both runs have, in ``heads.csv`` and in any per-head table (a table with
  ``layer`` and ``head`` columns; its text columns such as ``relation`` become keys): ``a``, ``b`` and
  ``delta = b - a``;
- every role of ``roles.csv`` both runs have: the change of the mean sieve-bias score with a test of it.
  ``roles.csv`` keeps each role's per-sentence sufficient statistics (``n``, ``score_sum``,
  ``score_sumsq``, hence ``score_mean`` and ``score_var``), so the change is tested with Welch's two-sided
  t-test from count, mean and variance, then Benjamini-Hochberg corrected (or not) over all head x role
  tests. With both runs on the same sentences the scores are paired; a paired test would need per-sentence
  differences, which no run keeps, so Welch's test is the conservative choice (it ignores the positive
  correlation between the two models' scores on one sentence). A change is tested only when both runs
  have at least ``min_n`` scores of the role (default 30, as ``roles_min_n``); otherwise ``tested`` is
  False, ``t`` and ``p`` are NaN and it is not significant. A role is *gained* (*lost*) only when the runs'
  own ``has_role`` flips to True (False) **and** the change of the mean score is significant by that test
  (``p_adjusted < alpha``) in the same direction; a flip without a significant change is listed apart as
  ``crossed_up`` / ``crossed_down`` ("crossed the threshold, change not significant"): one run's test
  passing and the other's failing is no evidence that the two differ.

Runs made under different ``--conventions`` are refused (the same column would hold two definitions, so its
change would mix the models' difference with the definitions'), unless ``--allow-mixed-conventions``; the
conventions of each run are recorded in ``compare.json`` and on the page.

Outputs in ``DIR``: ``compare_heads.csv``, ``compare_roles.csv``, ``compare_layers.csv``,
``compare_{table}.csv`` for other per-head tables, ``compare.json``, ``figures/*.png|svg`` and the page
``report/index.html``, laid out as a run's report (what changed first; details folded at the end). A change
map is drawn only where something changed; otherwise a sentence says so.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from headscope.analyses.base import head_name
from headscope.analyses.stats import Correction, adjust_pvalues, welch_t_test
from headscope.engine.results import RunResult, write_json, write_table
from headscope.report.page import render_page
from headscope.report.section import (
    ReportSection,
    SectionFigures,
    fmt,
    no_figure_html,
    numbers,
    value_range,
    varies,
)

logger = logging.getLogger("headscope")

#: Columns of a per-head table that identify a row rather than measure something.
ID_COLUMNS = ("layer", "head")


class MixedConventionsError(ValueError):
    """The two runs define some statistic differently (``--conventions``)."""


def run_conventions(run: RunResult) -> dict[str, str]:
    """The conventions that produced each analysis's tables, from its ``run.json`` summary.

    An analysis that does not record them has a single definition (it does not read ``--conventions``), and
    runs from before ``--conventions`` existed used headscope's: both count as ``headscope``.
    """
    return {name: str(summary.get("conventions", "headscope")) if isinstance(summary, dict) else "headscope"
            for name, summary in run.run.get("analyses", {}).items()}


def conventions_check(a: RunResult, b: RunResult) -> list[str]:
    """The analyses both runs have whose tables were produced under different conventions, described."""
    conv_a, conv_b = run_conventions(a), run_conventions(b)
    return [f"{name}: {conv_a[name]} in A, {conv_b[name]} in B" for name in conv_a
            if name in conv_b and conv_a[name] != conv_b[name]]


@dataclass
class Comparison:
    """What changed from run A to run B, head by head."""

    heads: pd.DataFrame
    """One row per head and ``heads.csv`` statistic: ``layer, head, statistic, a, b, delta``."""
    roles: pd.DataFrame | None
    """One row per head and role: ``layer, head, role, n_a, mean_a, var_a, n_b, mean_b, var_b, delta, t, p,
    p_adjusted, tested, significant, has_role_a, has_role_b, change``; ``change`` is gained or lost (has_role
    flipped with a significant change of the score in that direction), crossed_up or crossed_down (has_role
    flipped, change not significant), kept or none. None when a run has no ``roles.csv``."""
    layers: pd.DataFrame
    """One row per layer: mean absolute change of every compared statistic and role counts."""
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    """Other per-head tables by stem: key columns plus ``statistic, a, b, delta``."""
    summary: dict[str, Any] = field(default_factory=dict)
    """Models, corpus check, options and counts, written as ``compare.json``."""

    def save(self, out: str | Path) -> Path:
        """Write the tables, ``compare.json``, the figures and ``report/index.html`` into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_table(out, "compare_heads", self.heads)
        write_table(out, "compare_layers", self.layers)
        if self.roles is not None:
            write_table(out, "compare_roles", self.roles)
        for stem, table in self.tables.items():
            write_table(out, f"compare_{stem}", table)
        write_json(out / "compare.json", self.summary)
        write_page(self, out)
        return out


def _as_run(run: str | Path | RunResult) -> RunResult:
    return run if isinstance(run, RunResult) else RunResult.load(run)


def _corpus_check(a: RunResult, b: RunResult) -> list[str]:
    """Differences between the two runs' inputs that make a head-by-head comparison doubtful."""
    problems = []
    files_a = [(f.get("role"), f.get("sha256")) for f in a.run.get("files", [])]
    files_b = [(f.get("role"), f.get("sha256")) for f in b.run.get("files", [])]
    if files_a != files_b:
        problems.append("the runs read different corpus files (roles or sha256 differ)")
    for key in ("examples", "tokens", "sentences_used"):
        ca, cb = a.run.get("counts", {}).get(key), b.run.get("counts", {}).get(key)
        if ca != cb:
            problems.append(f"{key}: {ca} in A, {cb} in B")
    return problems


def long_deltas(table_a: pd.DataFrame, table_b: pd.DataFrame) -> pd.DataFrame:
    """Per-row change of every numeric column two per-head tables share.

    Parameters
    ----------
    table_a, table_b : DataFrame
        Tables with ``layer`` and ``head`` columns; text columns are keys.

    Returns
    -------
    DataFrame
        The key columns, then ``statistic, a, b, delta`` (``b - a``); rows present in only one run are
        left out.
    """
    def is_text(column: pd.Series) -> bool:
        return not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column))

    keys = [*ID_COLUMNS, *(c for c in table_a.columns if c not in ID_COLUMNS and c in table_b.columns
                            and (is_text(table_a[c]) or is_text(table_b[c])))]
    values = [c for c in table_a.columns if c in table_b.columns and c not in keys
              and pd.api.types.is_numeric_dtype(table_a[c]) and pd.api.types.is_numeric_dtype(table_b[c])
              and not pd.api.types.is_bool_dtype(table_a[c])]
    if not values:
        return pd.DataFrame(columns=[*keys, "statistic", "a", "b", "delta"])
    a = table_a[keys + values].drop_duplicates(keys).melt(id_vars=keys, var_name="statistic", value_name="a")
    b = table_b[keys + values].drop_duplicates(keys).melt(id_vars=keys, var_name="statistic", value_name="b")
    merged = a.merge(b, on=[*keys, "statistic"], how="inner")
    merged["delta"] = merged["b"] - merged["a"]
    return merged.sort_values(["statistic", *keys], kind="stable").reset_index(drop=True)


def without_labels(heads: pd.DataFrame) -> pd.DataFrame:
    """``heads.csv`` without its label columns: cluster numbers (``cluster``, ``cluster_kmeans``, ...) name
    groups, and B's cluster 3 has nothing to do with A's, so their difference means nothing."""
    labels = [c for c in heads.columns if c.startswith("cluster") and c != "cluster_distance"]
    return heads.drop(columns=labels)


#: Fewest scores on each side for a role-change test (the roles analysis's ``roles_min_n`` default).
MIN_N = 30
#: The values of ``change`` that mean a flip of ``has_role`` with no significant change of the score.
CROSSED = ("crossed_up", "crossed_down")


def role_changes(roles_a: pd.DataFrame, roles_b: pd.DataFrame, alpha: float = 0.05, correction: Correction = "bh",
                 min_n: int = MIN_N) -> pd.DataFrame:
    """Welch's t-test of the change of every head's mean sieve-bias score, role by role.

    Parameters
    ----------
    roles_a, roles_b : DataFrame
        ``roles.csv`` of the two runs (``n``, ``score_mean``, ``score_var``, ``has_role``).
    alpha : float
    correction : {"bh", "none"}
        Over the tested rows only.
    min_n : int
        Fewest scores in each run for a row to be tested.

    Returns
    -------
    DataFrame
        See :attr:`Comparison.roles`; ``t`` is positive when B scores higher.
    """
    if min_n < 2:
        raise ValueError(f"min_n must be at least 2, got {min_n}")
    cols = ["layer", "head", "role", "n", "score_mean", "score_var", "has_role"]
    merged = roles_a[cols].merge(roles_b[cols], on=["layer", "head", "role"], suffixes=("_a", "_b"))
    merged = merged.rename(columns={"score_mean_a": "mean_a", "score_mean_b": "mean_b",
                                    "score_var_a": "var_a", "score_var_b": "var_b"})
    merged["delta"] = merged["mean_b"] - merged["mean_a"]
    col = {c: merged[c].to_numpy(dtype=float) for c in ("mean_a", "var_a", "n_a", "mean_b", "var_b", "n_b")}
    t, p = welch_t_test(col["mean_b"], col["var_b"], col["n_b"], col["mean_a"], col["var_a"], col["n_a"])
    # Identical scores (zero variance on both sides, same mean) are no change rather than 0/0.
    same = (merged["delta"] == 0).to_numpy() & (merged[["n_a", "n_b"]].min(axis=1) > 1).to_numpy()
    t[same], p[same] = 0.0, 1.0
    tested = (merged[["n_a", "n_b"]].min(axis=1) >= min_n).to_numpy()
    t[~tested], p[~tested] = np.nan, np.nan
    merged["t"], merged["p"], merged["tested"] = t, p, tested
    merged["p_adjusted"] = adjust_pvalues(p, correction)
    merged["significant"] = merged["p_adjusted"] < alpha
    a, b = merged["has_role_a"].astype(bool), merged["has_role_b"].astype(bool)
    sig, delta = merged["significant"], merged["delta"]
    merged["change"] = np.select(
        [~a & b & sig & (delta > 0), a & ~b & sig & (delta < 0), ~a & b, a & ~b, a & b],
        ["gained", "lost", "crossed_up", "crossed_down", "kept"], default="none")
    order = ["layer", "head", "role", "n_a", "mean_a", "var_a", "n_b", "mean_b", "var_b", "delta", "t", "p",
             "p_adjusted", "tested", "significant", "has_role_a", "has_role_b", "change"]
    return merged[order].sort_values(["layer", "head"], kind="stable").reset_index(drop=True)


def layer_summary(heads: pd.DataFrame, roles: pd.DataFrame | None) -> pd.DataFrame:
    """Per layer: mean |delta| of each ``heads.csv`` statistic and of the role scores, and role counts."""
    parts = []
    if len(heads):
        parts.append(heads.assign(abs_delta=heads["delta"].abs()).pivot_table(
            index="layer", columns="statistic", values="abs_delta", aggfunc="mean").add_prefix("mean_abs_delta_"))
    if roles is not None and len(roles):
        grouped = roles.assign(abs_delta=roles["delta"].abs()).groupby("layer")
        parts.append(pd.DataFrame({
            "mean_abs_delta_role_score": grouped["abs_delta"].mean(),
            "role_changes_significant": grouped["significant"].sum(),
            "roles_gained": grouped["change"].apply(lambda c: int((c == "gained").sum())),
            "roles_lost": grouped["change"].apply(lambda c: int((c == "lost").sum())),
            "roles_crossed_not_significant": grouped["change"].apply(lambda c: int(c.isin(CROSSED).sum())),
        }))
    if not parts:
        return pd.DataFrame(columns=["layer"])
    return pd.concat(parts, axis=1).reset_index().rename(columns={"index": "layer"})


def compare(run_a: str | Path | RunResult, run_b: str | Path | RunResult, alpha: float = 0.05,
            correction: Correction = "bh", allow_mixed_conventions: bool = False, min_n: int = MIN_N) -> Comparison:
    """Compare two finished runs of models with the same number of layers and heads.

    Parameters
    ----------
    run_a, run_b : path or RunResult
        Run directories (``headscope run --out``) or loaded runs; B is compared against A.
    alpha : float
        Significance level of the role-change tests.
    correction : {"bh", "none"}
        Multiple-testing correction over all head x role tests.
    allow_mixed_conventions : bool
        Compare runs whose analyses used different ``--conventions`` (refused otherwise).
    min_n : int
        Fewest scores of a role in each run for its change to be tested (:func:`role_changes`).

    Returns
    -------
    Comparison

    Raises
    ------
    MixedConventionsError
        When the runs' conventions differ and ``allow_mixed_conventions`` is False.
    """
    if correction not in typing.get_args(Correction):
        raise ValueError(f"correction must be 'bh' or 'none', got {correction!r}")
    a, b = _as_run(run_a), _as_run(run_b)
    shape_a = (a.run.get("model", {}).get("n_layers"), a.run.get("model", {}).get("n_heads"))
    shape_b = (b.run.get("model", {}).get("n_layers"), b.run.get("model", {}).get("n_heads"))
    if shape_a != shape_b:
        raise ValueError(f"the models differ in shape ({shape_a[0]}x{shape_a[1]} vs {shape_b[0]}x{shape_b[1]} "
                         "layers x heads); heads can only be compared one to one")
    mixed = conventions_check(a, b)
    if mixed and not allow_mixed_conventions:
        raise MixedConventionsError(
            "the runs were made under different --conventions (" + "; ".join(mixed) + "): the same column is "
            "defined differently in each (e.g. prev/next over n - 1 or n, entropies of raw or smoothed maps), so "
            "its change would mix the models' difference with the definitions'. Re-run one of them with the "
            "other's --conventions, or pass --allow-mixed-conventions to compare them anyway")
    for problem in mixed:
        logger.warning("compare: different conventions: %s", problem)
    problems = _corpus_check(a, b)
    for problem in problems:
        logger.warning("compare: %s", problem)
    heads = long_deltas(without_labels(a.heads), without_labels(b.heads))
    roles = None
    if "roles" in a.tables and "roles" in b.tables:
        roles = role_changes(a.tables["roles"], b.tables["roles"], alpha, correction, min_n)
    tables = {stem: long_deltas(a.tables[stem], b.tables[stem]) for stem in sorted(set(a.tables) & set(b.tables))
              # roles has its own comparison; the atlas's rows are labels, not statistics to subtract
              if stem not in ("roles", "atlas")
              and set(ID_COLUMNS) <= set(a.tables[stem].columns) & set(b.tables[stem].columns)}
    layers = layer_summary(heads, roles)
    summary: dict[str, Any] = {
        "a": {"model": a.run.get("model", {}).get("name"), "out": a.run.get("config", {}).get("out")},
        "b": {"model": b.run.get("model", {}).get("name"), "out": b.run.get("config", {}).get("out")},
        "shape": list(shape_a), "corpus_differences": problems, "alpha": alpha, "correction": correction,
        "conventions": {"a": run_conventions(a), "b": run_conventions(b)}, "mixed_conventions": mixed,
        "run_conventions": {key: run.run.get("config", {}).get("conventions", "headscope")
                            for key, run in (("a", a), ("b", b))},
        "test": "Welch two-sided t-test from per-unit count/mean/variance of roles.csv", "min_n": min_n,
        "roles_gained_lost": "has_role flipped and the change is significant (p_adjusted < alpha) in that "
                             f"direction, which needs a tested row (at least min_n = {min_n} scores in each run); "
                             "other flips are roles_crossed_not_significant",
        "statistics": sorted(heads["statistic"].unique().tolist()), "tables": sorted(tables),
    }
    if roles is not None:
        summary["role_changes_significant"] = int(roles["significant"].sum())
        summary["roles_gained"] = roles.loc[roles["change"] == "gained"].groupby("role").size().to_dict()
        summary["roles_lost"] = roles.loc[roles["change"] == "lost"].groupby("role").size().to_dict()
        summary["roles_crossed_not_significant"] = {
            kind: roles.loc[roles["change"] == kind].groupby("role").size().to_dict() for kind in CROSSED}
        summary["role_changes_not_tested"] = int((~roles["tested"]).sum())
        if summary["role_changes_not_tested"]:
            logger.warning("compare: %d of %d head x role changes not tested (fewer than min_n = %d scores in a "
                           "run)", summary["role_changes_not_tested"], len(roles), min_n)
        opts = [r.run.get("analysis_options", {}).get("roles", {}) for r in (a, b)]
        if opts[0] != opts[1]:
            summary["roles_options_differ"] = opts
    return Comparison(heads=heads, roles=roles, layers=layers, tables=tables, summary=summary)


def delta_map(figs: SectionFigures, values: pd.DataFrame, column: str, title: str, name: str, caption: str,
              marks: pd.DataFrame | None = None, what: str | None = None) -> str:
    """A layer x head map of a change, centred on 0 (``marks``: (layer, head) rows get a dot), or the sentence
    saying it did not change (:meth:`~headscope.report.section.SectionFigures.head_map`)."""
    from headscope.report.figures import head_grid

    grid = head_grid(values, column)
    limit = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 0.0
    dots = None
    if marks is not None and len(marks):
        dots = np.zeros(grid.shape, dtype=bool)
        dots[marks["layer"].to_numpy(int), marks["head"].to_numpy(int)] = True
    return figs.head_map(grid, name, title, caption, what=what or f"{caption} (B - A)", cmap="RdBu_r", label="B - A",
                         vmin=-(limit or 1.0), vmax=limit or 1.0, marks=dots)


def layer_figure(layers: pd.DataFrame, scores: bool = True, changes: bool = True) -> Any:
    """Per layer: mean |change| of the role scores (``scores``), and roles gained and lost (``changes``); a
    panel whose numbers do not vary is left out (the page says its value in a sentence)."""
    import matplotlib.pyplot as plt

    from headscope.report.figures import COLUMN_WIDTH

    panels = int(scores) + int(changes)
    fig, grid = plt.subplots(panels, 1, figsize=(COLUMN_WIDTH, COLUMN_WIDTH * panels / 2), layout="constrained",
                             sharex=True, squeeze=False)
    axes = list(grid[:, 0])
    if scores:
        top = axes.pop(0)
        top.bar(layers["layer"], layers["mean_abs_delta_role_score"], color="grey")
        top.set_ylabel("mean |delta score|")
    if changes:
        bottom = axes.pop(0)
        width = 0.4
        bottom.bar(layers["layer"] - width / 2, layers["roles_gained"], width, label="gained", color="tab:blue")
        bottom.bar(layers["layer"] + width / 2, layers["roles_lost"], width, label="lost", color="tab:red")
        bottom.set_ylabel("head x role")
        bottom.legend(frameon=False)
    fig.axes[-1].set_xlabel("layer")
    fig.axes[-1].set_xticks(layers["layer"])
    return fig


def layer_constants(layers: pd.DataFrame) -> tuple[bool, bool, list[str]]:
    """Which of the by-layer panels vary (the mean |change| of the role scores; the roles gained and lost),
    and what each that does not says (a constant is said, not drawn)."""
    scores = varies(layers["mean_abs_delta_role_score"])
    changes = varies(numbers(layers["roles_gained"], layers["roles_lost"]))
    said = []
    if not scores and value_range(layers["mean_abs_delta_role_score"]) is not None:
        value = float(layers["mean_abs_delta_role_score"].dropna().iloc[0])
        said.append("no role score changed" if value == 0 else
                    f"the mean |change| of the role scores is {fmt(value)} in every layer")
    if not changes:
        gained, lost = int(layers["roles_gained"].iloc[0]), int(layers["roles_lost"].iloc[0])
        said.append("no role was gained or lost in any layer" if gained == lost == 0 else
                    f"every layer gained {gained} and lost {lost} head x role pairs")
    return scores, changes, said


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


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", metavar="RUN_A", help="directory of the first run (headscope run --out)")
    parser.add_argument("run_b", metavar="RUN_B", help="directory of the second run; changes are B - A")
    parser.add_argument("--out", default="headscope-compare", help="output directory (default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level (default: %(default)s)")
    parser.add_argument("--correction", choices=typing.get_args(Correction), default="bh",
                        help="multiple-testing correction of the role-change tests (default: %(default)s)")
    parser.add_argument("--min-n", type=int, default=MIN_N,
                        help="fewest scores of a role in each run for its change to be tested (default: "
                             "%(default)s)")
    parser.add_argument("--allow-mixed-conventions", action="store_true",
                        help="compare runs made under different --conventions (refused otherwise: the same "
                             "statistic would be defined differently in A and B)")


def main_compare(args: argparse.Namespace) -> int:
    comparison = compare(args.run_a, args.run_b, alpha=args.alpha, correction=args.correction,
                         allow_mixed_conventions=args.allow_mixed_conventions, min_n=args.min_n)
    out = comparison.save(args.out)
    for line in summary_lines(comparison):
        print(line)
    print(f"Wrote the page {out / 'report' / 'index.html'} and the tables compare_heads.csv, compare_layers.csv"
          + (", compare_roles.csv" if comparison.roles is not None else "") + f" in {out}.")
    return 0
