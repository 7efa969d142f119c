"""The head atlas: every head of a run with the labels its measured statistics give it, and the evidence.

One row per head and label (``atlas.csv``): the group (previous-token, broad, ``role:local``, ...), the
statistic the label rests on, its value and rank among the heads, the rule (threshold or test) that made the
label, the sample behind it and one readable line of evidence. A head that fits no label gets one row in the
group ``unlabelled``. Only what the run measured appears: a group whose column (or table) is missing gives no
row. The rules, their sources and the samples they need are in ``docs/atlas.md``.

This module sits at the orchestration layer: it reads the assembled results (per-head columns, tables and the
run's summaries), never the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

#: Thresholds of the atlas's rules (``--atlas-threshold NAME=VALUE`` overrides one). A head gets the label of
#: a statistic when its value is strictly above the threshold; ``important_fraction`` is the share of heads,
#: ranked by importance, labelled important.
THRESHOLDS: dict[str, float] = {
    # Clark et al. (2019), section 6 (the behaviours their MDS plot colours by).
    "prev": 0.5,
    "next": 0.5,
    "self": 0.5,  # Clark et al. colour no self-attention heads; 0.5 as prev/next
    "entropy": 3.8,  # broad: mean row entropy above 3.8 nats
    "cls": 0.6,
    "sep": 0.6,
    "punct": 0.6,
    # Decoder-LM head types (docs/decoder_heads.md): the rule of runs from before decoder_heads tested its scores
    # against chance (issue 30), which have no <score>_above_chance column; newer runs are labelled by that test
    # (sink_first's epsilon stays a condition of the first-token-sink label).
    "previous_token": 0.5,
    "duplicate_token": 0.3,
    "induction": 0.3,
    "prefix_matching": 0.3,
    "sink_first": 0.3,  # Gu et al. (2025)'s epsilon; the run's --decoder-sink-epsilon when not overridden
    # Michel et al. (2019): the top share of heads by importance.
    "important_fraction": 0.1,
}

#: The groups in the order the atlas lists them (``role:``, ``syntax:``, ``coref:``, ``pattern:`` are families).
GROUPS = ("previous-token", "next-token", "self", "broad", "cls-sink", "sep-sink", "punct-sink",
          "first-token-sink", "duplicate", "induction", "prefix-matching", "retrieval", "streaming", "retrieval-span",
          "role:", "syntax:",
          "coref:", "pattern:", "important", "matters", "unlabelled")

#: Surface statistics (Clark et al. 2019): column -> group.
SURFACE = {"prev": "previous-token", "next": "next-token", "self": "self", "entropy": "broad",
           "cls": "cls-sink", "sep": "sep-sink", "punct": "punct-sink"}
#: Decoder-LM scores (docs/decoder_heads.md): column -> (group, source).
DECODER = {"previous_token": ("previous-token", "TransformerLens head detector"),
           "duplicate_token": ("duplicate", "TransformerLens head detector"),
           "induction": ("induction", "TransformerLens head detector"),
           "prefix_matching": ("prefix-matching", "Olsson et al. 2022"),
           "sink_first": ("first-token-sink", "Gu et al. 2025")}

COLUMNS = ["layer", "head", "head_name", "group", "statistic", "value", "rank", "rule", "sample", "evidence"]


def parse_thresholds(items: Iterable[str]) -> dict[str, float]:
    """``NAME=VALUE`` overrides as a dict; ValueError for a malformed item, an unknown name or a bad value."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, text = str(item).partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"atlas threshold {item!r}: expected NAME=VALUE (e.g. prev=0.6)")
        if name not in THRESHOLDS:
            raise ValueError(f"atlas threshold {name!r} is not one of {', '.join(THRESHOLDS)}")
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"atlas threshold {item!r}: {text.strip()!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"atlas threshold {item!r}: the value must be a finite number >= 0")
        if name == "important_fraction" and not 0 < value <= 1:
            raise ValueError(f"atlas threshold {item!r}: important_fraction must be in (0, 1]")
        out[name] = value
    return out


def thresholds_for(run: Mapping[str, Any]) -> dict[str, float]:
    """The thresholds of a run: the defaults, the decoder's own sink epsilon, then ``atlas_thresholds``."""
    values = dict(THRESHOLDS)
    epsilon = run.get("analysis_options", {}).get("decoder_heads", {}) or {}
    if "sink_epsilon" in epsilon:
        values["sink_first"] = float(epsilon["sink_epsilon"])
    values.update(parse_thresholds(run.get("config", {}).get("atlas_thresholds", []) or []))
    return values


