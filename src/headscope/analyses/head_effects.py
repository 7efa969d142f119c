"""What each head does to the model's own loss: the exact effect of ablating it, with a bootstrap interval, and
attribution patching's estimate of the same beside it (issue 30).

For every head h, the **effect** is the change of the model's loss when h's output (its slice of the attention
output projection's input, at every token) is replaced:

- ``mean`` ablation (the default): by the head's mean output over the real tokens of a seeded sample of the
  corpus (``head_effects_mean_sequences``), estimated as exact sums and token counts, so that batches and
  shards merge exactly;
- ``zero`` ablation: by 0 (the gate of Michel et al. 2019 closed).

The loss is the run's objective (:func:`headscope.engine.forwards.loss_kind`, as ``importance``): next-token
for a decoder LM, masked-LM (a seeded 15% of the non-special tokens) for an encoder with its LM head, in-batch
contrastive otherwise. It is measured on a second seeded sample (``head_effects_sequences`` held-out sequences,
disjoint from the mean sample when the corpus has enough), once as it is and once per head, every sequence's
summed loss kept, and

    effect_h = (sum over sequences of (loss_h(s) - loss(s))) / (sum over sequences of terms(s))

(the change of the pooled per-token loss; per pair for the contrastive loss). The 95% interval
(``effect_low``, ``effect_high``) is a percentile bootstrap over the held-out sequences, each resample taking
a sequence's ablated and baseline losses together (paired), ``head_effects_bootstrap`` resamples shared by
every head.

Cost (issue 39): an ablation of a head in layer l changes nothing below l, so the engine replays it from the
baseline's cached input of layer l (layers l..L-1 and the loss only; :mod:`headscope.engine.replay`, refused
with the reason where not exact, ``head_effects_replay off`` for full forwards); heads of one layer share a
forward (the batch repeated, one closed head per copy, per-row gates) up to ``head_effects_rows`` rows.

**Attribution patching** (Nanda 2023; Kramar et al. 2024, AtP), ``effect_atp``: from one forward and backward
of each held-out batch, the first-order estimate ``sum over tokens (r - x) . dL/dx`` of the same change
(``L`` the summed loss, ``x`` the head's output, ``r`` its replacement), normalised as the effect. The summary
gives the Spearman correlation of the two over heads and AtP's blind spot: the heads among the
``head_effects_top`` largest exact effects that the estimate ranks in its bottom half (saturated or cancelling
heads, which a linear estimate misses).

**AtP*** (``head_effects_atp_star``; Kramar et al. 2024): GradDrop's estimate of each effect's magnitude,
``1/(L-1) sum_l |AtP_{-l}|`` (:func:`grad_drop_estimate`). Its QK fix is 0 for this node: a head's output
replaced by r is its values replaced by r at every key (each row of its attention sums to 1), its queries and
keys untouched, so the QK-fixed query and key terms (:mod:`headscope.engine.atp_star`) vanish
(docs/head_effects.md). ``head_effects_verify_top K``: AtP* for every head, exact effects for its top K and K
random heads (:func:`verify_summary`).

Writes the heads columns ``effect``, ``effect_low``, ``effect_high``, ``effect_atp`` (``effect_atp_star``) and
``head_effects.csv``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from headscope.analyses.base import Analysis, AnalysisResult, head_frame, head_name
from headscope.analyses.effect_stats import (
    bootstrap_effects,
    grad_drop_estimate,
    ranks,
    recall_at,
    spearman,
    split_sample,
    verify_summary,
)
from headscope.analyses.findings import Ranking
from headscope.analyses.labels.head_effects import LABELS as ATLAS_LABELS
from headscope.analyses.registry import register
from headscope.analyses.stats import CONFIDENCE
from headscope.config import check_choices, check_minimum, option
from headscope.engine.forwards import MASK_RATE, Ablate, Attribution, CorpusRows, Forward, HeadSums, Pass

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.engine.context import AnalysisContext
    from headscope.engine.forwards import ForwardOutput, Generate


#: Fewer held-out sequences than this: the summary says the interval is rough.
MIN_SEQUENCES = 10


def head_forwards(rows: int, replace: np.ndarray | None, replay: bool = True, grad_drop: bool = False
                  ) -> list[Forward]:
    """The forwards of one held-out batch: attribution patching (with AtP*'s GradDrop when asked), then the
    baseline and every head closed (:class:`~headscope.engine.forwards.Ablate`: replayed from each
    layer's cached input where exact, ``rows // batch_size`` heads of a layer per forward)."""
    return [Attribution(tag=("atp",), replace=replace, grad_drop=grad_drop),
            Ablate(tag=("heads",), rows=rows, replace=replace, replay=replay)]


@dataclass(frozen=True)
class HeadEffectsOptions:
    """Options of the ``head_effects`` analysis."""

    head_effects_ablation: Literal["mean", "zero"] = option(
        "mean", help="What replaces a head's output: mean (its mean output over the mean sample) or zero "
        "(default: mean).")
    head_effects_sequences: int = option(32, help="Held-out sequences (seeded) on which each head's effect is "
                                         "measured; at most half the corpus (default 32).")
    head_effects_mean_sequences: int = option(64, help="Other sequences (seeded, disjoint from the held-out ones) "
                                              "over which each head's mean output is estimated (default 64).")
    head_effects_bootstrap: int = option(1000, help="Bootstrap resamples of the held-out sequences for the 95 "
                                         "percent interval of every effect (default 1000).")
    head_effects_rows: int = option(0, help="Rows per forward of the ablations: a batch of B held-out sequences "
                                    "is repeated for rows // B heads at once (0: the run's --batch-size; 1: one "
                                    "head per forward).")
    head_effects_replay: Literal["auto", "off"] = option(
        "auto", help="auto: each head's ablation replays only its layer and those above, from the baseline's "
        "cached layer inputs, where that is exact (an LM loss, layers found, the cache within --attention-memory); "
        "off: every ablation a full forward (the reference; default: auto).")
    head_effects_atp_star: bool = option(
        False, help="Also AtP* (Kramar et al. 2024): attribution patching with GradDrop (one more backward of "
        "L(L-1)/2 layers per batch), reported beside the exact effects (effect_atp_star; default off).")
    head_effects_verify_top: int = option(
        0, help="K > 0: AtP* for every head, then exact effects only for the K heads it ranks highest and K random "
        "others (a control), with the recall of the exact top K estimated; the other heads' effects are empty. "
        "For models where an exact effect for every head is out of reach (default 0: every head exact).")
    head_effects_top: int = option(10, help="Heads listed in the summary by exact effect, and AtP's blind spot: "
                                   "those among this many largest effects (at most half the heads) that "
                                   "attribution patching ranks in its bottom half (default 10).")

    def __post_init__(self) -> None:
        check_choices(self)
        check_minimum(self, 1, "head_effects_sequences", "head_effects_bootstrap")
        check_minimum(self, 0, "head_effects_mean_sequences", "head_effects_rows", "head_effects_top",
                      "head_effects_verify_top")
        if self.head_effects_ablation == "mean" and self.head_effects_mean_sequences < 1:
            raise ValueError("mean ablation needs head_effects_mean_sequences >= 1")


@register
class HeadEffects(Analysis):
    """Each head's exact mean- (or zero-) ablation effect on the loss, with a bootstrap interval, and AtP's
    first-order estimate of it."""

    # declared state (add_state in start)
    head_sum_: dict[str, np.ndarray]
    head_tokens_: int
    mean_index_: np.ndarray
    index_: np.ndarray
    base_: np.ndarray
    terms_: np.ndarray
    ablated_: np.ndarray
    atp_: np.ndarray
    atp_drop_: np.ndarray

    name = "head_effects"
    costly = "about half a forward per head per batch of its sample (replayed from the layer inputs)"
    report_order = 68
    ranking = Ranking("effect", measured=True, order=40, describe="the head's exact ablation effect on the loss")
    atlas_labels = ATLAS_LABELS
    description = ("each head's mean-ablation effect on the loss, bootstrap interval, and attribution patching "
                   "(AtP) beside it")
    Options = HeadEffectsOptions
    intervenes = True

    def start(self, ctx: AnalysisContext) -> None:
        o = self.options
        self.kind = ctx.require_loss()
        total = ctx.info.n_layers * ctx.info.n_heads
        # The mean's sums (one array, [layer, head, head_dim], once the first forward gives head_dim).
        self.add_state("head_sum_", {})
        self.add_state("head_tokens_", 0)
        self.add_state("mean_index_", np.zeros(0, dtype=np.int64), reduce="cat")
        # One row per held-out sequence, joined shard after shard (ordered by index in finalize).
        self.add_state("index_", np.zeros(0, dtype=np.int64), reduce="cat")
        self.add_state("base_", np.zeros(0), reduce="cat")
        self.add_state("terms_", np.zeros(0), reduce="cat")
        self.add_state("ablated_", np.zeros((0, total)), reduce="cat")
        self.add_state("atp_", np.zeros((0, total)), reduce="cat")
        # AtP*'s GradDrop: per sequence, the estimate with each layer's gradient dropped, [layer * total]
        self.add_state("atp_drop_", np.zeros((0, ctx.info.n_layers * total)), reduce="cat")
        if 2 * o.head_effects_verify_top > total:
            raise ValueError(f"head_effects_verify_top {o.head_effects_verify_top}: the top K and K random heads are "
                             f"more than the model's {total} heads (use at most {total // 2}, or 0 for every head)")
        self._star = bool(o.head_effects_atp_star or o.head_effects_verify_top)
        self._verify: dict[str, list[int]] | None = None
        if self._star and self.kind not in ("lm_loss", "mlm_loss"):
            raise ValueError("head_effects_atp_star / head_effects_verify_top: AtP*'s GradDrop is computed for LM "
                             f"losses; this model's loss is {self.kind}")
        self._total = total
        self._pending: dict[tuple[int, ...], dict[str, Any]] = {}  # a batch's rows until its last forward
        self._disjoint = True
        self._replay: dict[str, int] = {}  # sequences measured by each mode (replay, full forwards)
        self._replay_why: set[str] = set()
        self._replay_head: set[str] = set()

    def planned_forwards(self, ctx: AnalysisContext, sequences: int) -> int:
        """The mean sample, then per held-out sequence AtP (3), the baseline and checks (about 2), and about 0.6
        of a forward per ablated head replayed (1 in full forwards); AtP*'s GradDrop adds about L."""
        o = self.options
        info = ctx.info
        held = min(o.head_effects_sequences, max(sequences // 2, 1))
        mean = min(o.head_effects_mean_sequences, sequences) if o.head_effects_ablation == "mean" else 0
        heads = 2 * o.head_effects_verify_top or info.n_layers * info.n_heads
        per_head = 0.6 if o.head_effects_replay == "auto" else 1.0
        star = info.n_layers if (o.head_effects_atp_star or o.head_effects_verify_top) else 0
        return int(mean + held * (5 + star + per_head * heads))

    def replacement(self) -> np.ndarray | None:
        """What a closed head outputs: its mean output (mean ablation), None for 0 (zero ablation)."""
        if self.options.head_effects_ablation == "zero":
            return None
        if "sum" not in self.head_sum_ or self.head_tokens_ == 0:
            raise RuntimeError("head_effects: no head output was summed for the means (the mean pass saw no token)")
        return self.head_sum_["sum"] / self.head_tokens_

    def passes(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> Iterator[Pass]:
        """The means of every head's output over the mean sample (mean ablation), then on each held-out batch
        the baseline, attribution patching and every head ablated."""
        o = self.options
        mean_n = o.head_effects_mean_sequences if o.head_effects_ablation == "mean" else 0
        held, mean, self._disjoint = split_sample(ctx.examples, o.head_effects_sequences, mean_n, ctx.seeds.seed)
        keep = held | mean  # one stream of the corpus, cut in two
        if o.head_effects_ablation == "mean":
            yield Pass("head_effects: mean outputs", CorpusRows(keep, only=mean),
                       [HeadSums(tag=("mean",), loss="objective")])
        replace = self.replacement()
        rows = o.head_effects_rows or ctx.batch_size

        replay = o.head_effects_replay == "auto"
        if o.head_effects_verify_top:
            atp, ablate = head_forwards(rows, replace, replay, grad_drop=True)
            yield Pass("head_effects: AtP*", CorpusRows(keep, only=held), [atp])
            self._verify = self.verify_pick(ctx, o.head_effects_verify_top)
            picked = tuple(sorted(self._verify["top"] + self._verify["control"]))
            assert isinstance(ablate, Ablate)
            yield Pass("head_effects: baseline and verified ablations", CorpusRows(keep, only=held),
                       [dataclasses.replace(ablate, heads=picked)])
            return

        def forwards(batch: Batch) -> list[Forward]:
            return head_forwards(rows, replace, replay, self._star)

        yield Pass("head_effects: baseline, AtP and ablations", CorpusRows(keep, only=held), forwards)

    def verify_pick(self, ctx: AnalysisContext, k: int) -> dict[str, list[int]]:
        """The ``k`` heads AtP* ranks highest over the held-out sequences, and ``k`` others drawn at random
        (seeded) as a control."""
        drops = [rows["drop"] for rows in self._pending.values() if "drop" in rows]
        terms = 1.0  # a common scale: the ranking does not depend on it
        dropped = np.concatenate(drops).reshape(-1, ctx.info.n_layers, self._total)
        star = grad_drop_estimate(dropped, terms)
        top = [int(i) for i in np.argsort(-star, kind="stable")[:k]]
        rest = np.setdiff1d(np.arange(self._total), top)
        control = ctx.seeds.rng("head_effects.control").choice(rest, size=k, replace=False)
        return {"top": top, "control": sorted(int(i) for i in control)}

    def update_pass(self, batch: Batch, forward: Forward | Generate, out: ForwardOutput) -> None:
        assert isinstance(forward, Forward) and isinstance(forward.tag, tuple)
        what = forward.tag[0]
        if what == "mean":
            assert out.head_sums is not None
            self.head_sum_["sum"] = self.head_sum_.get("sum", 0.0) + out.head_sums
            self.head_tokens_ += out.head_tokens
            self.mean_index_ = np.concatenate([self.mean_index_, [int(ex.index) for ex in batch.examples]])
            return
        key = tuple(int(ex.index) for ex in batch.examples)
        rows = self._pending.setdefault(key, {})
        if what == "atp":
            assert out.atp is not None
            rows["atp"] = out.atp.reshape(batch.size, -1)
            n_layers = out.atp.shape[1]
            rows["drop"] = (np.zeros((batch.size, 0)) if out.atp_dropped is None
                            else out.atp_dropped.reshape(batch.size, n_layers * self._total))
        else:
            assert out.sequence_loss is not None and out.sequence_terms is not None and out.ablated is not None
            rows["base"], rows["terms"], rows["ablated"] = out.sequence_loss, out.sequence_terms, out.ablated.T
            how = out.replay or {}
            self._replay[str(how.get("mode"))] = self._replay.get(str(how.get("mode")), 0) + batch.size
            if "why" in how:
                self._replay_why.add(str(how["why"]))
            if "lm_head" in how:
                self._replay_head.add(str(how["lm_head"]))
        if "base" in rows and "atp" in rows:
            del self._pending[key]
            self.index_ = np.concatenate([self.index_, np.asarray(key, dtype=np.int64)])
            self.base_ = np.concatenate([self.base_, rows["base"]])
            self.terms_ = np.concatenate([self.terms_, rows["terms"].astype(np.float64)])
            self.ablated_ = np.concatenate([self.ablated_, rows["ablated"]])
            self.atp_ = np.concatenate([self.atp_, rows["atp"]])
            if rows["drop"].shape[1]:
                self.atp_drop_ = np.concatenate([self.atp_drop_, rows["drop"]])

    def replay_summary(self) -> dict[str, Any]:
        """How the ablations ran in this process: replayed from the cached layer inputs, or full forwards and
        why (empty after a merge of shards, whose processes each said so)."""
        out: dict[str, Any] = {"sequences_by_mode": dict(sorted(self._replay.items()))}
        modes = sorted(self._replay)
        if modes:
            out["mode"] = modes[0] if len(modes) == 1 else "mixed"
        if self._replay_why:
            out["why_not_replay"] = sorted(self._replay_why)
        if self._replay_head:
            out["lm_head"] = sorted(self._replay_head)[0] if len(self._replay_head) == 1 else "mixed"
        return out

    def finalize(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        if len(self.index_) == 0:
            raise RuntimeError("the head_effects passes did not run (the engine runs them before finalize)")
        o = self.options
        n_layers, n_heads = ctx.info.n_layers, ctx.info.n_heads
        order = np.argsort(self.index_, kind="stable")  # the same resamples however the batches came
        base, terms = self.base_[order], self.terms_[order]
        diff = self.ablated_[order] - base[:, None]
        total_terms = float(terms.sum())
        effect = diff.sum(0) / max(total_terms, 1.0)
        atp = self.atp_[order].sum(0) / max(total_terms, 1.0)
        low, high = bootstrap_effects(diff, terms, o.head_effects_bootstrap, ctx.seeds.seed, ctx.quiet)
        effect_rank, atp_rank = ranks(effect), ranks(atp)
        total = n_layers * n_heads
        top = min(o.head_effects_top, total)
        blind_top = min(o.head_effects_top, total // 2)  # on a small model, at most the top half
        blind = (effect_rank <= blind_top) & (atp_rank > total / 2)
        shape = (n_layers, n_heads)
        columns = {"effect": effect.reshape(shape), "effect_low": low.reshape(shape),
                   "effect_high": high.reshape(shape), "effect_atp": atp.reshape(shape)}
        star = None
        if len(self.atp_drop_):
            star = grad_drop_estimate(self.atp_drop_[order].reshape(len(order), n_layers, -1), total_terms)
            columns["effect_atp_star"] = star.reshape(shape)
        heads = head_frame(columns, *shape)
        table = heads.copy()
        table.insert(2, "head_name", [head_name(la, he) for la, he in zip(table["layer"], table["head"],
                                                                          strict=True)])
        table["effect_rank"] = effect_rank
        table["atp_rank"] = atp_rank
        table["atp_blind_spot"] = blind
        magnitude = np.abs(effect)
        star_blind = None
        if star is not None:
            star_rank, magnitude_rank = ranks(star), ranks(magnitude)
            star_blind = (magnitude_rank <= blind_top) & (star_rank > total / 2)
            table["atp_star_rank"] = star_rank
            table["atp_star_blind_spot"] = star_blind
        table["sequences"] = len(base)
        table["ablation"] = o.head_effects_ablation
        table["loss"] = self.kind

        def described(i: int) -> dict[str, Any]:
            out = {"head": head_name(i // n_heads, i % n_heads), "effect": float(effect[i]),
                   "effect_low": float(low[i]), "effect_high": float(high[i]), "effect_atp": float(atp[i]),
                   "effect_rank": int(effect_rank[i]) if np.isfinite(effect_rank[i]) else None,
               "atp_rank": int(atp_rank[i])}
            if star is not None:
                out["effect_atp_star"] = float(star[i])
            return out

        n = len(base)
        interval: dict[str, Any] = {
            "over": "held-out sequences", "sequences": n, "resamples": o.head_effects_bootstrap,
            "confidence": CONFIDENCE, "interval": "percentile", "paired": True,
            "rests_on": f"{CONFIDENCE:.0%} percentile bootstrap over {n} held-out sequences "
                        f"({int(total_terms)} loss terms), {o.head_effects_bootstrap} resamples, each sequence's "
                        "ablated and baseline losses resampled together"}
        if n < MIN_SEQUENCES:
            interval["note"] = (f"only {n} held-out sequences (fewer than {MIN_SEQUENCES}): the bootstrap interval "
                                "is rough; use more (--head-effects-sequences) or a larger corpus")
        summary: dict[str, Any] = {
            "loss": self.kind, "ablation": o.head_effects_ablation,
            "baseline_loss": float(base.sum() / max(total_terms, 1.0)),
            "held_out_sequences": n, "held_out_terms": int(total_terms),
            "mean_sequences": len(self.mean_index_), "mean_tokens": int(self.head_tokens_),
            "samples_disjoint": bool(self._disjoint) if o.head_effects_ablation == "mean" else None,
            "held_out_examples": sorted(int(i) for i in self.index_),
            "mean_examples": sorted(int(i) for i in self.mean_index_),
            "bootstrap": interval,
            "heads_raising_loss": int((low > 0).sum()), "heads_lowering_loss": int((high < 0).sum()),
            "top": [described(int(i)) for i in np.argsort(-effect, kind="stable")[:top] if np.isfinite(effect[i])],
            "atp": {"spearman": spearman(atp, effect), "over": f"{total} heads",
                    "blind_spot_rule": f"among the {blind_top} largest exact effects, ranked in the bottom half "
                                       f"(rank > {total / 2:g} of {total}) by the AtP estimate",
                    "blind_spot": [described(int(i)) for i in np.flatnonzero(blind)]},
        }
        if star is not None:
            assert star_blind is not None
            summary["atp_star"] = {
                "method": "GradDrop (Kramar et al. 2024, section 3.1.2): 1/(L-1) sum over layers l of |AtP with "
                          "layer l's gradient dropped|, an estimate of the effect's magnitude",
                "qk_fix": "0 for this node: a head's output replaced by r is its values replaced by r at every key "
                          "(each row of its attention sums to 1) with its queries and keys untouched, so the QK-fixed "
                          "query and key terms (engine/atp_star.py) vanish; AtP* here is AtP with GradDrop "
                          "(docs/head_effects.md)",
                "compared_with": "|effect|",
                "spearman": spearman(star, magnitude),
                "spearman_atp_magnitude": spearman(np.abs(atp), magnitude),
                "recall_top": {"k": top, "atp_star": recall_at(star, magnitude, top),
                               "atp": recall_at(np.abs(atp), magnitude, top)},
                "blind_spot": [described(int(i)) for i in np.flatnonzero(star_blind)],
            }
        if self._verify is not None:
            assert star is not None
            summary["verify_top"] = verify_summary(effect, star, self._verify["top"], self._verify["control"])
            summary["verified_heads"] = int(np.isfinite(effect).sum())
        summary["replay"] = self.replay_summary()
        if self.kind == "mlm_loss":
            summary["mask_rate"] = MASK_RATE
        return AnalysisResult(name=self.name, heads=heads, tables={"head_effects": table}, summary=summary)
