"""The atlas's labels from the heads hypothesis (Pande et al. 2021): a role for each significant row of its
t-tests, tested rows only."""

from __future__ import annotations

import pandas as pd

from headscope.analyses.findings import AtlasLabels, AtlasRows, fmt, fmt_p, ranks


def rows(atlas: AtlasRows) -> None:
    """``role:<role>`` for every head whose one-sided t-test of the role is significant."""
    roles = atlas.tables.get("roles")
    if roles is None or not {"role", "significant", "score_mean"} <= set(roles.columns):
        return
    summary = atlas.summary("roles")
    tested = roles["tested"].astype(bool) if "tested" in roles.columns else pd.Series(True, index=roles.index)
    correction = str(summary.get("correction", "bh"))
    adjusted = "BH-adjusted p" if correction.lower() in ("bh", "benjamini-hochberg") else (
        "p (no correction)" if correction.lower() == "none" else f"{correction}-adjusted p")
    rule = (f"one-sided t-test vs tau={float(summary.get('tau', 3)):g}, {adjusted} < "
            f"{float(summary.get('alpha', 0.05)):g} (Pande et al. 2021)")
    unit = str(summary.get("unit", "sentence"))
    for role, part in roles.groupby("role", sort=False):
        part_tested = part[tested[part.index]]
        values = pd.to_numeric(part_tested["score_mean"], errors="coerce")
        rank, n = ranks(values)
        for k in part_tested.index[part_tested["significant"].astype(bool)]:
            r = f"{int(rank[k])}/{n}"
            p = roles.at[k, "p_adjusted"] if "p_adjusted" in roles.columns else float("nan")
            t = roles.at[k, "t"] if "t" in roles.columns else float("nan")
            n_units = int(roles.at[k, "n"]) if "n" in roles.columns else 0
            atlas.add(roles.at[k, "layer"], roles.at[k, "head"], f"role:{role}", f"role_{role}", values[k], r,
                      rule, f"n = {n_units} {unit}s",
                      f"{role} score {fmt(values[k])} (rank {r}); t = {fmt(t)}, {fmt_p(p)}")


LABELS = AtlasLabels(groups=("role:",), rows=rows, order=50)
