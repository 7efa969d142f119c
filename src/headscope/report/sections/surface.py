"""The surface statistics' section (Clark et al. 2019, section 3): one layer x head map per statistic."""

from __future__ import annotations

from pathlib import Path

from headscope.analyses.surface import CONVENTIONS, STATISTICS, labels
from headscope.engine.results import RunResult
from headscope.report.figures import head_grid
from headscope.report.section import ReportSection, SectionFigures, conventions_html

#: What each per-head column means, for the head grid's chooser.
MEANINGS = {
    "cls": "mean attention to [CLS] (or the first special token)",
    "sep": "mean attention to [SEP] (the separator, or EOS)",
    "punct": "mean attention to . and ,",
    "self": "mean attention of each token to itself",
    "prev": "mean attention to the previous token",
    "next": "mean attention to the next token",
    "entropy": "mean entropy of a row, in nats (high: broad attention)",
    "entropy_uniform": "entropy a uniform row would have over the same keys, in nats",
    "cls_entropy": "entropy of the [CLS] row, in nats",
    "sep_to_sep": "attention of the [SEP] rows to [SEP]",
    "other_to_sep": "attention of the other rows to [SEP]",
    "confidence": "mean largest weight of a row (Voita et al. 2019)",
}

#: A decoder LM's meanings of the first-token statistics (it has no [CLS]).
DECODER_MEANINGS = {
    "cls": "mean attention to the first token (the BOS the tokenizer adds; 0 without one): a first-token sink",
    "cls_entropy": "entropy of the first token's row, in nats (0 for a causal model: it sees itself only)",
}


def section(run: RunResult, figures: Path) -> ReportSection | None:
    columns = [c for c in STATISTICS if c in run.heads.columns]
    if not columns:
        return None
    figs = SectionFigures(figures)
    names = labels(bool(run.run.get("model", {}).get("is_causal")))
    maps = "".join(figs.head_map(head_grid(run.heads, column), f"surface_{column}", names[column], names[column],
                                 what=f"{column} ({names[column]})", label=column) for column in columns)
    body = ("<p>Per head, averaged over every sequence (Clark et al. 2019, section 3).</p>"
            + conventions_html(run, "surface", CONVENTIONS) + maps)
    return ReportSection(key="surface", title="Surface statistics", html=body, figures=figs.names)