#: decoder_heads' default ``--decoder-min-n`` (``headscope.analyses.decoder_heads.MIN_N``; tests check they
#: agree): the fewest sequences behind a decoder's first-token-sink label when the run did not record its own.
DECODER_MIN_N = 20


def decoder_min_n(run: Mapping[str, Any]) -> int:
    """The run's ``decoder_min_n``: decoder_heads' summary, else its options, else the default."""
    summary = (run.get("analyses", {}) or {}).get("decoder_heads", {}) or {}
    options = (run.get("analysis_options", {}) or {}).get("decoder_heads", {}) or {}
    value = summary.get("min_n", options.get("decoder_min_n", DECODER_MIN_N))
    return int(value if value is not None else DECODER_MIN_N)


def head_name(layer: int, head: int) -> str:
    return f"L{int(layer)}H{int(head)}"


def fmt(value: float) -> str:
    """A value in three significant digits."""
    return "nan" if value is None or not math.isfinite(float(value)) else f"{float(value):.3g}"


def fmt_p(p: float) -> str:
    if p is None or not math.isfinite(float(p)):
        return "p = nan"
    return "p < 1e-10" if p < 1e-10 else f"p = {p:.2g}"


def ranks(values: pd.Series) -> tuple[pd.Series, int]:
    """Rank of each value among the defined ones (1 = highest, ties share the best rank), and how many."""
    return values.rank(ascending=False, method="min"), int(values.notna().sum())


class _Rows:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, layer: int, head: int, group: str, statistic: str, value: float, rank: str, rule: str,
            sample: str, evidence: str) -> None:
        self.rows.append({"layer": int(layer), "head": int(head), "head_name": head_name(layer, head),
                          "group": group, "statistic": statistic, "value": float(value), "rank": rank,
                          "rule": rule, "sample": sample, "evidence": evidence})

    def tested(self, heads: pd.DataFrame, column: str, group: str, rule: str, sample: str,
               keep: pd.Series | None = None) -> None:
        """A label for every head whose ``<column>_above_chance`` holds (and ``keep``, when given): the
        evidence gives the value, its interval and its chance level."""
        values = pd.to_numeric(heads[column], errors="coerce")
        rank, n = ranks(values)
        flag = heads[f"{column}_above_chance"].astype(str).str.lower().eq("true")
        if keep is not None:
            flag &= keep
        for k in values.index[flag]:
            r = f"{int(rank[k])}/{n}"
            low, high, chance = (float(heads.at[k, f"{column}_{part}"]) for part in ("low", "high", "chance"))
            self.add(heads.at[k, "layer"], heads.at[k, "head"], group, column, values[k], r, rule, sample,
                     f"{column} {fmt(values[k])} [{fmt(low)}, {fmt(high)}] vs chance {fmt(chance)} (rank {r})")

    def column(self, heads: pd.DataFrame, column: str, group: str, threshold: float, rule: str,
               sample: str) -> None:
        """A label for every head whose ``column`` is above ``threshold``."""
        values = pd.to_numeric(heads[column], errors="coerce")
        rank, n = ranks(values)
        for k in values.index[values > threshold]:
            r = f"{int(rank[k])}/{n}"
            self.add(heads.at[k, "layer"], heads.at[k, "head"], group, column, values[k], r, rule, sample,
                     f"{column} {fmt(values[k])} (rank {r})")


def _tokens(run: Mapping[str, Any]) -> str:
    tokens = run.get("counts", {}).get("tokens")
    return f", {int(tokens)} tokens" if tokens is not None else ""


