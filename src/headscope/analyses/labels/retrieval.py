"""The atlas's labels from the retrieval analysis: retrieval heads (Wu et al. 2024), the analysis's own flag."""

from __future__ import annotations

import pandas as pd

from headscope.analyses.findings import AtlasLabels, AtlasRows, fmt, is_true, ranks


def rows(atlas: AtlasRows) -> None:
    """``retrieval_head``, and, in runs with the test, the score's bootstrap interval over prompts clearing the
    decoy spans' score by the margin."""
    retrieval = atlas.tables.get("retrieval")
    if retrieval is None or not {"retrieval_score", "retrieval_head"} <= set(retrieval.columns):
        return
    summary = atlas.summary("retrieval")
    values = pd.to_numeric(retrieval["retrieval_score"], errors="coerce")
    rank, n = ranks(values)
    rule = f"retrieval_score > {float(summary.get('threshold', 0.1)):g} (Wu et al. 2024)"
    sample = f"{int(summary.get('used', 0))} of {int(summary.get('prompts', 0))} prompts scored"
    flag = is_true(retrieval["retrieval_head"])
    tested = {"retrieval_above_chance", "retrieval_score_low", "retrieval_score_high",
              "retrieval_score_chance"} <= set(retrieval.columns)
    if tested:  # and the score's bootstrap interval over prompts clears the decoy spans' score by the margin
        flag &= is_true(retrieval["retrieval_above_chance"])
        rule += (f" and its 95% bootstrap interval over prompts: lower bound > chance (the same copies scored "
                 f"on decoy spans) + {float(summary.get('margin', float('nan'))):g}, at least "
                 f"{summary.get('min_n')} prompts used")
    for k in retrieval.index[flag]:
        r = f"{int(rank[k])}/{n}"
        evidence = f"retrieval_score {fmt(values[k])} (rank {r})"
        if tested:
            low, high, chance = (float(retrieval.at[k, f"retrieval_score_{p}"]) for p in ("low", "high", "chance"))
            evidence = (f"retrieval_score {fmt(values[k])} [{fmt(low)}, {fmt(high)}] vs chance {fmt(chance)} "
                        f"(rank {r})")
        atlas.add(retrieval.at[k, "layer"], retrieval.at[k, "head"], "retrieval", "retrieval_score", values[k],
                  r, rule, sample, evidence)


LABELS = AtlasLabels(groups=("retrieval",), rows=rows, order=30)
