"""The atlas's labels from the attention span (docs/span.md): the span analysis's own class, streaming (the
sink and a local window hold the coverage at every length measured) or retrieval (``retrieval-span`` here,
apart from Wu et al.'s retrieval heads)."""

from __future__ import annotations

import pandas as pd

from headscope.analyses.findings import AtlasLabels, AtlasRows, fmt, ranks


def rows(atlas: AtlasRows) -> None:
    """The ``streaming`` and ``retrieval-span`` labels, with the coverage at each length."""
    heads = atlas.heads
    if not {"span_class", "span_coverage_min"} <= set(heads.columns):
        return
    summary = atlas.summary("span")
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
            atlas.add(heads.at[k, "layer"], heads.at[k, "head"], group, "span_coverage_min", values[k], r, rule,
                      sample, evidence + f" (rank {r})")


LABELS = AtlasLabels(groups=("streaming", "retrieval-span"), rows=rows, order=40)
