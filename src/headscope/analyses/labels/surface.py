"""The atlas's labels from the surface statistics (Clark et al. 2019, section 6: the behaviours their MDS plot
colours by)."""

from __future__ import annotations

from headscope.analyses.findings import AtlasLabels, AtlasRows
from headscope.analyses.labels.decoder_heads import decoder_min_n

#: Column -> group.
GROUPS = {"prev": "previous-token", "next": "next-token", "self": "self", "entropy": "broad",
          "cls": "cls-sink", "sep": "sep-sink", "punct": "punct-sink"}


def rows(atlas: AtlasRows) -> None:
    """Clark et al. (2019)'s thresholds. A decoder LM has no [CLS]: its ``cls`` is the attention to the BOS
    token at position 0, the first-token sink. decoder_heads labels that sink by a test against chance on at
    least decoder_min_n sequences, so when it ran its label is the only one (two rules for one behaviour would
    disagree at the margin); without it, ``cls`` labels the first-token sink under the same minimum sample."""
    heads, run, thresholds = atlas.heads, atlas.run, atlas.thresholds
    surface = atlas.summary("surface")
    causal = bool((run.get("model", {}) or {}).get("is_causal"))
    for column, group in GROUPS.items():
        if column not in heads.columns:
            continue
        unit = " nats" if column == "entropy" else ""
        sequences = (surface.get("sequences", {}) or {}).get(column)
        sample = (f"{int(sequences)} sequences" if sequences is not None else "the run's sequences") + atlas.tokens()
        rule = f"{column} > {thresholds[column]:g}{unit} (Clark et al. 2019)"
        if causal and column == "cls":
            if "sink_first" in heads.columns and heads["sink_first"].notna().any():
                continue
            min_sequences = decoder_min_n(run)
            n = sequences if sequences is not None else (run.get("counts", {}) or {}).get("examples")
            if n is not None and int(n) < min_sequences:
                continue  # fewer sequences than decoder_min_n: no label rests on so little
            group = "first-token-sink"
            rule = (f"cls (attention to the BOS token at position 0) > {thresholds[column]:g}, n >= "
                    f"{min_sequences} sequences (Clark et al. 2019's threshold; no test against chance: run "
                    "decoder_heads for one)")
        atlas.column(column, group, thresholds[column], rule, sample)


LABELS = AtlasLabels(
    groups=(*GROUPS.values(), "first-token-sink"), rows=rows, order=10,
    thresholds={"prev": 0.5, "next": 0.5,
                "self": 0.5,  # Clark et al. colour no self-attention heads; 0.5 as prev/next
                "entropy": 3.8,  # broad: mean row entropy above 3.8 nats
                "cls": 0.6, "sep": 0.6, "punct": 0.6})