def build_atlas(heads: pd.DataFrame, tables: Mapping[str, pd.DataFrame], run: Mapping[str, Any]) -> pd.DataFrame:
    """The atlas of a run: one row per head and label, plus one ``unlabelled`` row per head with none.

    Parameters
    ----------
    heads : DataFrame
        The run's per-head table (``heads.csv``).
    tables : dict of str to DataFrame
        The run's other tables (``roles``, ``syntax``, ``coref_best``, ``retrieval``, ...).
    run : dict
        The run's manifest (``run.json``): analysis summaries, options, counts and ``config.atlas_thresholds``.

    Returns
    -------
    DataFrame
        Columns ``layer, head, head_name, group, statistic, value, rank, rule, sample, evidence``, sorted by
        layer and head, then group in :data:`GROUPS` order.
    """
    thresholds = thresholds_for(run)
    summaries = run.get("analyses", {}) or {}
    out = _Rows()
    if heads is None or heads.empty:
        return pd.DataFrame(columns=COLUMNS)
    heads = heads.reset_index(drop=True)

    # Surface statistics: Clark et al. (2019)'s thresholds. A decoder LM has no [CLS]: its ``cls`` is the
    # attention to the BOS token at position 0, the first-token sink. decoder_heads labels that sink by a
    # test against chance on at least decoder_min_n sequences, so when it ran its label is the only one (two
    # rules for one behaviour would disagree at the margin); without it, ``cls`` labels the first-token sink
    # under the same minimum sample.
    surface = summaries.get("surface", {}) or {}
    causal = bool((run.get("model", {}) or {}).get("is_causal"))
    for column, group in SURFACE.items():
        if column not in heads.columns:
            continue
        unit = " nats" if column == "entropy" else ""
        sequences = (surface.get("sequences", {}) or {}).get(column)
        sample = (f"{int(sequences)} sequences" if sequences is not None else "the run's sequences") + _tokens(run)
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
        out.column(heads, column, group, thresholds[column], rule, sample)

    # Decoder-LM head types: the score's bootstrap interval over sequences clears its chance level (uniform
    # attention over the same keys) by the run's margin, on at least decoder_min_n sequences (decoder_heads'
    # <score>_above_chance); a sink also needs sink_first above epsilon (Gu et al.'s definition). The induction
    # label rests on the prefix-matching probe (random tokens repeated: a clean induction test; natural text
    # gives the corpus score little to find) and, for a head the probe does not label, on the corpus score.
    # Runs from before the test: the thresholds, "no test yet".
    decoder = summaries.get("decoder_heads", {}) or {}
    min_n = decoder.get("min_n")

    def enough(probe: bool) -> bool:
        n = decoder.get("probe_sequences" if probe else "sequences")
        return n is None or min_n is None or int(n) >= int(min_n)

    def has_test(column: str) -> bool:
        return {f"{column}_{p}" for p in ("above_chance", "low", "high", "chance")} <= set(heads.columns)

    probe_labels = None  # heads the prefix-matching test labels induction
    if has_test("prefix_matching") and enough(True) and heads["prefix_matching"].notna().any():
        probe_labels = heads["prefix_matching_above_chance"].astype(str).str.lower().eq("true")
    for column, (group, source) in DECODER.items():
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
            out.tested(heads, column, group, rule, sample, keep)
            continue
        out.column(heads, column, group, thresholds[column],
                   f"{column} > {thresholds[column]:g} ({source}; threshold, no test yet)", sample)

    # Retrieval heads: the analysis's own flag (Wu et al. 2024).
    retrieval = tables.get("retrieval")
    if retrieval is not None and {"retrieval_score", "retrieval_head"} <= set(retrieval.columns):
        summary = summaries.get("retrieval", {}) or {}
        values = pd.to_numeric(retrieval["retrieval_score"], errors="coerce")
        rank, n = ranks(values)
        rule = f"retrieval_score > {float(summary.get('threshold', 0.1)):g} (Wu et al. 2024)"
        sample = f"{int(summary.get('used', 0))} of {int(summary.get('prompts', 0))} prompts scored"
        flag = retrieval["retrieval_head"].astype(str).str.lower().eq("true")
        tested = {"retrieval_above_chance", "retrieval_score_low", "retrieval_score_high",
                  "retrieval_score_chance"} <= set(retrieval.columns)
        if tested:  # and the score's bootstrap interval over prompts clears the decoy spans' score by the margin
            flag &= retrieval["retrieval_above_chance"].astype(str).str.lower().eq("true")
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
            out.add(retrieval.at[k, "layer"], retrieval.at[k, "head"], "retrieval", "retrieval_score", values[k],
                    r, rule, sample, evidence)

    # Attention span (docs/span.md): the span analysis's own class, streaming (the sink and a local window hold
    # the coverage at every length measured) or retrieval (retrieval-span here, apart from Wu et al.'s heads).
    if {"span_class", "span_coverage_min"} <= set(heads.columns):
        _span_rows(out, heads, summaries.get("span", {}) or {})

    # Roles: significant rows of the heads-hypothesis t-tests (Pande et al. 2021), tested rows only.
    roles = tables.get("roles")
    if roles is not None and {"role", "significant", "score_mean"} <= set(roles.columns):
        summary = summaries.get("roles", {}) or {}
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
                out.add(roles.at[k, "layer"], roles.at[k, "head"], f"role:{role}", f"role_{role}", values[k], r,
                        rule, f"n = {n_units} {unit}s",
                        f"{role} score {fmt(values[k])} (rank {r}); t = {fmt(t)}, {fmt_p(p)}")

    # Best dependency relation (Clark et al. 2019 s4): enough arcs and above its fixed-offset baseline.
    if {"syntax_best_relation", "syntax_best_accuracy", "syntax_best_n", "syntax_best_baseline"} <= set(heads.columns):
        min_n = int((summaries.get("syntax", {}) or {}).get("min_n", 0))
        accuracy = pd.to_numeric(heads["syntax_best_accuracy"], errors="coerce")
        syntax = tables.get("syntax")
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
            out.add(heads.at[k, "layer"], heads.at[k, "head"], f"syntax:{relation}", "syntax_best_accuracy",
                    accuracy[k], r, f"best relation with n >= {min_n} arcs and accuracy > its best fixed offset "
                    f"(Clark et al. 2019)", f"{int(n)} arcs",
                    f"{relation} accuracy {fmt(accuracy[k])} (rank {r}) vs offset baseline {fmt(baseline)}")

    # Best head per coreference mention type (Clark et al. 2019 s4.3), types with enough mentions only.
    best = tables.get("coref_best")
    if best is not None and {"mention_type", "below_min_n", "layer", "head", "accuracy"} <= set(best.columns):
        coref = tables.get("coref")
        min_n = (summaries.get("coref", {}) or {}).get("min_n")
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
            out.add(row.layer, row.head, f"coref:{row.mention_type}", "coref_accuracy", row.accuracy, r,
                    f"best head for {row.mention_type} mentions, n >= {min_n} mentions (Clark et al. 2019)",
                    f"{int(row.n)} mentions",
                    f"accuracy {fmt(row.accuracy)} (rank {r})" + (f"; {', '.join(baselines)}" if baselines else ""))

    # Distance patterns (after Guan et al. 2020): the head's cluster's name, except "mixed".
    if "pattern" in heads.columns:
        clusters = heads["cluster"] if "cluster" in heads.columns else None
        sizes = heads.groupby("pattern").size()
        for k in heads.index:
            name = heads.at[k, "pattern"]
            if not isinstance(name, str) or not name or name == "mixed":
                continue
            cluster = clusters[k] if clusters is not None else float("nan")
            where = f"cluster {int(cluster)}" if clusters is not None and pd.notna(cluster) else "a cluster"
            out.add(heads.at[k, "layer"], heads.at[k, "head"], f"pattern:{name}", "pattern",
                    float(cluster) if pd.notna(cluster) else float("nan"), "-",
                    "the head's cluster of distance features, named from its centroid (docs/patterns.md, after "
                    "Guan et al. 2020)", f"{len(heads)} heads clustered{_tokens(run)}",
                    f"{where} ({int(sizes[name])} head{'s' if int(sizes[name]) != 1 else ''} named {name})")

    # Important heads (Michel et al. 2019): the top share by importance.
    if "importance" in heads.columns and heads["importance"].notna().any():
        summary = summaries.get("importance", {}) or {}
        fraction = thresholds["important_fraction"]
        values = pd.to_numeric(heads["importance"], errors="coerce")
        rank, n = ranks(values)
        keep = max(1, math.ceil(fraction * n))
        terms, batches = summary.get("terms"), summary.get("batches")
        sample = (f"{int(terms)} loss terms in {int(batches)} batch{'es' if int(batches) != 1 else ''}"
                  if terms is not None and batches is not None
                  else "the importance pass")
        for k in values.index[rank <= keep]:
            r = f"{int(rank[k])}/{n}"
            out.add(heads.at[k, "layer"], heads.at[k, "head"], "important", "importance", values[k], r,
                    f"top {fraction:.0%} of heads by importance (Michel et al. 2019)", sample,
                    f"importance {fmt(values[k])} (rank {r})")

    # Heads that matter (docs/head_effects.md): the loss rises when the head is ablated, the whole bootstrap
    # interval of the change above 0 (a test, not a rank: a head with a small but sure effect is labelled).
    if {"effect", "effect_low", "effect_high"} <= set(heads.columns) and heads["effect"].notna().any():
        _effect_rows(out, heads, summaries.get("head_effects", {}) or {})

    labelled = {(r["layer"], r["head"]) for r in out.rows}
    for row in heads[["layer", "head"]].itertuples(index=False):
        if (int(row.layer), int(row.head)) not in labelled:
            out.add(row.layer, row.head, "unlabelled", "", float("nan"), "-", "below every threshold measured",
                    "", "fits none of the labels this run measured")
    atlas = pd.DataFrame(out.rows, columns=COLUMNS)
    atlas["order"] = atlas["group"].map(group_order)
    atlas = atlas.sort_values(["layer", "head", "order"], kind="stable").drop(columns="order")
    return atlas.reset_index(drop=True)


