"""The atlas's labels from the head effects (docs/head_effects.md): heads that matter, the loss rising when the
head is ablated with the whole bootstrap interval of the change above 0 (a test, not a rank: a head with a
small but sure effect is labelled)."""

from __future__ import annotations

import pandas as pd

from headscope.analyses.findings import AtlasLabels, AtlasRows, fmt, ranks


def rows(atlas: AtlasRows) -> None:
    """``matters`` for every head whose ``effect_low`` is above 0."""
    heads = atlas.heads
    if not {"effect", "effect_low", "effect_high"} <= set(heads.columns) or not heads["effect"].notna().any():
        return
    summary = atlas.summary("head_effects")
    values = pd.to_numeric(heads["effect"], errors="coerce")
    low = pd.to_numeric(heads["effect_low"], errors="coerce")
    high = pd.to_numeric(heads["effect_high"], errors="coerce")
    rank, n = ranks(values)
    ablation = summary.get("ablation", "mean")
    boot = summary.get("bootstrap", {}) or {}
    sample = str(boot.get("rests_on", "the head_effects pass"))
    rule = (f"the {summary.get('loss', 'loss')} rises when the head's output is replaced by its "
            f"{'corpus mean' if ablation == 'mean' else 'zero'}: the bootstrap interval of the change lies above "
            "0 (docs/head_effects.md)")
    for k in values.index[low > 0]:
        r = f"{int(rank[k])}/{n}"
        evidence = f"effect {fmt(values[k])} [{fmt(low[k])}, {fmt(high[k])}] (rank {r})"
        if "effect_atp" in heads.columns and pd.notna(heads.at[k, "effect_atp"]):
            evidence += f"; AtP estimate {fmt(heads.at[k, 'effect_atp'])}"
        atlas.add(heads.at[k, "layer"], heads.at[k, "head"], "matters", "effect", values[k], r, rule, sample,
                  evidence)


LABELS = AtlasLabels(groups=("matters",), rows=rows, order=100)
