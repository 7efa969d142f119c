"""The atlas's labels from the distance patterns (after Guan et al. 2020): the name of the head's cluster,
except ``mixed``."""

from __future__ import annotations

import pandas as pd

from headscope.analyses.findings import AtlasLabels, AtlasRows


def rows(atlas: AtlasRows) -> None:
    """``pattern:<name>`` for every head whose cluster's centroid gave it a name other than ``mixed``."""
    heads = atlas.heads
    if "pattern" not in heads.columns:
        return
    clusters = heads["cluster"] if "cluster" in heads.columns else None
    sizes = heads.groupby("pattern").size()
    for k in heads.index:
        name = heads.at[k, "pattern"]
        if not isinstance(name, str) or not name or name == "mixed":
            continue
        cluster = clusters[k] if clusters is not None else float("nan")
        where = f"cluster {int(cluster)}" if clusters is not None and pd.notna(cluster) else "a cluster"
        atlas.add(heads.at[k, "layer"], heads.at[k, "head"], f"pattern:{name}", "pattern",
                  float(cluster) if pd.notna(cluster) else float("nan"), "-",
                  "the head's cluster of distance features, named from its centroid (docs/patterns.md, after "
                  "Guan et al. 2020)", f"{len(heads)} heads clustered{atlas.tokens()}",
                  f"{where} ({int(sizes[name])} head{'s' if int(sizes[name]) != 1 else ''} named {name})")


LABELS = AtlasLabels(groups=("pattern:",), rows=rows, order=80)
