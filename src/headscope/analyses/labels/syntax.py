"""The atlas's labels from the syntax heads (Clark et al. 2019, section 4): a head's best dependency relation,
with enough arcs and above its best fixed offset."""

from __future__ import annotations

import math

import pandas as pd

from headscope.analyses.findings import AtlasLabels, AtlasRows, fmt

#: The per-head columns the label rests on.
COLUMNS = {"syntax_best_relation", "syntax_best_accuracy", "syntax_best_n", "syntax_best_baseline"}


def rows(atlas: AtlasRows) -> None:
    """``syntax:<relation>`` for a head whose best relation has n >= syntax_min_n arcs and an accuracy above
    its fixed-offset baseline; the rank is among the heads on that relation (``syntax.csv``)."""
    heads = atlas.heads
    if not set(heads.columns) >= COLUMNS:
        return
    min_n = int(atlas.summary("syntax").get("min_n", 0))
    accuracy = pd.to_numeric(heads["syntax_best_accuracy"], errors="coerce")
    syntax = atlas.tables.get("syntax")
    for k in heads.index:
        relation = heads.at[k, "syntax_best_relation"]
        n = float(heads.at[k, "syntax_best_n"])
        baseline = float(heads.at[k, "syntax_best_baseline"])
        if not isinstance(relation, str) or not relation or not math.isfinite(n) or n < min_n:
            continue
        if not (math.isfinite(baseline) and accuracy[k] > baseline):
            continue
        r = "-"
        if syntax is not None and {"split", "relation", "accuracy"} <= set(syntax.columns):
            same = syntax[(syntax["split"] == "all") & (syntax["relation"] == relation)]
            per_head = same.groupby(["layer", "head"])["accuracy"].max()
            better = int((per_head > accuracy[k]).sum())
            r = f"{better + 1}/{len(per_head)}"
        atlas.add(heads.at[k, "layer"], heads.at[k, "head"], f"syntax:{relation}", "syntax_best_accuracy",
                  accuracy[k], r, f"best relation with n >= {min_n} arcs and accuracy > its best fixed offset "
                  f"(Clark et al. 2019)", f"{int(n)} arcs",
                  f"{relation} accuracy {fmt(accuracy[k])} (rank {r}) vs offset baseline {fmt(baseline)}")


LABELS = AtlasLabels(groups=("syntax:",), rows=rows, order=60)