def _span_rows(out: _Rows, heads: pd.DataFrame, summary: Mapping[str, Any]) -> None:
    """The ``streaming`` and ``retrieval-span`` labels of the span analysis, with the coverage at each length."""
    lengths = [int(x) for x in summary.get("lengths", [])]
    window, coverage = summary.get("window", "W"), float(summary.get("coverage", float("nan")))
    values = pd.to_numeric(heads["span_coverage_min"], errors="coerce")
    sample = f"{int(summary.get('texts', 0))} windows of text at {', '.join(map(str, lengths))} tokens"
    check = summary.get("check") or {}
    if "budget" in check and "random" in check:
        b, r = check["budget"], check["random"]
        sample += (f"; loss change with the KV budget {fmt(b.get('change'))} [{fmt(b.get('change_low'))}, "
                   f"{fmt(b.get('change_high'))}], on as many random heads {fmt(r.get('change'))} "
                   f"[{fmt(r.get('change_low'))}, {fmt(r.get('change_high'))}] nats/token")
    kinds = (("streaming", "streaming", 1.0,
              f"the sink and the last {window} tokens hold >= {coverage:g} of the head's attention at every length "
              "measured (StreamingLLM, Xiao et al. 2024; DuoAttention, Xiao et al. 2025)"),
             ("retrieval-span", "retrieval", -1.0,
              f"the sink and the last {window} tokens hold < {coverage:g} of the head's attention at some length "
              "measured (DuoAttention's retrieval heads, Xiao et al. 2025)"))
    for group, name, sign, rule in kinds:
        rank, n = ranks(sign * values)
        for k in heads.index[heads["span_class"].astype(str) == name]:
            r = f"{int(rank[k])}/{n}"
            parts = [f"{fmt(heads.at[k, f'span_coverage_{x}'])} at {x}" for x in lengths
                     if f"span_coverage_{x}" in heads.columns]
            evidence = f"coverage (sink + last {window}) " + ", ".join(parts)
            if lengths and f"span_far_{lengths[-1]}" in heads.columns:
                evidence += f"; far (>= 512 back) {fmt(heads.at[k, f'span_far_{lengths[-1]}'])} at {lengths[-1]}"
            out.add(heads.at[k, "layer"], heads.at[k, "head"], group, "span_coverage_min", values[k], r, rule,
                    sample, evidence + f" (rank {r})")


