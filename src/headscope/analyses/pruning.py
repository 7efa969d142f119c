"""Pruning heads step by step (Michel et al. 2019, Fig. 4-5): loss against the fraction of heads pruned.

A second pass collects two disjoint seeded samples of the corpus: ``pruning_sequences`` held-out sequences on
which the loss is measured, and as many on which importance is estimated. Orders:

- ``importance``: at each step the importance (:mod:`headscope.analyses.importance`, per-layer L2
  normalisation) is re-estimated with the heads pruned so far closed, and the least important remaining
  heads are pruned next (Michel et al.'s iterative pruning);
- ``random``: a seeded random order, one per seed of ``pruning_seeds``;
- each analysis's own ranking, weakest first, for the analyses that declare one (``ranking``,
  :class:`~headscope.analyses.findings.Ranking`: roles, syntax, coref) and ran (:func:`analysis_rankings`):
  does pruning what an analysis finds least remarkable hurt as little as pruning the least important?
  Pruning finalizes after each of them that runs (``reads_findings``), whatever the order given, and the
  summary names the rankings used and those absent;
- a measured ranking (head_effects' ablation effects), smallest first, when that analysis ran (not named as
  absent when it did not: it is a measurement of its own, not a behaviour).

Every point carries a seeded 95% percentile bootstrap interval over the held-out sequences (``loss_low``,
``loss_high``; ``pruning_bootstrap`` resamples, shared by every point so that differences are paired), and
:func:`loss_check` says whether the loss rises at all with pruning: when it does not, the loss is not
measuring the model's quality and the summary and report say so, with the loss to use instead.

The seed claim: among the heads that survive to 50% (importance order), the share with an identified
behaviour (what each analysis declares as its ``behaviour``: a held role in roles, a distance pattern other
than ``mixed``, a best head of a syntax relation or of coreference), against the pruned half, by Fisher's
exact test. Only the analyses that ran are used, and the summary names them; the same test is also made for
each analysis alone, since the union can cover every head on a large corpus (every head then "has a
behaviour" and the union test says nothing).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from headscope.analyses import stats
from headscope.analyses.base import Analysis, AnalysisResult
from headscope.analyses.findings import declared_behaviours, declared_rankings
from headscope.analyses.importance import normalize_importance
from headscope.analyses.registry import register
from headscope.analyses.stats import CONFIDENCE, percentile_interval
from headscope.config import check_minimum, option
from headscope.engine.forwards import CorpusRows, GateGradient, Loss, Pass
from headscope.seeds import Seeds

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.engine.context import AnalysisContext
    from headscope.engine.forwards import Forward, ForwardOutput, Generate


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """Seeded resamples (with replacement) of ``n`` held-out sequences: int array of shape (resamples, n).

    The same resamples serve every point of every order, so intervals of differences are paired."""
    return stats.bootstrap_indices(n, resamples, Seeds(seed).key("pruning.bootstrap"))


def pooled_loss(losses: np.ndarray, terms: np.ndarray, index: np.ndarray | None = None) -> np.ndarray | float:
    """Summed loss over summed terms: of all sequences, or of each resample (rows of ``index``)."""
    if index is None:
        return float(losses.sum() / max(int(terms.sum()), 1))
    return losses[index].sum(-1) / np.maximum(terms[index].sum(-1), 1)


def fractions(step: float) -> list[float]:
    """0, step, 2 step, ... up to 1 (inclusive)."""
    n = int(np.ceil(1.0 / step - 1e-9))
    return [min(round(k * step, 10), 1.0) for k in range(n + 1)]


def behaviour_by_analysis(results: dict[str, AnalysisResult]) -> dict[str, set[tuple[int, int]]]:
    """For each analysis that declares a behaviour and ran, the heads (layer, head) in which it identified it."""
    found: dict[str, set[tuple[int, int]]] = {}
    for name, behaviour in declared_behaviours():
        heads = behaviour.heads(results[name]) if name in results else None
        if heads is not None:
            found[name] = heads
    return found


def analysis_rankings(results: dict[str, AnalysisResult], n_layers: int, n_heads: int) -> dict[str, np.ndarray]:
    """Each analysis's own per-head ranking score (higher: a stronger behaviour), for the analyses that declare
    one (:class:`~headscope.analyses.findings.Ranking`) and ran, in the declarations' order: roles' largest t
    over the head's roles, syntax's best relation's accuracy, coref's antecedent-selection accuracy,
    head_effects' exact ablation effect.

    Returns
    -------
    dict of str to ndarray of shape (n_layers * n_heads,)
        Heads without a score rank lowest (``-inf``).
    """
    rankings: dict[str, np.ndarray] = {}
    for name, ranking in declared_rankings():
        scores = ranking.scores(results[name], n_layers, n_heads) if name in results else None
        if scores is not None:
            rankings[name] = scores
    return rankings


def curve_key(order: str, seed: int | None, fraction: float) -> str:
    """The key of a point of the curve in the state ``curves_`` (JSON, as a checkpoint holds it)."""
    return json.dumps([order, seed, fraction])


#: What to use instead when the loss does not rise with pruning, by loss.
BETTER_LOSS = {
    "contrastive_loss": "a loss the model was trained to lower, which this sentence-embedding checkpoint without "
                        "an LM head does not have: run pruning on a checkpoint with its masked-LM head (an encoder "
                        "such as bert-base-uncased or roberta-base: masked-LM loss) or on a decoder LM (next-token "
                        "loss); see docs/importance.md",
    "mlm_loss": "more held-out sequences (--pruning-sequences) or longer ones (--max-length), so that the masked-LM "
                "loss has enough masked tokens; see docs/importance.md",
    "lm_loss": "more held-out sequences (--pruning-sequences) or longer ones (--max-length); see docs/importance.md",
}


def loss_check(curves: dict[tuple[str, int | None, float], np.ndarray], steps: list[float], kind: str
               ) -> dict[str, Any]:
    """Does the loss rise with pruning? The paired bootstrap interval of loss(100% pruned) - loss(0% pruned).

    The loss rises when that interval lies wholly above 0; otherwise the loss does not measure what pruning
    takes away (the curve's orders cannot be compared by it) and ``note`` says so and what to use instead.

    Parameters
    ----------
    curves : dict
        Bootstrap losses (ndarray of shape (resamples,), the same resamples throughout) by (order, seed,
        fraction); needs the ``importance`` order at fractions 0 and 1.
    """
    intact, everything = curves["importance", None, steps[0]], curves["importance", None, steps[-1]]
    low, high = percentile_interval(everything - intact)
    out: dict[str, Any] = {
        "rule": f"the loss rises when the {CONFIDENCE:.0%} paired bootstrap interval of loss(100% pruned) - "
                "loss(0% pruned) over the held-out sequences lies above 0",
        "difference_low": low, "difference_high": high, "rises": bool(low > 0)}
    if not out["rises"]:
        out["note"] = (f"The held-out {kind} does not rise with pruning (100% pruned minus 0% pruned: "
                       f"{CONFIDENCE:.0%} interval [{low:.3g}, {high:.3g}]), so it is not measuring the model's "
                       f"quality here and the pruning orders cannot be compared by it; use instead "
                       f"{BETTER_LOSS.get(kind, 'a loss the model was trained for (docs/importance.md)')}")
    return out


def importance_vs_random(curves: dict[tuple[str, int | None, float], np.ndarray], steps: list[float], seeds: int
                         ) -> dict[str, Any]:
    """Mean loss of the importance order minus that of the random orders, over the fractions strictly between
    0 and 1, with its paired bootstrap interval: ``better`` when the interval lies wholly below 0."""
    inner = [f for f in steps if 0 < f < 1] or steps
    imp = np.mean([curves["importance", None, f] for f in inner], axis=0)
    rnd = np.mean([curves["random", s, f] for s in range(seeds) for f in inner], axis=0)
    low, high = percentile_interval(imp - rnd)
    return {"fractions": inner, "difference_low": low, "difference_high": high, "better": bool(high < 0)}


@dataclass(frozen=True)
class PruningOptions:
    """Options of the ``pruning`` analysis."""

    pruning_step: float = option(0.1, help="Share of all heads pruned at each step (default 0.1).")
    pruning_seeds: int = option(3, help="Random pruning orders, as a control (default 3).")
    pruning_sequences: int = option(64, help="Held-out sequences (seeded) on which the loss is measured; as "
                                    "many others estimate importance (default 64).")
    pruning_bootstrap: int = option(1000, help="Bootstrap resamples of the held-out sequences (seeded) for the 95 "
                                    "percent interval of every point of the pruning curve (default 1000).")

    def __post_init__(self) -> None:
        if not 0 < self.pruning_step <= 1:
            raise ValueError(f"pruning_step must be in (0, 1], got {self.pruning_step}")
        check_minimum(self, 0, "pruning_seeds")
        check_minimum(self, 1, "pruning_sequences", "pruning_bootstrap")


@register
class HeadPruning(Analysis):
    """Prune heads by re-estimated importance (and at random) and measure the loss at each step."""

    name = "pruning"
    report_order = 66
    description = "prune heads by re-estimated gradient importance vs random, loss per pruned fraction"
    Options = PruningOptions
    # A sentence-embedding checkpoint's contrastive loss hardly moves when heads are pruned (the run's loss
    # check then calls the curves uninformative): ``all`` leaves pruning out for such a model.
    needs = ("trained_loss",)
    intervenes = True
    # Every declared ranking and behaviour of the run, whatever order the analyses were given in.
    reads_findings = True

    # declared state (add_state in start): what the passes measured, which finalize reads
    rows_: list[dict[str, Any]]
    curves_: dict[str, np.ndarray]
    pruned_: list[int]
    survivors_: list[int]
    rankings_: list[str]
    counts_: dict[str, int]

    def start(self, ctx: AnalysisContext) -> None:
        self.kind = ctx.require_loss()
        # Pruning's measurements are its own passes': a curve (its points, in the order measured, and the
        # bootstrap losses of each, by curve_key), the importance order's heads as pruned, the survivors at
        # 50%, the analyses' rankings used and the sample's sizes. One run measures them all: two shards'
        # lists and curves are joined, their counts added.
        self.add_state("rows_", [], reduce="cat")
        self.add_state("curves_", {}, reduce="cat")
        self.add_state("pruned_", [], reduce="cat")
        self.add_state("survivors_", [], reduce="cat")
        self.add_state("rankings_", [], reduce="cat")
        self.add_state("counts_", {"held_sequences": 0, "held_batches": 0, "estimate_sequences": 0})
        # Per-pass buffers, read by the generator between two yields (never state).
        self._sequences: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
        self._grad: np.ndarray | float = 0.0

    def update_pass(self, batch: Batch, forward: Forward | Generate, out: ForwardOutput) -> None:
        if out.gate_grad is not None:
            self._grad = self._grad + np.abs(out.gate_grad)
        else:
            assert out.sequence_loss is not None and out.sequence_terms is not None
            self._sequences[0].append(out.sequence_loss)
            self._sequences[1].append(out.sequence_terms)

    def planned_forwards(self, ctx: AnalysisContext, sequences: int) -> int:
        o = self.options
        n = min(o.pruning_sequences, sequences // 2) or sequences
        steps = len(fractions(o.pruning_step))
        # Held-out losses: every step of the importance order, of each random order and of the analyses'
        # declared rankings (0% and 100% are shared); importance re-estimated before each step (with backward).
        orders = 1 + o.pruning_seeds + sum(not ranking.measured for _, ranking in declared_rankings())
        return n * (orders * (steps - 2) + 2) + 3 * n * (steps - 1)

    def passes(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> Iterator[Pass]:
        """Two seeded halves of a sample: importance re-estimated on one after each step (a pass of
        gradients), the loss of every order's gates measured on the other (a pass per set of open heads)."""
        seed, o = ctx.seeds.seed, self.options
        n_layers, n_heads = ctx.info.n_layers, ctx.info.n_heads
        total = n_layers * n_heads
        n = min(o.pruning_sequences, ctx.examples // 2) or ctx.examples
        order = Seeds(seed).rng("pruning.order").permutation(ctx.examples)
        held = frozenset(int(i) for i in order[:n])
        keep = held | (frozenset(int(i) for i in order[n:2 * n]) or held)
        # Both halves are cut from the same batches of the sample; importance is estimated on the held-out
        # half when the corpus is too small for a second one.
        estimate = (keep - held) or held
        steps = fractions(o.pruning_step)
        index: np.ndarray | None = None
        # Per-sequence losses by set of open heads: every order starts (0%) and ends (100%) with the same gates.
        cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

        def point(order: str, s: int | None, f: float, k: int, g: np.ndarray) -> Iterator[Pass]:
            nonlocal index
            key = (g.reshape(-1) > 0).tobytes()
            if key not in cache:
                self._sequences = ([], [])
                yield Pass("pruning: held-out loss", CorpusRows(keep, only=held),
                           [Loss(gates=g.reshape(n_layers, n_heads), per_sequence=True)],
                           progress=False)
                cache[key] = (np.concatenate(self._sequences[0]), np.concatenate(self._sequences[1]))
            losses, terms = cache[key]
            if index is None:
                self.counts_["held_sequences"], self.counts_["held_batches"] = len(losses), len(self._sequences[0])
                index = bootstrap_indices(len(losses), o.pruning_bootstrap, seed)
            boot = np.asarray(pooled_loss(losses, terms, index))
            self.curves_[curve_key(order, s, f)] = boot
            low, high = percentile_interval(boot)
            self.rows_.append({"fraction": f, "order": order, "seed": s, "n_pruned": k,
                               "loss": pooled_loss(losses, terms), "loss_low": low, "loss_high": high})

        # Importance order, re-estimated after each step with the pruned heads closed.
        gates = np.ones((n_layers, n_heads))
        pruned: list[int] = []
        survivors: list[int] | None = None
        from headscope.engine.progress import track

        quiet = ctx.quiet
        for f in track(steps, "pruning: importance order", "steps", quiet=quiet):
            target = round(f * total)
            if target > len(pruned):
                self._grad = 0.0
                yield Pass("pruning: importance", CorpusRows(keep, only=estimate),
                           [GateGradient(gates=gates.copy())], progress=False)
                raw = np.where(gates > 0, self._grad, 0.0)
                score = normalize_importance(raw, layers=True, overall=False).reshape(-1)
                alive = [i for i in np.argsort(score, kind="stable") if gates.reshape(-1)[i] > 0]
                for i in alive[:target - len(pruned)]:
                    gates.reshape(-1)[i] = 0.0
                    pruned.append(int(i))
            yield from point("importance", None, f, len(pruned), gates)
            if survivors is None and f >= 0.5:
                survivors = [i for i in range(total) if gates.reshape(-1)[i] > 0]
        for s in track(range(o.pruning_seeds), "pruning: random orders", "orders", quiet=quiet):
            perm = Seeds(seed).rng("pruning.shuffle", s).permutation(total)
            for f in steps:
                g = np.ones(total)
                k = round(f * total)
                g[perm[:k]] = 0.0
                yield from point("random", s, f, k, g)
        rankings = analysis_rankings(results, n_layers, n_heads)
        for name, score in track(list(rankings.items()), "pruning: analyses' rankings", "rankings", quiet=quiet):
            ranked = np.argsort(score, kind="stable")  # weakest behaviour first
            for f in steps:
                g = np.ones(total)
                k = round(f * total)
                g[ranked[:k]] = 0.0
                yield from point(name, None, f, k, g)
        self.rankings_.extend(rankings)
        self.pruned_.extend(pruned)
        self.survivors_.extend(survivors or [])
        self.counts_["estimate_sequences"] = len(estimate)

    def finalize(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        if not self.rows_:
            raise RuntimeError("the pruning passes did not run (the engine runs them before finalize)")
        n_layers, n_heads = ctx.info.n_layers, ctx.info.n_heads
        total = n_layers * n_heads
        curves = {tuple(json.loads(key)): boot for key, boot in self.curves_.items()}
        steps, rankings, pruned = fractions(self.options.pruning_step), self.rankings_, self.pruned_
        table = pd.DataFrame(self.rows_).astype({"seed": "Int64"})  # None: the orders without a seed
        table["loss_kind"] = self.kind
        counts = self.counts_
        summary: dict[str, Any] = {"loss": self.kind, "held_out_batches": counts["held_batches"],
                                   "held_out_sequences": counts["held_sequences"],
                                   "estimate_sequences": counts["estimate_sequences"],
                                   "bootstrap": {"resamples": self.options.pruning_bootstrap,
                                                 "confidence": CONFIDENCE, "over": "held-out sequences",
                                                 "interval": "percentile"},
                                   "pruned_order": [f"L{i // n_heads}H{i % n_heads}" for i in pruned]}
        summary["rankings"] = {"used": list(rankings), "absent": {
            name: ("ran but gave no per-head score" if name in results else "did not run")
            for name, ranking in declared_rankings() if not ranking.measured and name not in rankings}}
        summary["loss_check"] = loss_check(curves, steps, self.kind)
        if self.options.pruning_seeds:
            summary["importance_vs_random"] = importance_vs_random(curves, steps, self.options.pruning_seeds)
        claim = self._claim(results, self.survivors_, n_heads, total)
        summary["seed_claim"] = claim
        return AnalysisResult(name=self.name, tables={"pruning": table}, summary=summary)

    @staticmethod
    def _claim(results: dict[str, AnalysisResult], survivors: list[int], n_heads: int, total: int
               ) -> dict[str, Any]:
        by_analysis = behaviour_by_analysis(results)
        declared = [name for name, _ in declared_behaviours()]
        if not by_analysis:
            return {"analyses": [], "note": f"no behaviour analysis ({', '.join(declared)}) ran"}
        alive = np.zeros(total, bool)
        alive[survivors] = True
        union = set().union(*by_analysis.values())
        claim: dict[str, Any] = {"analyses": list(by_analysis), **seed_claim_test(union, alive, n_heads)}
        claim["absent"] = [name for name in declared if name not in by_analysis]
        claim["by_analysis"] = {name: seed_claim_test(found, alive, n_heads) for name, found in by_analysis.items()}
        if claim["share_all"] in (0.0, 1.0):
            claim["note"] = ("every head" if claim["share_all"] else "no head") + (
                " has an identified behaviour in the union, so the union test cannot tell survivors from pruned "
                "heads; see by_analysis")
        return claim

def seed_claim_test(found: set[tuple[int, int]], alive: np.ndarray, n_heads: int) -> dict[str, Any]:
    """Fisher's exact test of "survivors have a behaviour more often than pruned heads".

    Parameters
    ----------
    found : set of (layer, head)
        Heads with an identified behaviour.
    alive : ndarray of shape (n_layers * n_heads,)
        True for the heads that survive pruning to 50%.
    n_heads : int
        Heads per layer.

    Returns
    -------
    dict
        Counts, shares, odds ratio and the one-sided p-value (``alternative="greater"``) with the two-sided
        one beside it. The odds ratio is None when it is undefined (a zero margin).
    """
    total = alive.size
    flag = np.array([(i // n_heads, i % n_heads) in found for i in range(total)])
    a, b = int((flag & alive).sum()), int((~flag & alive).sum())
    c, d = int((flag & ~alive).sum()), int((~flag & ~alive).sum())
    test = stats.fisher_exact([[a, b], [c, d]])
    return {"survivors": int(alive.sum()), "survivors_with_behaviour": a, "pruned": int((~alive).sum()),
            "pruned_with_behaviour": c, "share_survivors": a / max(a + b, 1), "share_pruned": c / max(c + d, 1),
            "share_all": (a + c) / total, "odds_ratio": test["odds_ratio"], "p": test["p"],
            "p_two_sided": test["p_two_sided"]}
