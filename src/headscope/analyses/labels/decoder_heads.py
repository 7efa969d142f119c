"""The atlas's labels from the decoder-LM head types (docs/decoder_heads.md): previous-token, duplicate,
induction, prefix-matching and first-token-sink heads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from headscope.analyses.findings import AtlasLabels, AtlasRows, is_true

#: Column -> (group, source).
GROUPS = {"previous_token": ("previous-token", "TransformerLens head detector"),
          "duplicate_token": ("duplicate", "TransformerLens head detector"),
          "induction": ("induction", "TransformerLens head detector"),
          "prefix_matching": ("prefix-matching", "Olsson et al. 2022"),
          "sink_first": ("first-token-sink", "Gu et al. 2025")}

#: decoder_heads' default ``--decoder-min-n`` (``headscope.analyses.decoder_heads.MIN_N``, which imports this
#: module; tests check they agree): the fewest sequences behind a first-token-sink label when the run did not
#: record its own.
DECODER_MIN_N = 20


def decoder_min_n(run: Mapping[str, Any]) -> int:
    """The run's ``decoder_min_n``: decoder_heads' summary, else its options, else the default."""
    summary = (run.get("analyses", {}) or {}).get("decoder_heads", {}) or {}
    options = (run.get("analysis_options", {}) or {}).get("decoder_heads", {}) or {}
    value = summary.get("min_n", options.get("decoder_min_n", DECODER_MIN_N))
    return int(value if value is not None else DECODER_MIN_N)


def rows(atlas: AtlasRows) -> None:
    """The score's bootstrap interval over sequences clears its chance level (uniform attention over the same
    keys) by the run's margin, on at least decoder_min_n sequences (decoder_heads' <score>_above_chance); a
    sink also needs sink_first above epsilon (Gu et al.'s definition). The induction label rests on the
    prefix-matching probe (random tokens repeated: a clean induction test; natural text gives the corpus score
    little to find) and, for a head the probe does not label, on the corpus score. Runs from before the test:
    the thresholds, "no test yet"."""
    heads, thresholds = atlas.heads, atlas.thresholds
    decoder = atlas.summary("decoder_heads")
    min_n = decoder.get("min_n")

    def enough(probe: bool) -> bool:
        n = decoder.get("probe_sequences" if probe else "sequences")
        return n is None or min_n is None or int(n) >= int(min_n)

    def has_test(column: str) -> bool:
        return {f"{column}_{p}" for p in ("above_chance", "low", "high", "chance")} <= set(heads.columns)

    probe_labels = None  # heads the prefix-matching test labels induction
    if has_test("prefix_matching") and enough(True) and heads["prefix_matching"].notna().any():
        probe_labels = is_true(heads["prefix_matching_above_chance"])
    for column, (group, source) in GROUPS.items():
        if column not in heads.columns or not heads[column].notna().any():
            continue
        probe = column == "prefix_matching"
        if not enough(probe):
            continue  # fewer sequences than decoder_min_n: no label rests on so little
        n = decoder.get("probe_sequences" if probe else "sequences")
        sample = f"{int(n)} {'probe ' if probe else ''}sequences" if n is not None else "the run's sequences"
        if has_test(column):
            margin = float(decoder.get("margin", float("nan")))
            confidence = float(decoder.get("confidence", 0.95))
            rule = (f"{column} {confidence:.0%} bootstrap interval over {'probe ' if probe else ''}sequences: lower "
                    f"bound > chance (uniform attention) + {margin:g}, n >= {min_n} ({source})")
            keep = None
            if column == "sink_first":
                keep = pd.to_numeric(heads[column], errors="coerce") > thresholds[column]
                rule = f"sink_first > {thresholds[column]:g} and " + rule
            elif probe:
                group = "induction"
            elif column == "induction" and probe_labels is not None:
                keep = ~probe_labels  # one induction row per head: the probe's when it has one
            atlas.tested(column, group, rule, sample, keep)
            continue
        atlas.column(column, group, thresholds[column],
                     f"{column} > {thresholds[column]:g} ({source}; threshold, no test yet)", sample)


LABELS = AtlasLabels(
    groups=tuple(dict.fromkeys(group for group, _ in GROUPS.values())), rows=rows, order=20,
    # The rule of runs from before decoder_heads tested its scores against chance (issue 30), which have no
    # <score>_above_chance column; newer runs are labelled by that test (sink_first's epsilon stays a condition
    # of the first-token-sink label).
    thresholds={"previous_token": 0.5, "duplicate_token": 0.3, "induction": 0.3, "prefix_matching": 0.3,
                "sink_first": 0.3},  # Gu et al. (2025)'s epsilon; the run's --decoder-sink-epsilon when not overridden
    from_options={"sink_first": "sink_epsilon"})
