"""The decoder-LM heads' section: previous-token, duplicate, induction, prefix-matching and sink scores."""

from __future__ import annotations

import html

from headscope.analyses.decoder_heads import LABELS, DecoderHeadsOptions, top_heads
from headscope.report.figures import head_grid
from headscope.report.section import ReportSection, SectionStart, opens

#: What each per-head column means, for the head grid's chooser.
MEANINGS = {
    "previous_token": "share of attention on the previous token (TransformerLens detector)",
    "duplicate_token": "share of attention on earlier copies of the current token",
    "induction": "share of attention on the token after an earlier copy of the current one (corpus)",
    "prefix_matching": "induction score on random tokens repeated twice (Olsson et al. 2022)",
    "sink_first": "mean attention to the first position (attention sink, Gu et al. 2025)",
    "sink_bos": "mean attention to the BOS token",
    "sink": "1 when the head is an attention sink (sink_first above the run's epsilon)",
    "sink_share": "share of sequences in which the head's mean attention to the first position exceeds epsilon "
                  "(Gu et al. 2025's per-sequence indicator)",
}

SHOWN = ("previous_token", "duplicate_token", "induction", "prefix_matching", "sink_first")


@opens("decoder_heads", rows=True)
def section(start: SectionStart) -> ReportSection:
    table, summary, figs = start.table, start.summary, start.figs
    epsilon = float(start.options.get("sink_epsilon", DecoderHeadsOptions.sink_epsilon))
    shown = [c for c in SHOWN if c in table.columns and table[c].notna().any()]
    # One colour scale for every score (all are shares of attention), so the maps compare at a glance.
    maps = "".join(figs.head_map(head_grid(table, column), f"decoder_heads_{column}", LABELS[column], LABELS[column],
                                 label=column, vmin=0.0, vmax=1.0) for column in shown)
    # Gu et al.'s sink rate (per sequence) is in the summary; the threshold of the per-head means is not theirs.
    of_means = float((table["sink_first"] > epsilon).mean()) if "sink_first" in table.columns else float("nan")
    # (before 0.3 the summary's sink_rate was the threshold of the means, and sink_rate_of_means did not exist)
    sink_rate = float(summary["sink_rate"]) if "sink_rate_of_means" in summary else float("nan")
    # The summary's top heads rest on decoder_min_n scored sequences; a run from before has none recorded.
    recorded = summary.get("top") if "min_n" in summary else None
    min_n = summary.get("min_n")

    def top(column: str) -> str:
        heads = recorded.get(column, []) if recorded is not None else top_heads(table, column, 5)
        return ", ".join(f"{html.escape(t['head'])} ({t['score']:.3f})" for t in heads) or (
            f"none: no head scored on {html.escape(str(min_n))} sequences")

    rows = "".join(f"<tr><td>{html.escape(LABELS[c])}</td><td>{top(c)}</td></tr>" for c in shown)
    rule = (f" Top heads are ranked among heads whose score is defined on at least decoder_min_n = "
            f"{html.escape(str(min_n))} sequences (prefix matching: probe sequences)." if min_n is not None
            else "")
    body = (f"<p>Per head, averaged over the corpus's sequences (prefix matching: over sequences of random "
            f"tokens repeated twice). {sink_line(sink_rate, of_means, epsilon)}{rule}</p>"
            f"<table><tr><th>score</th><th>top 5 heads</th></tr>{rows}</table>" + maps)
    return start.section("Decoder-LM heads", body)


def sink_line(sink_rate: float, of_means: float, epsilon: float) -> str:
    """The sentence giving Gu et al.'s sink rate (NaN for a run from before it was recorded) and the threshold
    of the per-head means."""
    means = (f"share of heads whose mean attention to the first position exceeds {epsilon:g}: "
             f"<b>{100 * of_means:.1f}%</b>")
    if sink_rate != sink_rate:  # NaN
        return f"Sink heads ({means})."
    return (f"Sink rate (Gu et al. 2025: share of sequence x head pairs whose mean attention to the first position "
            f"exceeds {epsilon:g}): <b>{100 * sink_rate:.1f}%</b>; {means}.")
