"""The atlas's labels from the head importance (Michel et al. 2019): the top share of heads by importance."""

from __future__ import annotations

import math

import pandas as pd

from headscope.analyses.findings import AtlasLabels, AtlasRows, fmt, ranks


def rows(atlas: AtlasRows) -> None:
    """``important`` for the top ``important_fraction`` of the heads (at least one), ties included."""
    heads = atlas.heads
    if "importance" not in heads.columns or not heads["importance"].notna().any():
        return
    summary = atlas.summary("importance")
    fraction = atlas.thresholds["important_fraction"]
    values = pd.to_numeric(heads["importance"], errors="coerce")
    rank, n = ranks(values)
    keep = max(1, math.ceil(fraction * n))
    terms, batches = summary.get("terms"), summary.get("batches")
    sample = (f"{int(terms)} loss terms in {int(batches)} batch{'es' if int(batches) != 1 else ''}"
              if terms is not None and batches is not None
              else "the importance pass")
    for k in values.index[rank <= keep]:
        r = f"{int(rank[k])}/{n}"
        atlas.add(heads.at[k, "layer"], heads.at[k, "head"], "important", "importance", values[k], r,
                  f"top {fraction:.0%} of heads by importance (Michel et al. 2019)", sample,
                  f"importance {fmt(values[k])} (rank {r})")


LABELS = AtlasLabels(groups=("important",), rows=rows, order=90, thresholds={"important_fraction": 0.1},
                     shares=("important_fraction",))
