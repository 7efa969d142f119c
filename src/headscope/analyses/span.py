"""Attention span of decoder heads (issue 30): how far back each head looks at several context lengths, which
heads a streaming KV cache (an attention sink and a window of recent tokens) would serve, and a causal check.

Windows of the corpus's raw text: the sentences in order, each tokenized as ``" " + sentence`` (as retrieval's
haystacks), joined into one stream of tokens and cut into ``span_texts`` consecutive windows of the longest
length (BOS first when the run adds one). Each length of ``--span-lengths`` is a pass of its own over the same
windows cut to that length (their first tokens), its attention captured as in the main pass. Lengths are capped
by the model's longest input, and a length the corpus cannot fill (with one held-out window when the check
runs) is dropped.

Per head and length, over every query row ``i`` of the windows (key ``j``, distance ``d = i - j``), the share
of the head's attention

- ``sink``: on position 0 (whatever its distance);
- ``local``: on ``d < 64`` (the last 64 tokens, the query itself included), position 0 left out;
- ``mid``: on ``64 <= d < 512``; ``far``: on ``d >= 512``, position 0 left out of both;

and a log-spaced histogram of the distances (``d = 0``, ``1``, ``2-3``, ``4-7``, ...; the sink apart). Each set
sums to 1 per head and length: the masses are sums over rows, divided by the head's total attention over the
same rows (1 per real row, up to float32 rounding). They are computed from each row's cumulative sum over keys,
read at the bucket edges, so a block costs about one pass over its weights.

A head is **streaming** when the sink and its last ``--span-window`` (W) tokens hold at least ``--span-coverage``
of its attention at every length (the mean over rows, ``span_coverage_<length>``), else **retrieval**
(StreamingLLM, Xiao et al. 2024; DuoAttention's streaming and retrieval heads, Xiao et al. 2025).
``kv_budget.json`` gives each head ``"full"`` or ``{"sink": 1, "window": W}``.

The causal check: on ``span_check_texts`` held-out windows (after the measured ones) at the longest length, the
next-token loss with every head whole, with the budget applied (each streaming head's attention masked to the
sink and its last W keys: :class:`~headscope.engine.forwards.Loss` ``kv_budget``), and with the same budget on
as many heads drawn at random (seeded). ``span_check.csv`` gives each loss and its change from the whole model
with a 95% bootstrap interval over the held-out windows (the same resamples for both, so the two compare).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from headscope.analyses.base import Analysis, AnalysisResult, head_frame
from headscope.analyses.labels.span import LABELS as ATLAS_LABELS
from headscope.analyses.registry import register
from headscope.analyses.span_masses import (
    BEYOND,
    BUCKETS,
    FAR,
    LOCAL,
    bin_name,
    budget_document,
    budget_windows,
    classify,
    cumulative_masses,
    fractions,
    histogram_bins,
    span_edges,
)
from headscope.analyses.stats import CONFIDENCE, bootstrap_indices, percentile_interval
from headscope.config import check_minimum, option
from headscope.engine.forwards import Forward, Loss, Observe, Pass, TokenRows
from headscope.seeds import Seeds

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.engine.capture import LayerAttention
    from headscope.engine.context import AnalysisContext
    from headscope.engine.forwards import ForwardOutput, Generate

#: The check's forwards: every head whole, the budget, the budget on random heads.
CHECKS = ("base", "budget", "random")


@dataclass(frozen=True)
class SpanOptions:
    """Options of the ``span`` analysis."""

    span_lengths: str = option("256,1024,4096", help="Comma-separated context lengths (tokens) at which each head's "
                               "attention span is measured, over the same windows of text cut to each length; "
                               "capped by the model's longest input and by what the corpus offers.")
    span_texts: int = option(8, help="Windows of corpus text measured at each length.")
    span_window: int = option(64, help="The local window W (tokens, the query included) of a streaming head: the "
                              "sink and its last W keys must hold --span-coverage of its attention at every length.")
    span_coverage: float = option(0.95, help="Share of a head's attention that the sink and its last --span-window "
                                  "tokens must hold, at every length, for the head to be streaming.")
    span_check_texts: int = option(8, help="Held-out windows of the causal check (the loss with the KV budget "
                                   "against the same budget on random heads) at the longest length; 0 skips it.")
    span_resamples: int = option(1000, help="Bootstrap resamples of the causal check's intervals.")

    def __post_init__(self) -> None:
        o = self
        parse_lengths(o.span_lengths)
        check_minimum(o, 1, "span_window")
        if not 0 < o.span_coverage <= 1:
            raise ValueError(f"span_coverage must be in (0, 1], got {o.span_coverage}")
        if o.span_texts < 1 or o.span_check_texts < 0:
            raise ValueError("span_texts must be at least 1 and span_check_texts at least 0")
        if o.span_resamples < 10:
            raise ValueError(f"span_resamples must be at least 10, got {o.span_resamples}")


def parse_lengths(text: str) -> list[int]:
    """``"256,1024"`` as sorted distinct lengths; ValueError for anything but positive integers."""
    try:
        values = sorted({int(x) for x in str(text).split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"span_lengths {text!r}: expected comma-separated token counts, e.g. 256,1024") from None
    if not values or values[0] < 2:
        raise ValueError(f"span_lengths {text!r}: give at least one length of 2 tokens or more")
    return values


def text_windows(ctx: AnalysisContext, count: int, length: int) -> list[np.ndarray]:
    """Up to ``count`` consecutive windows of ``length`` ids of the corpus's raw text (BOS first when the run
    adds one), fewer when the text runs out."""
    codec = ctx.require_codec()
    bos = [codec.require_bos()] if ctx.adds_bos else []
    body = length - len(bos)
    need = count * body
    ids: list[int] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            for row in codec.encode_many(pending):
                ids.extend(row)
            pending.clear()

    for text in ctx.texts:  # each sentence as written
        pending.append(" " + text)
        if len(pending) >= 64:
            flush()
            if len(ids) >= need:
                break
    flush()
    return [np.asarray(bos + ids[k * body:(k + 1) * body], dtype=np.int64) for k in range(min(count, len(ids) // body))]


def loss_change(losses: dict[str, np.ndarray], terms: np.ndarray, resamples: int, seed: int
                ) -> dict[str, dict[str, float]]:
    """Mean loss per token of each forward and its change from ``base``, with paired bootstrap intervals over
    sequences (the same resamples for every forward), and ``budget`` against ``random``."""
    n = len(terms)
    picks = bootstrap_indices(n, resamples, Seeds(seed).key("span.bootstrap"))
    sample_terms = terms[picks].sum(1)
    out: dict[str, dict[str, float]] = {}
    for tag, values in losses.items():
        mean = float(values.sum() / terms.sum())
        row = {"loss": mean, "sequences": n, "tokens": int(terms.sum())}
        if tag != "base":
            delta = (values - losses["base"])
            low, high = percentile_interval(delta[picks].sum(1) / sample_terms)
            row.update(change=float(delta.sum() / terms.sum()), change_low=low, change_high=high)
        out[tag] = row
    if "budget" in losses and "random" in losses:
        diff = losses["budget"] - losses["random"]
        low, high = percentile_interval(diff[picks].sum(1) / sample_terms)
        out["budget_vs_random"] = {"change": float(diff.sum() / terms.sum()), "change_low": low, "change_high": high}
    return out


@register
class AttentionSpan(Analysis):
    """Attention mass by distance at several context lengths; streaming and retrieval heads; a KV budget and
    its causal check."""

    # declared state (add_state in start)
    masses_: torch.Tensor
    rows_: torch.Tensor
    windows_: torch.Tensor
    check_: list[dict[str, Any]]

    name = "span"
    costly = "several passes at long context and a causal check"
    report_order = 17
    atlas_labels = ATLAS_LABELS
    needs = ("causal",)
    description = ("decoder LMs: attention mass by distance at several context lengths, streaming (sink + "
                   "window) vs retrieval heads, a KV budget and its causal check (StreamingLLM, DuoAttention)")
    Options = SpanOptions
    intervenes = True

    def start(self, ctx: AnalysisContext) -> None:
        o = self.options
        requested = parse_lengths(o.span_lengths)
        limit = int(ctx.info.max_length)
        self.lengths_ = sorted({min(length, limit) for length in requested})
        self.requested_ = requested
        shape = (ctx.info.n_layers, ctx.info.n_heads)
        self.n_layers_, self.n_heads_ = shape
        self.edges_ = span_edges(self.lengths_[-1], o.span_window)
        self._edges = torch.as_tensor(self.edges_, device=ctx.device)
        n = len(self.lengths_)
        self.add_state("masses_", torch.zeros(n, *shape, len(self.edges_), dtype=torch.float64, device=ctx.device))
        self.add_state("rows_", torch.zeros(n, dtype=torch.float64))
        self.add_state("windows_", torch.zeros(n, dtype=torch.float64))
        # The check's per-sequence losses, as records (sequence, forward, loss, terms).
        self.add_state("check_", [], reduce="cat")
        self.seed_ = ctx.seeds.seed
        self.plan_: dict[str, Any] = {}

    # the passes: one capture per length, then the check

    def passes(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> Iterator[Pass]:
        o = self.options
        check = int(o.span_check_texts)
        wanted = o.span_texts + check
        windows = text_windows(ctx, wanted, self.lengths_[-1])
        kept = list(self.lengths_)
        # Drop the lengths the corpus cannot fill: one measured window, and one held out when the check runs.
        while kept and len(windows) < 1 + (check > 0):
            kept.pop()
            windows = text_windows(ctx, wanted, kept[-1]) if kept else []
        if not kept:
            raise ValueError(f"the span analysis cuts windows of {self.lengths_[0]} tokens or more from the corpus's "
                             "raw text (--text, or the packaged sample when no corpus is given) and this corpus "
                             "has too little; give more text or shorter --span-lengths")
        held = min(check, len(windows) // 2) if check else 0
        measured = windows[:min(o.span_texts, len(windows) - held)]
        held_out = windows[len(measured):len(measured) + held]
        # Written out (probes/span.jsonl): every window at its longest length (each length reads its first tokens).
        codec = ctx.require_codec()
        self._probe_records = [
            {"kind": "span_window", "index": k, "role": role, "ids": w.tolist(), "text": codec.decode(w.tolist()),
             "bos": bool(ctx.adds_bos), "lengths": [x for x in kept if x <= len(w)] if role == "measured" else [len(w)],
             "seed": int(self.seed_)}
            for k, (role, w) in enumerate([*(("measured", w) for w in measured), *(("held_out", w) for w in held_out)])]
        self.plan_ = {"lengths": kept, "dropped": [x for x in self.lengths_ if x not in kept],
                      "texts": len(measured), "check_texts": len(held_out)}
        has_bos = bool(ctx.adds_bos)
        for k, length in enumerate(self.lengths_):
            if length not in kept:
                continue
            rows = TokenRows(tuple(w[:length] for w in measured), has_bos, kind="span")
            yield Pass(f"span: {length} tokens", rows, [Observe(tag=("measure", k))])
        if not held_out:
            return
        if ctx.loss_kind is None:
            self.plan_["check_skipped"] = ctx.loss_problem or "the model has no loss"
            return
        streaming = classify(self.shares()["coverage"], o.span_coverage)
        count = int(streaming.sum())
        if count == 0:
            self.plan_["check_skipped"] = "no streaming head: the budget changes nothing"
            return
        rng = Seeds(self.seed_).rng("span.random_heads")
        flat = np.zeros(streaming.size, dtype=bool)
        flat[rng.choice(streaming.size, size=count, replace=False)] = True
        random = flat.reshape(streaming.shape)
        self.plan_["random_heads"] = [f"L{la}H{he}" for la, he in zip(*np.nonzero(random), strict=True)]
        window = int(o.span_window)
        forwards = [Loss(tag="base", per_sequence=True),
                    Loss(tag="budget", per_sequence=True, kv_budget=budget_windows(streaming, window)),
                    Loss(tag="random", per_sequence=True, kv_budget=budget_windows(random, window))]
        yield Pass(f"span: causal check, {kept[-1]} tokens", TokenRows(tuple(held_out), has_bos, kind="span"),
                   forwards)

    def update_pass_attention(self, batch: Batch, forward: Forward | Generate, block: LayerAttention) -> None:
        assert isinstance(forward.tag, tuple), "only the measuring passes capture attention"
        k = forward.tag[1]
        edges = self._edges.to(block.weights.device)
        self.masses_[k, block.layer] += cumulative_masses(block.weights, block.query_start, edges).to(
            self.masses_.device)

    def update_pass(self, batch: Batch, forward: Forward | Generate, out: ForwardOutput) -> None:
        if isinstance(forward.tag, tuple):
            k = forward.tag[1]
            self.rows_[k] += float(batch.lengths.sum())
            self.windows_[k] += batch.size
            return
        assert out.sequence_loss is not None and out.sequence_terms is not None
        for ex, loss, terms in zip(batch.examples, out.sequence_loss, out.sequence_terms, strict=True):
            self.check_.append({"sequence": int(ex.index), "forward": str(forward.tag), "loss": float(loss),
                                "terms": int(terms)})

    # the results

    def shares(self) -> dict[str, np.ndarray]:
        """:func:`fractions` of every length measured so far: arrays [length, layer, head]."""
        o = self.options
        return fractions(self.masses_.cpu().numpy(), self.edges_, int(o.span_window),
                         histogram_bins(self.edges_, self.lengths_[-1]))

    def finalize(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        o = self.options
        shares = self.shares()
        measured = [k for k in range(len(self.lengths_)) if float(self.rows_[k]) > 0]
        lengths = [self.lengths_[k] for k in measured]
        streaming = classify(shares["coverage"], o.span_coverage)
        bins = histogram_bins(self.edges_, self.lengths_[-1])
        layer, head = np.divmod(np.arange(self.n_layers_ * self.n_heads_), self.n_heads_)

        long_rows, hist_rows = [], []
        for k in measured:
            for bucket in BUCKETS:
                long_rows.append(pd.DataFrame({"layer": layer, "head": head, "length": self.lengths_[k],
                                               "bucket": bucket, "fraction": shares[bucket][k].reshape(-1)}))
            for name, lo, hi in [("sink", -1, -1)] + [(bin_name(lo, hi), lo, hi) for lo, hi in bins]:
                values = shares["sink" if lo < 0 else f"bin:{lo}"][k].reshape(-1)
                hist_rows.append(pd.DataFrame({"layer": layer, "head": head, "length": self.lengths_[k], "bin": name,
                                               "distance_low": lo if lo >= 0 else np.nan,
                                               "distance_high": (hi - 1 if hi < BEYOND else np.nan) if lo >= 0
                                               else np.nan, "fraction": values}))
        order = ["layer", "head", "length"]
        span = (pd.concat(long_rows, ignore_index=True).sort_values(order, kind="stable").reset_index(drop=True)
                if long_rows else pd.DataFrame(columns=[*order, "bucket", "fraction"]))
        histogram = (pd.concat(hist_rows, ignore_index=True).sort_values(order, kind="stable").reset_index(drop=True)
                     if hist_rows else pd.DataFrame(columns=[*order, "bin", "fraction"]))

        columns: dict[str, Any] = {}
        for k in measured:
            length = self.lengths_[k]
            columns[f"span_coverage_{length}"] = shares["coverage"][k]
            for bucket in BUCKETS:
                columns[f"span_{bucket}_{length}"] = shares[bucket][k]
        coverage = shares["coverage"][measured] if measured else np.full((1, self.n_layers_, self.n_heads_), np.nan)
        columns["span_coverage_min"] = coverage.min(0)
        heads = head_frame(columns, self.n_layers_, self.n_heads_)
        heads["span_class"] = np.where(streaming.reshape(-1), "streaming", "retrieval")

        check = self._check_table()
        window = int(o.span_window)
        plan = {"lengths": lengths, "dropped": [x for x in self.lengths_ if x not in lengths], **self.plan_}
        plan["lengths"] = lengths
        document = budget_document(streaming, window, model=ctx.info.name, coverage=float(o.span_coverage),
                                   lengths=lengths, rule=(f"streaming: the sink and the last {window} tokens hold at "
                                                          f"least {o.span_coverage:g} of the head's attention at "
                                                          f"every length; else full"))
        per_layer = streaming.sum(1)
        summary: dict[str, Any] = {
            "lengths": lengths, "lengths_requested": self.requested_, "lengths_dropped": plan["dropped"],
            "texts": int(self.windows_[measured[0]]) if measured else 0,
            "window": window, "coverage": float(o.span_coverage),
            "local": LOCAL, "far": FAR,
            "streaming_heads": int(streaming.sum()), "retrieval_heads": int(streaming.size - streaming.sum()),
            "streaming_share": float(streaming.mean()),
            "streaming_per_layer": [int(x) for x in per_layer],
            "rule": document["rule"],
            "mean_fractions": {str(self.lengths_[k]): {b: float(np.nanmean(shares[b][k])) for b in BUCKETS}
                               for k in measured},
        }
        if "check_skipped" in plan:
            summary["check_skipped"] = plan["check_skipped"]
        if check is not None:
            summary["check"] = {
                "length": lengths[-1] if lengths else None, "heads_budgeted": int(streaming.sum()),
                "random_heads": plan.get("random_heads", []), "confidence": CONFIDENCE,
                **{row["forward"]: {k: int(v) if k in ("sequences", "tokens") else float(v)
                                    for k, v in row.items() if k != "forward" and pd.notna(v)}
                   for row in check.to_dict("records")}}
        tables = {"span": span, "span_histogram": histogram}
        if check is not None:
            tables["span_check"] = check
        return AnalysisResult(name=self.name, heads=heads, tables=tables, documents={"kv_budget": document},
                              summary=summary, probes=list(getattr(self, "_probe_records", [])))

    def _check_table(self) -> pd.DataFrame | None:
        """``span_check.csv``: one row per forward of the check (and ``budget_vs_random``); None without it."""
        if not self.check_:
            return None
        records = pd.DataFrame(self.check_)
        wide = records.pivot_table(index="sequence", columns="forward", values="loss", aggfunc="sum")
        terms = records[records["forward"] == "base"].set_index("sequence")["terms"].reindex(wide.index)
        tags = [t for t in CHECKS if t in wide.columns]
        out = loss_change({t: wide[t].to_numpy(dtype=np.float64) for t in tags}, terms.to_numpy(dtype=np.float64),
                          int(self.options.span_resamples), self.seed_)
        rows = [{"forward": tag, **values} for tag, values in out.items()]
        table = pd.DataFrame(rows, columns=["forward", "loss", "change", "change_low", "change_high", "sequences",
                                            "tokens"])
        return table.astype({"sequences": "Int64", "tokens": "Int64"})
