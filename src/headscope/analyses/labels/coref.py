"""The atlas's labels from the coreference heads (Clark et al. 2019, section 4.3): the best head of each
mention type with enough mentions."""

from __future__ import annotations

import pandas as pd

from headscope.analyses.findings import AtlasLabels, AtlasRows, fmt


def rows(atlas: AtlasRows) -> None:
    """``coref:<mention type>`` for the best head of each type in ``coref_best.csv`` not below coref_min_n."""
    best = atlas.tables.get("coref_best")
    if best is None or not {"mention_type", "below_min_n", "layer", "head", "accuracy"} <= set(best.columns):
        return
    coref = atlas.tables.get("coref")
    min_n = atlas.summary("coref").get("min_n")
    for row in best.itertuples(index=False):
        if bool(row.below_min_n) or pd.isna(row.layer) or pd.isna(row.head):
            continue
        r = "-"
        if coref is not None and {"method", "mention_type", "accuracy"} <= set(coref.columns):
            part = coref[(coref["method"] == "head") & (coref["mention_type"] == row.mention_type)]
            values = pd.to_numeric(part["accuracy"], errors="coerce")
            r = f"{int((values > row.accuracy).sum()) + 1}/{int(values.notna().sum())}"
        baselines = [f"{b} {fmt(getattr(row, b))}" for b in ("nearest", "head_match", "rule_based")
                     if hasattr(row, b)]
        atlas.add(row.layer, row.head, f"coref:{row.mention_type}", "coref_accuracy", row.accuracy, r,
                  f"best head for {row.mention_type} mentions, n >= {min_n} mentions (Clark et al. 2019)",
                  f"{int(row.n)} mentions",
                  f"accuracy {fmt(row.accuracy)} (rank {r})" + (f"; {', '.join(baselines)}" if baselines else ""))


LABELS = AtlasLabels(groups=("coref:",), rows=rows, order=70)
