"""The statistics of a comparison: per-head deltas of every shared column, Welch's tests of the role
changes, the by-layer summary (the reasoning behind them: :mod:`headscope.comparison`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from headscope.analyses.stats import Correction, adjust_pvalues, welch_t_test

#: Columns of a per-head table that identify a row rather than measure something.
ID_COLUMNS = ("layer", "head")


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
