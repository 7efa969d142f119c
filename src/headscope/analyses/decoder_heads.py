"""Head types of decoder language models, scored over the whole corpus in the one pass (issue 15).

(Over 450 lines on purpose: this docstring is the scores' specification, beside the one accumulator that
keeps them; their maths is in :mod:`~headscope.analyses.decoder_scores`, the probe's inputs in
:mod:`~headscope.analyses.induction_probe`.)

Per head, every score is computed per sequence and then averaged over sequences (a sequence where a score is
undefined is left out of that head's mean), so results depend neither on batching, padding nor on the size
of the blocks of query rows the engine hands over:

- ``previous_token``, ``duplicate_token``, ``induction``: TransformerLens's ``"mul"`` score of a detection
  pattern ``P`` (``transformer_lens/head_detector.py``), ``sum(A * P) / sum(A)`` over a sequence's rows,
  with

  - previous token: ``P[i, i-1] = 1``;
  - duplicate token: ``P[i, j] = 1`` for ``j < i`` where token ``j`` is token ``i``;
  - induction: ``P[i, j] = 1`` for ``1 <= j <= i`` where token ``j - 1`` is token ``i`` (the duplicate
    pattern shifted one key to the right: the position just after an earlier occurrence of the query's token).

  ``exclude_bos`` sets column 0 of ``A`` to 0 and ``exclude_current_token`` its diagonal, before both sums,
  as TransformerLens does (its column 0 is always the BOS it prepends; here it is the first position, BOS
  where the tokenizer adds one).
- ``prefix_matching`` (Olsson et al. 2022): on ``induction_probe`` sequences of ``induction_length`` = L
  random tokens repeated twice (BOS first when the tokenizer adds one), the same ``mul`` score with
  ``P[i, i-L+1] = 1`` on the rows of the second repeat only. Without exclusions it is the mean of
  ``A[i, i-L+1]`` over those rows. These sequences go through the model in a pass of their own.
- ``sink_first``: the mean over rows of ``A[i, 0]``; ``sink_bos``: the mean over rows of the attention to
  the BOS token the tokenizer adds (NaN when it adds none; where it does, BOS is position 0 and the two
  agree). ``sink`` is ``sink_first > sink_epsilon`` (the threshold of the corpus mean); the share of heads with
  ``sink`` is the summary's ``sink_rate_of_means``. The exclusions do not apply to the sink scores.
- The sink rate of Gu et al. (ICLR 2025), as their released ``eval_sink_open_source.py`` computes it: per
  sequence of ``n`` tokens, per head, ``alpha_k = sum_{i >= k} A[i, k] / (n - k)`` for every key position
  ``k``; the indicator ``alpha_k > sink_epsilon`` averaged over sequences, layers and heads is the curve
  ``sink_curve`` (one row per ``k``), and its value at ``k = 0`` is the summary's ``sink_rate``. Per head,
  ``sink_share`` is that indicator at ``k = 0`` averaged over sequences (``sink_rate`` is their mean over
  heads). The released script feeds each prompt cut to its first T = 64 tokens; ``--conventions gu`` does the
  same (one sequence per document, shorter documents left out), see ``docs/conventions.md``.

The summary's ``top`` (and the report's top heads) ranks, per score, only the heads whose score was defined on
at least ``--decoder-min-n`` sequences (default 20; for ``prefix_matching`` the probe sequences), and records
``min_n`` and each score's ``scored_sequences``.

Significance (issue 30): each score of :data:`TESTED` has a chance level, ``<score>_chance``, the score a head
would get attending uniformly over the same keys (weight ``1/(i+1)`` on each key ``0..i`` of row ``i``),
accumulated in the same pass with the same patterns, exclusions and sequences as the score itself, and a
95% bootstrap interval over sequences, ``<score>_low`` .. ``<score>_high`` (an online Poisson bootstrap of
``--decoder-resamples`` resamples, seeded by each sequence's position, so shards merge). ``<score>_above_chance``
is ``<score>_low > <score>_chance + --decoder-margin`` on at least ``--decoder-min-n`` sequences: the atlas's
decoder labels rest on it.

See ``docs/decoder_heads.md`` for the definitions and their sources.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from headscope.analyses.base import Analysis, AnalysisResult, head_frame, head_name
from headscope.analyses.conventions import effective_conventions
from headscope.analyses.decoder_scores import (
    ROUNDING,
    pattern_sums,
    prefix_matching_sums,
    sink_alphas,
    uniform_block,
)
from headscope.analyses.induction_probe import probe_candidates, probe_sequences
from headscope.analyses.labels.decoder_heads import LABELS as ATLAS_LABELS
from headscope.analyses.registry import register
from headscope.analyses.stats import CONFIDENCE, mean_or_nan, means_or_nan, percentile_intervals, poisson_weights
from headscope.config import check_minimum, option
from headscope.engine.forwards import Forward, Observe, Pass, TokenRows
from headscope.seeds import Seeds

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.engine.capture import LayerAttention
    from headscope.engine.context import AnalysisContext
    from headscope.engine.forwards import ForwardOutput, Generate

#: The scores of the main pass, computed as TransformerLens ``mul`` scores of a detection pattern.
PATTERN_SCORES = ("previous_token", "duplicate_token", "induction")
#: The attention-sink scores of the main pass.
SINK_SCORES = ("sink_first", "sink_bos")
#: Every per-head score, in column order.
SCORES = ("previous_token", "duplicate_token", "induction", "prefix_matching", "sink_first", "sink_bos")

#: What each column means (figure titles, report).
LABELS = {
    "previous_token": "previous-token score",
    "duplicate_token": "duplicate-token score",
    "induction": "induction score (corpus)",
    "prefix_matching": "prefix-matching score (repeated random tokens)",
    "sink_first": "attention to the first position",
    "sink_bos": "attention to BOS",
}

#: Default of ``--decoder-min-n``: fewest sequences scored for a head to be named among the top heads.
MIN_N = 20

#: The scores with a chance level and a bootstrap interval (``<score>_chance``, ``_low``, ``_high``).
TESTED = ("previous_token", "duplicate_token", "induction", "prefix_matching", "sink_first")

#: Default of ``--decoder-margin``: how far (absolute, in share of attention) the interval's lower bound must
#: clear chance for ``<score>_above_chance``.
MARGIN = 0.1

#: Default of ``--decoder-resamples``: resamples of the bootstrap intervals.
RESAMPLES = 200

#: What each ``--conventions`` value means here (``run.json`` and the report).
CONVENTIONS = {
    "headscope": "headscope's inputs: the run's sequences (raw text packed into windows of --max-length tokens)",
    "gu": ("Gu et al. (ICLR 2025)'s protocol, as their eval_sink_open_source.py: each document cut to its first "
           "--max-length (default 64) tokens, one sequence each, documents shorter than that left out; the sink "
           "rate per key position in sink_curve.csv"),
}


@dataclass(frozen=True)
class DecoderHeadsOptions:
    """Options of the ``decoder_heads`` analysis."""

    induction_probe: int = option(20, help="Sequences of random tokens repeated twice for the prefix-matching "
                                  "(induction) score, run in a pass of their own.")
    induction_length: int = option(50, help="Random tokens in each repeat of an induction-probe sequence.")
    sink_epsilon: float = option(0.3, help="Gu et al. (2025)'s epsilon: the sink rate counts a head in a sequence "
                                 "when its mean attention to the first position there exceeds this (and the column "
                                 "sink marks heads whose corpus mean exceeds it).")
    exclude_bos: bool = option(False, help="Leave attention to the first position (BOS) out of the "
                               "previous-token, duplicate, induction and prefix-matching scores (TransformerLens).")
    exclude_current_token: bool = option(False, help="Leave attention of each token to itself out of the "
                                         "previous-token, duplicate, induction and prefix-matching scores "
                                         "(TransformerLens).")
    decoder_min_n: int = option(MIN_N, help="Fewest sequences on which a head's score is defined for the head to "
                                "be named among the top heads of that score (summary and report; for prefix "
                                "matching, probe sequences).")
    decoder_margin: float = option(MARGIN, help="A head's score is above chance when the lower bound of its 95 percent "
                                   "bootstrap interval over sequences exceeds its chance level (uniform attention "
                                   "over the same keys) by this much, absolute (<score>_above_chance; the atlas's "
                                   "decoder labels).")
    decoder_resamples: int = option(RESAMPLES, help="Bootstrap resamples of the decoder scores' intervals over "
                                    "sequences.")

    def __post_init__(self) -> None:
        o = self
        check_minimum(o, 1, "induction_probe")
        check_minimum(o, 2, "induction_length")
        if not 0 <= o.sink_epsilon <= 1:
            raise ValueError(f"sink_epsilon must be between 0 and 1, got {o.sink_epsilon}")
        check_minimum(o, 1, "decoder_min_n")
        if not 0 <= o.decoder_margin < 1:
            raise ValueError(f"decoder_margin must be in [0, 1), got {o.decoder_margin}")
        if o.decoder_resamples < 10:
            raise ValueError(f"decoder_resamples must be at least 10, got {o.decoder_resamples}")


# --- the analysis --------------------------------------------------------------------------------------------

@register
class DecoderHeads(Analysis):
    """Previous-token, duplicate-token, induction, prefix-matching and attention-sink heads of a causal LM."""

    # declared state (add_state in start)
    sums_: dict[str, torch.Tensor]
    counts_: dict[str, torch.Tensor]
    chance_: dict[str, torch.Tensor]
    boot_sums_: dict[str, torch.Tensor]
    boot_counts_: dict[str, torch.Tensor]
    sequences_: int
    probe_sequences_: int
    sink_hits_: torch.Tensor
    curve_hits_: torch.Tensor
    curve_seen_: torch.Tensor

    name = "decoder_heads"
    option_prefix = "decoder"
    report_order = 15
    atlas_labels = ATLAS_LABELS
    reads_pieces = True
    needs = ("causal",)
    description = ("decoder LMs: previous-token, duplicate-token, induction, prefix-matching and attention-sink "
                   "heads (TransformerLens, Olsson et al. 2022, Gu et al. 2025)")
    Options = DecoderHeadsOptions
    intervenes = True

    def start(self, ctx: AnalysisContext) -> None:
        o = self.options
        shape = (ctx.info.n_layers, ctx.info.n_heads)
        self.n_layers_, self.n_heads_ = shape
        self.add_state("sums_", {k: torch.zeros(shape, dtype=torch.float64, device=ctx.device) for k in SCORES})
        self.add_state("counts_", {k: torch.zeros(shape, dtype=torch.float64, device=ctx.device) for k in SCORES})
        # Chance levels: per-sequence chance summed over the sequences where each head's score is defined
        # (divided by counts_); bootstrap: Poisson-weighted sums and counts per resample.
        self.add_state("chance_", {k: torch.zeros(shape, dtype=torch.float64, device=ctx.device) for k in TESTED})
        boot = (int(o.decoder_resamples), *shape)
        self.add_state("boot_sums_", {k: torch.zeros(boot, dtype=torch.float64, device=ctx.device) for k in TESTED})
        self.add_state("boot_counts_", {k: torch.zeros(boot, dtype=torch.float64, device=ctx.device)
                                        for k in TESTED})
        self.add_state("sequences_", 0)
        self.add_state("probe_sequences_", 0)
        # Gu et al.'s sink rate: per head, the sequences in which alpha_0 > epsilon; per key position k, that
        # indicator summed over sequences, layers and heads, and the sequences long enough to have a k.
        positions = int(ctx.max_length)
        self.add_state("sink_hits_", torch.zeros(shape, dtype=torch.float64, device=ctx.device))
        self.add_state("curve_hits_", torch.zeros(positions, dtype=torch.float64, device=ctx.device))
        self.add_state("curve_seen_", torch.zeros(positions, dtype=torch.float64, device=ctx.device))
        self.conventions_ = effective_conventions(ctx, tuple(CONVENTIONS))
        self.seed_ = ctx.seeds.seed
        self._chance_probe: tuple[torch.Tensor, torch.Tensor] | None = None
        self._probe: tuple[torch.Tensor, torch.Tensor] | None = None
        self.adds_bos_ = ctx.adds_bos  # the tokenizer's choice, or --bos
        longest = 2 * o.induction_length + int(self.adds_bos_)
        # Under gu, --max-length is the paper's T for the corpus's documents, not a limit on the probe.
        limit = int(ctx.info.max_length) if self.conventions_ == "gu" else int(ctx.max_length)
        if longest > limit:
            raise ValueError(f"an induction-probe sequence takes {longest} tokens (2 x --decoder-induction-length "
                             f"{o.induction_length}{' + BOS' if self.adds_bos_ else ''}), more than the "
                             f"{limit} allowed here; lower --decoder-induction-length")
        self._batch: dict[str, torch.Tensor] = {}

    # main pass: per-sequence sums of the current batch, turned into per-sequence scores at its end

    def begin_batch(self, batch: Batch) -> None:
        shape = (batch.size, self.n_layers_, self.n_heads_)
        dev = batch.input_ids.device
        self._batch = {k: torch.zeros(shape, dtype=torch.float64, device=dev)
                       for k in (*PATTERN_SCORES, *SINK_SCORES, "mass")}
        # The chance level's sums, per sequence (uniform attention is the same in every layer).
        self._batch.update({f"chance_{k}": torch.zeros(batch.size, dtype=torch.float64, device=dev)
                            for k in (*PATTERN_SCORES, "sink_first", "mass")})
        # sum_i A[i, k] of every key of every sequence, for Gu et al.'s alpha_k (only the keys the curve keeps).
        keys = min(int(batch.input_ids.shape[1]), int(self.curve_hits_.shape[0]))
        self._batch["columns"] = torch.zeros((*shape, keys), dtype=torch.float64, device=dev)

    def update(self, batch: Batch, block: LayerAttention) -> None:
        o = self.options
        sums = pattern_sums(block.weights, batch.input_ids, block.query_start, o.exclude_bos,
                            o.exclude_current_token)
        for key, value in sums.items():
            self._batch[key][:, block.layer] += value.to(torch.float64)
        # Attention to the BOS the tokenizer added (the encoder marks it as is_cls, at position 0 only).
        bos = batch.is_cls.to(block.weights.dtype)
        self._batch["sink_bos"][:, block.layer] += torch.einsum("bhqk,bk->bh", block.weights, bos).double()
        columns = self._batch["columns"]
        self._batch["columns"][:, block.layer] += block.weights[..., :columns.shape[-1]].sum(-2).double()
        if block.layer == 0:  # the same rows, patterns and exclusions, attended uniformly: the chance level
            rows, keys = block.weights.shape[-2:]
            uniform = uniform_block(batch.lengths.to(block.weights.device), block.query_start, rows, keys)
            chance = pattern_sums(uniform, batch.input_ids, block.query_start, o.exclude_bos,
                                  o.exclude_current_token)
            for key in (*PATTERN_SCORES, "sink_first", "mass"):
                self._batch[f"chance_{key}"] += chance[key][:, 0].to(torch.float64)

    def end_batch(self, batch: Batch) -> None:
        acc = self._batch
        lengths = batch.lengths.to(torch.float64)[:, None, None]
        multi = (batch.lengths > 1)[:, None, None]
        mass = acc["mass"]
        # TransformerLens asserts a sequence longer than 1; with every weight excluded its score is 0/0.
        defined = multi & (mass > ROUNDING * lengths)
        weights = self._weights(batch, "decoder_heads.bootstrap")
        chance_mass = acc["chance_mass"].clamp_min(1e-300)
        for key in PATTERN_SCORES:
            self._add(key, acc[key] / mass.clamp_min(1e-300), defined, acc[f"chance_{key}"] / chance_mass, weights)
        self._add("sink_first", acc["sink_first"] / lengths.clamp_min(1), (batch.lengths > 0)[:, None, None],
                  acc["chance_sink_first"] / lengths[:, 0, 0].clamp_min(1), weights)
        self._add("sink_bos", acc["sink_bos"] / lengths.clamp_min(1), batch.is_cls.any(-1)[:, None, None])
        # Gu et al.'s indicator, per sequence (not of the corpus mean): alpha_k > epsilon.
        alpha, defined = sink_alphas(acc["columns"], batch.lengths)
        hits = (alpha > self.options.sink_epsilon) & defined
        keys = hits.shape[-1]
        self.sink_hits_ += hits[..., 0].sum(0).to(self.sink_hits_)
        self.curve_hits_[:keys] += hits.sum((0, 1, 2)).to(self.curve_hits_)
        self.curve_seen_[:keys] += defined.sum((0, 1, 2)).to(self.curve_seen_)
        self.sequences_ += batch.size
        self._batch = {}

    def _weights(self, batch: Batch, stream: str) -> torch.Tensor:
        """Poisson bootstrap weights [resample, batch] of the batch's sequences (by their stream position)."""
        keys = [int(ex.index) for ex in batch.examples]
        w = poisson_weights(keys, int(self.options.decoder_resamples), Seeds(self.seed_).key(stream))
        return torch.as_tensor(w, dtype=torch.float64, device=next(iter(self.boot_sums_.values())).device)

    def _add(self, key: str, values: torch.Tensor, valid: torch.Tensor, chance: torch.Tensor | None = None,
             weights: torch.Tensor | None = None) -> None:
        """Add per-sequence ``values`` [batch, layer, head] where ``valid`` (broadcastable) holds; with
        ``chance`` [batch] and bootstrap ``weights`` [resample, batch], the chance level and resamples too."""
        valid = valid.expand_as(values)
        filled = torch.where(valid, values, 0.0).to(self.sums_[key].device)
        valid = valid.to(filled.device)
        self.sums_[key] += filled.sum(0)
        self.counts_[key] += valid.sum(0).to(torch.float64)
        if chance is not None and weights is not None:
            on = valid.to(torch.float64)
            self.chance_[key] += torch.einsum("blh,b->lh", on, chance.to(on))
            self.boot_sums_[key] += torch.einsum("rb,blh->rlh", weights, filled)
            self.boot_counts_[key] += torch.einsum("rb,blh->rlh", weights, on)

    # the induction probe: random tokens repeated twice, through the model in a pass of their own

    def planned_forwards(self, ctx: AnalysisContext, sequences: int) -> int:
        return int(self.options.induction_probe)  # short probe sequences, once each

    def passes(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> Iterator[Pass]:
        """The induction probe: random tokens repeated twice, their attention captured as in the main pass."""
        o = self.options
        codec = ctx.require_codec()
        has_bos = self.adds_bos_
        bos = codec.require_bos() if has_bos else None
        candidates = probe_candidates(codec, ctx.vocab_size)
        sequences = probe_sequences(candidates, o.induction_probe, o.induction_length, ctx.seeds.seed, bos)
        offset = int(has_bos)
        length = int(o.induction_length)
        # Written out (probes/decoder_heads.jsonl): each sequence, its repeats and the seed that drew it.
        self._probe_records = [
            {"kind": "induction_probe", "index": k, "ids": ids.tolist(), "text": codec.decode(ids.tolist()),
             "bos": bool(has_bos), "length": length, "first_repeat": [offset, offset + length],
             "second_repeat": [offset + length, offset + 2 * length],
             "scored_rows": [offset + length, offset + 2 * length], "target": "key i - length + 1 of row i",
             "seed": ctx.seeds.key("decoder_heads.probe", k)}
            for k, ids in enumerate(sequences)]
        yield Pass("decoder_heads: induction probe", TokenRows(tuple(sequences), has_bos),
                   [Observe()])

    def update_pass_attention(self, batch: Batch, forward: Forward | Generate, block: LayerAttention) -> None:
        o = self.options
        length = o.induction_length
        if self._probe is None:  # this batch's per-sequence sums (a buffer of the batch, not state)
            shape = (batch.size, self.n_layers_, self.n_heads_)
            numerator = torch.zeros(shape, dtype=torch.float64, device=batch.input_ids.device)
            self._probe = (numerator, torch.zeros_like(numerator))
        numerator, denominator = self._probe
        # Every probe sequence has the same layout; its BOS, if any, is the one leading token.
        offset = int(batch.lengths[0]) - 2 * length
        num, den = prefix_matching_sums(block.weights, block.query_start, length, offset, o.exclude_bos,
                                        o.exclude_current_token)
        numerator[:, block.layer] += num.double()
        denominator[:, block.layer] += den.double()
        if block.layer == 0:  # the chance level: the same rows attended uniformly
            if self._chance_probe is None:
                zeros = torch.zeros(batch.size, dtype=torch.float64, device=numerator.device)
                self._chance_probe = (zeros, zeros.clone())
            rows, keys = block.weights.shape[-2:]
            uniform = uniform_block(batch.lengths.to(block.weights.device), block.query_start, rows, keys)
            num, den = prefix_matching_sums(uniform, block.query_start, length, offset, o.exclude_bos,
                                            o.exclude_current_token)
            self._chance_probe[0].add_(num[:, 0].double().to(numerator.device))
            self._chance_probe[1].add_(den[:, 0].double().to(numerator.device))

    def update_pass(self, batch: Batch, forward: Forward | Generate, out: ForwardOutput) -> None:
        assert self._probe is not None, "the probe's attention comes before its output"
        numerator, denominator = self._probe
        self._probe = None
        assert self._chance_probe is not None, "layer 0's blocks come with the probe's attention"
        chance_num, chance_den = self._chance_probe
        self._chance_probe = None
        length = self.options.induction_length
        self._add("prefix_matching", numerator / denominator.clamp_min(1e-300), denominator > ROUNDING * length,
                  chance_num / chance_den.clamp_min(1e-300), self._weights(batch, "decoder_heads.chance"))
        self.probe_sequences_ += batch.size

    def means(self) -> dict[str, torch.Tensor]:
        """Each score as a float64 tensor of shape (n_layers, n_heads); NaN where never defined."""
        return means_or_nan(self.sums_, self.counts_)

    def chance(self) -> dict[str, torch.Tensor]:
        """Each tested score's chance level, over the same sequences as the score; NaN where never defined."""
        return means_or_nan(self.chance_, {k: self.counts_[k] for k in TESTED})

    def intervals(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each tested score's 95% bootstrap interval over sequences: (low, high) arrays (n_layers, n_heads)."""
        out = {}
        for key in TESTED:
            replicates = mean_or_nan(self.boot_sums_[key].cpu().numpy(), self.boot_counts_[key].cpu().numpy())
            out[key] = percentile_intervals(replicates)
        return out

    def finalize(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        o = self.options
        means = self.means()
        table = head_frame(means, self.n_layers_, self.n_heads_)
        table["sink"] = table["sink_first"] > o.sink_epsilon
        rate_of_means = float(table["sink"].mean())
        curve, sink_share = self.sink_curve(), self.sink_share()
        sink_rate = float(curve["sink_rate"].iloc[0]) if len(curve) else float("nan")
        counts = head_frame({k: self.counts_[k].cpu() for k in SCORES}, self.n_layers_, self.n_heads_)
        min_n = int(o.decoder_min_n)
        chance = self.chance()
        intervals = self.intervals()
        for key in TESTED:
            low, high = intervals[key]
            table[f"{key}_chance"] = chance[key].cpu().numpy().reshape(-1)
            table[f"{key}_low"] = low.reshape(-1)
            table[f"{key}_high"] = high.reshape(-1)
            # NaN compares False: a head without an interval is never above chance.
            table[f"{key}_above_chance"] = ((table[f"{key}_low"] > table[f"{key}_chance"] + o.decoder_margin)
                                            & (counts[key] >= min_n))
        table["sink_share"] = sink_share.reshape(-1)  # (last: the columns before keep their places)
        # Top heads only among heads scored on at least min_n sequences: a mean of one or two is no ranking.
        eligible = table.assign(**{k: table[k].where(counts[k] >= min_n) for k in SCORES})
        summary = {
            "sequences": self.sequences_,
            "probe_sequences": self.probe_sequences_,
            "probe_length": o.induction_length,
            "tokenizer_adds_bos": self.adds_bos_,
            "sink_epsilon": o.sink_epsilon,
            "sink_rate": sink_rate,
            "sink_rate_definition": ("Gu et al. (ICLR 2025), eval_sink_open_source.py: the share of (sequence, "
                                     "layer, head) with alpha_0 = mean over rows of A[i, 0] > sink_epsilon"),
            "sink_rate_sequences": int(self.curve_seen_[0]) if len(self.curve_seen_) else 0,
            "sink_rate_of_means": rate_of_means,
            "sink_rate_of_means_definition": "the share of heads whose sink_first (mean over the corpus) > "
                                             "sink_epsilon (the column sink)",
            "sink_heads": int(table["sink"].sum()),
            "conventions": self.conventions_,
            "definitions": CONVENTIONS[self.conventions_],
            "exclude_bos": o.exclude_bos,
            "exclude_current_token": o.exclude_current_token,
            "min_n": min_n,
            "top_rule": (f"top heads of a score are ranked among heads whose score is defined on at least "
                         f"decoder_min_n = {min_n} sequences (prefix_matching: probe sequences)"),
            "scored_sequences": {k: {"min": int(counts[k].min()), "max": int(counts[k].max())} for k in SCORES},
            "top": {k: top_heads(eligible, k, 5) for k in SCORES if table[k].notna().any()},
            "margin": float(o.decoder_margin),
            "resamples": int(o.decoder_resamples),
            "confidence": CONFIDENCE,
            "significance_rule": (f"<score>_above_chance: the lower bound of the {CONFIDENCE:.0%} bootstrap interval "
                                  f"over sequences > <score>_chance (uniform attention over the same keys) + "
                                  f"decoder_margin = {o.decoder_margin:g}, on at least decoder_min_n = {min_n} "
                                  "sequences"),
            "above_chance": {k: int(table[f"{k}_above_chance"].sum()) for k in TESTED},
        }
        return AnalysisResult(name=self.name, heads=table.copy(), tables={"decoder_heads": table,
                                                                          "sink_curve": curve}, summary=summary,
                              probes=list(getattr(self, "_probe_records", [])))

    def sink_share(self) -> np.ndarray:
        """Per head, the share of sequences in which its ``alpha_0`` exceeds epsilon: (n_layers, n_heads), NaN
        before any sequence."""
        seen = float(self.curve_seen_[0]) if len(self.curve_seen_) else 0.0
        return np.asarray(mean_or_nan(self.sink_hits_.cpu().numpy(), seen), dtype=np.float64)

    def sink_curve(self) -> pd.DataFrame:
        """Gu et al.'s sink rate at each key position ``k`` (their ``metric1``, as a fraction, not in percent):
        the indicator ``alpha_k > epsilon`` averaged over the sequences with more than ``k`` tokens, the layers
        and the heads. Columns ``position, sink_rate, sequences``; positions no sequence reached are left out."""
        seen = self.curve_seen_.cpu().numpy()
        hits = self.curve_hits_.cpu().numpy()
        keep = np.flatnonzero(seen > 0)
        heads = self.n_layers_ * self.n_heads_
        return pd.DataFrame({"position": keep.astype(np.int64), "sink_rate": hits[keep] / (seen[keep] * heads),
                             "sequences": seen[keep].astype(np.int64)})

def top_heads(table: pd.DataFrame, column: str, k: int) -> list[dict[str, Any]]:
    """The ``k`` heads with the largest ``column`` (ties: earlier layer, then head), as ``{"head", "score"}``."""
    best = table.dropna(subset=[column]).sort_values([column, "layer", "head"], ascending=[False, True, True],
                                                     kind="stable").head(k)
    return [{"head": head_name(la, he), "score": float(s)}
            for la, he, s in zip(best["layer"], best["head"], best[column], strict=True)]