def group_order(group: str) -> int:
    """Position of ``group`` in :data:`GROUPS` (families by their prefix)."""
    for k, name in enumerate(GROUPS):
        if group == name or (name.endswith(":") and group.startswith(name)):
            return k
    return len(GROUPS)


def atlas_summary(atlas: pd.DataFrame, run: Mapping[str, Any]) -> dict[str, Any]:
    """What ``run.json`` records of the atlas: labels per group, unlabelled heads, the thresholds used."""
    labelled = atlas[atlas["group"] != "unlabelled"]
    counts = labelled.groupby("group", sort=False).size()
    return {"labels": {g: int(counts[g]) for g in sorted(counts.index, key=lambda g: (group_order(g), g))},
            "labelled_heads": int(labelled[["layer", "head"]].drop_duplicates().shape[0]),
            "unlabelled": int((atlas["group"] == "unlabelled").sum()),
            "thresholds": thresholds_for(run),
            "rules": "docs/atlas.md"}


def _effect_rows(out: _Rows, heads: pd.DataFrame, summary: Mapping[str, Any]) -> None:
    """The ``matters`` label of head_effects: the loss rises when the head is ablated (interval above 0)."""
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
        out.add(heads.at[k, "layer"], heads.at[k, "head"], "matters", "effect", values[k], r, rule, sample,
                evidence)
