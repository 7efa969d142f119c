"""The comparison of two runs: :class:`Comparison` (what :func:`compare` returns) and :func:`compare`, which
loads the two runs, checks that they can be compared head by head and computes the changes."""

from __future__ import annotations

import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from headscope.analyses.stats import Correction
from headscope.comparison.stats import (
    CROSSED,
    ID_COLUMNS,
    MIN_N,
    layer_summary,
    long_deltas,
    role_changes,
    without_labels,
)
from headscope.engine.results import RunResult

logger = logging.getLogger("headscope")


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
        from headscope.comparison.save import save

        return save(self, out)


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
