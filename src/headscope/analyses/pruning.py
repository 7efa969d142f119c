"""Pruning heads step by step (Michel et al. 2019, Fig. 4-5): loss against the fraction of heads pruned.

A second pass collects two disjoint seeded samples of the corpus: ``pruning_sequences`` held-out sequences on
which the loss is measured, and as many on which importance is estimated. Orders:

- ``importance``: at each step the importance (:mod:`headscope.analyses.importance`, per-layer L2
  normalisation) is re-estimated with the heads pruned so far closed, and the least important remaining
  heads are pruned next (Michel et al.'s iterative pruning);
- ``random``: a seeded random order, one per seed of ``pruning_seeds``;
- ``roles``, ``syntax``, ``coref``: each analysis's own ranking, weakest first, for the analyses that ran
  (:func:`analysis_rankings`): does pruning what an analysis finds least remarkable hurt as little as
  pruning the least important? Pruning finalizes after each of them that runs (``after_if_run``), whatever
  the order given, and the summary names the rankings used and those absent.

Every point carries a seeded 95% percentile bootstrap interval over the held-out sequences (``loss_low``,
``loss_high``; ``pruning_bootstrap`` resamples, shared by every point so that differences are paired), and
:func:`loss_check` says whether the loss rises at all with pruning: when it does not, the loss is not
measuring the model's quality and the summary and report say so, with the loss to use instead.

The seed claim: among the heads that survive to 50% (importance order), the share with an identified
behaviour (a held role in roles, a distance pattern other than ``mixed``, a best head of a syntax relation or
of coreference), against the pruned half, by Fisher's exact test. Only the analyses that ran are used, and
the summary names them; the same test is also made for each analysis alone, since the union can cover every
head on a large corpus (every head then "has a behaviour" and the union test says nothing).
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from headscope.analyses import stats
from headscope.analyses.base import Analysis, AnalysisResult
from headscope.analyses.importance import (
    batch_loss,
    contrastive_ids,
    gate_gradient,
    loss_kind,
    normalize_importance,
    plain_batch,
    split_halves,
)
from headscope.analyses.registry import register
from headscope.analyses.stats import CONFIDENCE, percentile_interval
from headscope.config import option
from headscope.model.gates import HeadGates
from headscope.model.losses import CONTRASTIVE_TEMPERATURE, lm_labels, mean_pool

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.engine.context import RunContext
    from headscope.engine.results import RunResult
    from headscope.model.encode import Example
    from headscope.model.load import LoadedModel
    from headscope.report.section import ReportSection


def held_out_loss(loaded: LoadedModel, batches: list[Batch], kind: str, seed: int, gates: np.ndarray) -> float:
    """Mean loss over ``batches`` with the gates ``gates`` (ndarray of shape (n_layers, n_heads), 0 or 1)."""
    info = loaded.info
    total, terms = 0.0, 0
    with HeadGates(loaded.model, info.n_layers, info.n_heads) as hg, torch.no_grad():
        hg.values.copy_(torch.as_tensor(gates, dtype=hg.values.dtype))
        for batch in batches:
            loss, n = batch_loss(loaded, batch, kind, seed)
            total += float(loss)
            terms += n
    return total / max(terms, 1)


def sequence_losses(loaded: LoadedModel, batch: Batch, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each sequence's summed loss and its number of terms, as :func:`batch_loss` sums them over the batch.

    For the contrastive loss a sequence's term is its pair's InfoNCE against the other pairs of its batch
    (one term); for LM losses, its masked or next tokens.

    Returns
    -------
    loss : ndarray of shape (batch,), float64
    terms : ndarray of shape (batch,), int64
    """
    F = torch.nn.functional
    if kind == "contrastive_loss":
        cls_id, sep_id, pad_id = contrastive_ids(loaded.tokenizer)
        a, b = split_halves(batch, cls_id, sep_id, pad_id)
        pooled = [mean_pool(loaded.base(**x).last_hidden_state, x["attention_mask"]) for x in (a, b)]
        sim = F.normalize(pooled[0], dim=-1) @ F.normalize(pooled[1], dim=-1).T / CONTRASTIVE_TEMPERATURE
        target = torch.arange(sim.shape[0], device=sim.device)
        per = F.cross_entropy(sim.float(), target, reduction="none")
        return per.double().cpu().numpy(), np.ones(batch.size, dtype=np.int64)
    inputs, labels = lm_labels(loaded, batch, seed)
    logits = loaded.model(**inputs).logits.float()
    if loaded.info.is_causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    per_token = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return (per_token.double().sum(-1).cpu().numpy(), (labels != -100).sum(-1).cpu().numpy().astype(np.int64))


def held_out_sequence_losses(loaded: LoadedModel, batches: list[Batch], kind: str, seed: int, gates: np.ndarray
                             ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sequence_losses` of every held-out sequence with the gates ``gates``, concatenated in batch order."""
    info = loaded.info
    losses, terms = [], []
    with HeadGates(loaded.model, info.n_layers, info.n_heads) as hg, torch.no_grad():
        hg.values.copy_(torch.as_tensor(gates, dtype=hg.values.dtype))
        for batch in batches:
            loss, n = sequence_losses(loaded, batch, kind, seed)
            losses.append(loss)
            terms.append(n)
    return np.concatenate(losses), np.concatenate(terms)


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """Seeded resamples (with replacement) of ``n`` held-out sequences: int array of shape (resamples, n).

    The same resamples serve every point of every order, so intervals of differences are paired."""
    return stats.bootstrap_indices(n, resamples, [seed, 18])


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
    """For each behaviour analysis that ran, the heads (layer, head) in which it identified a behaviour."""
    found: dict[str, set[tuple[int, int]]] = {}

    def heads_of(frame: pd.DataFrame) -> set[tuple[int, int]]:
        frame = frame.dropna(subset=["layer", "head"])
        return {(int(la), int(he)) for la, he in zip(frame["layer"], frame["head"], strict=True)}

    if "roles" in results and "roles" in results["roles"].tables:
        roles = results["roles"].tables["roles"]
        found["roles"] = heads_of(roles[roles["has_role"].astype(bool)])
    if "distance" in results and results["distance"].heads is not None:
        heads = results["distance"].heads
        found["distance"] = heads_of(heads[heads["pattern"] != "mixed"])
    for name, key in (("syntax", "syntax_best"), ("coref", "coref_best")):
        if name in results and key in results[name].tables:
            found[name] = heads_of(results[name].tables[key])
    return found


def analysis_rankings(results: dict[str, AnalysisResult], n_layers: int, n_heads: int) -> dict[str, np.ndarray]:
    """Each analysis's own per-head ranking score (higher: a stronger behaviour), where one exists.

    - ``roles``: the largest t statistic over the head's roles (how clearly it holds its strongest role);
    - ``syntax``: the accuracy of the head's best relation;
    - ``coref``: the head's antecedent-selection accuracy.

    Returns
    -------
    dict of str to ndarray of shape (n_layers * n_heads,)
        Heads without a score rank lowest (``-inf``).
    """
    rankings: dict[str, np.ndarray] = {}

    def scores(frame: pd.DataFrame, column: str) -> np.ndarray:
        out = np.full(n_layers * n_heads, -np.inf)
        frame = frame.dropna(subset=[column])
        out[frame["layer"].to_numpy(int) * n_heads + frame["head"].to_numpy(int)] = frame[column].to_numpy(float)
        return out

    if "roles" in results and "roles" in results["roles"].tables:
        roles = results["roles"].tables["roles"]
        rankings["roles"] = scores(roles.groupby(["layer", "head"], as_index=False)["t"].max(), "t")
    for name, column in (("syntax", "syntax_best_accuracy"), ("coref", "coref_accuracy")):
        heads = results[name].heads if name in results else None
        if heads is not None and column in heads:
            rankings[name] = scores(heads, column)
    return rankings


#: The analyses whose per-head ranking gives a pruning order (:func:`analysis_rankings`).
RANKING_ANALYSES = ("roles", "syntax", "coref")
#: The analyses whose identified behaviours the seed claim tests (:func:`behaviour_by_analysis`).
BEHAVIOUR_ANALYSES = ("roles", "distance", "syntax", "coref")

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


@dataclass
class PruningOptions:
    """Options of the ``pruning`` analysis."""

    pruning_step: float = option(0.1, help="Share of all heads pruned at each step (default 0.1).")
    pruning_seeds: int = option(3, help="Random pruning orders, as a control (default 3).")
    pruning_sequences: int = option(64, help="Held-out sequences (seeded) on which the loss is measured; as "
                                    "many others estimate importance (default 64).")
    pruning_bootstrap: int = option(1000, help="Bootstrap resamples of the held-out sequences (seeded) for the 95 "
                                    "percent interval of every point of the pruning curve (default 1000).")


@register
class HeadPruning(Analysis):
    """Prune heads by re-estimated importance (and at random) and measure the loss at each step."""

    # declared state (add_state in start)
    held_: list[Batch]
    estimate_: list[Batch]

    name = "pruning"
    report_order = 66
    description = "prune heads by re-estimated gradient importance vs random, loss per pruned fraction"
    Options = PruningOptions
    second_pass = True
    # Every ranking and behaviour of the run, whatever order the analyses were given in.
    after_if_run = tuple(dict.fromkeys((*RANKING_ANALYSES, *BEHAVIOUR_ANALYSES)))

    def start(self, ctx: RunContext) -> None:
        o = self.options
        if not 0 < o.pruning_step <= 1:
            raise ValueError(f"pruning_step must be in (0, 1], got {o.pruning_step}")
        if o.pruning_seeds < 0:
            raise ValueError(f"pruning_seeds must be >= 0, got {o.pruning_seeds}")
        if o.pruning_sequences < 1:
            raise ValueError(f"pruning_sequences must be at least 1, got {o.pruning_sequences}")
        if o.pruning_bootstrap < 1:
            raise ValueError(f"pruning_bootstrap must be at least 1, got {o.pruning_bootstrap}")
        self.kind = loss_kind(ctx.loaded)
        # The sampled batches (CPU copies) the pruning curve is measured on, and those importance is estimated on.
        self.add_state("held_", [], reduce="cat")
        self.add_state("estimate_", [], reduce="cat")

    def second_pass_examples(self, ctx: RunContext, results: dict[str, AnalysisResult]) -> Iterator[Example]:
        total = int(ctx.manifest.counts.get("examples", 0))
        n = min(self.options.pruning_sequences, total // 2) or total
        order = np.random.default_rng([int(ctx.config.seed), 16]).permutation(total)
        self._held_ids = {int(i) for i in order[:n]}  # the pass's sample (not state: drawn again on a rerun)
        estimate = {int(i) for i in order[n:2 * n]} or self._held_ids
        keep = self._held_ids | estimate
        self.second_pass_total = len(keep)
        return (ex for k, ex in enumerate(ctx.corpus.examples()) if k in keep)

    def update_second_pass(self, ctx: RunContext, batch: Batch) -> None:
        with torch.inference_mode(False):
            copy = plain_batch(batch)
        rows = [r for r, ex in enumerate(copy.examples) if ex.index in self._held_ids]
        rest = [r for r in range(copy.size) if r not in set(rows)]
        if rows:
            self.held_.append(copy.select(rows))
        if rest:
            self.estimate_.append(copy.select(rest))

    def finalize(self, ctx: RunContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        if not self.held_:
            raise RuntimeError("the pruning pass saw no held-out batch")
        loaded, seed = ctx.loaded, int(ctx.config.seed)
        estimate = self.estimate_ or self.held_
        n_layers, n_heads = ctx.info.n_layers, ctx.info.n_heads
        total = n_layers * n_heads
        steps = fractions(self.options.pruning_step)
        n_held = sum(b.size for b in self.held_)
        index = bootstrap_indices(n_held, self.options.pruning_bootstrap, seed)
        # Per-sequence losses by set of open heads: every order starts (0%) and ends (100%) with the same gates.
        cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        curves: dict[tuple[str, int | None, float], np.ndarray] = {}  # bootstrap losses of each point
        rows = []

        def add_point(order: str, s: int | None, f: float, k: int, g: np.ndarray) -> None:
            key = (g.reshape(-1) > 0).tobytes()
            if key not in cache:
                cache[key] = held_out_sequence_losses(loaded, self.held_, self.kind, seed,
                                                      g.reshape(n_layers, n_heads))
            losses, terms = cache[key]
            boot = np.asarray(pooled_loss(losses, terms, index))
            curves[order, s, f] = boot
            low, high = percentile_interval(boot)
            rows.append({"fraction": f, "order": order, "seed": pd.NA if s is None else s, "n_pruned": k,
                         "loss": pooled_loss(losses, terms), "loss_low": low, "loss_high": high})

        # Importance order, re-estimated after each step with the pruned heads closed.
        gates = np.ones((n_layers, n_heads))
        pruned: list[int] = []
        survivors: list[int] | None = None
        from headscope.engine.progress import track

        quiet = ctx.config.quiet
        for f in track(steps, "pruning: importance order", "steps", quiet=quiet):
            target = round(f * total)
            if target > len(pruned):
                raw = sum(np.abs(gate_gradient(loaded, b, self.kind, seed, torch.as_tensor(gates))[0])
                          for b in estimate)
                raw = np.where(gates > 0, raw, 0.0)
                score = normalize_importance(raw, layers=True, overall=False).reshape(-1)
                alive = [i for i in np.argsort(score, kind="stable") if gates.reshape(-1)[i] > 0]
                for i in alive[:target - len(pruned)]:
                    gates.reshape(-1)[i] = 0.0
                    pruned.append(int(i))
            add_point("importance", None, f, len(pruned), gates)
            if survivors is None and f >= 0.5:
                survivors = [i for i in range(total) if gates.reshape(-1)[i] > 0]
        for s in track(range(self.options.pruning_seeds), "pruning: random orders", "orders", quiet=quiet):
            perm = np.random.default_rng([seed, 17, s]).permutation(total)
            for f in steps:
                g = np.ones(total)
                k = round(f * total)
                g[perm[:k]] = 0.0
                add_point("random", s, f, k, g)
        rankings = analysis_rankings(results, n_layers, n_heads)
        for name, score in track(list(rankings.items()), "pruning: analyses' rankings", "rankings", quiet=quiet):
            order = np.argsort(score, kind="stable")  # weakest behaviour first
            for f in steps:
                g = np.ones(total)
                k = round(f * total)
                g[order[:k]] = 0.0
                add_point(name, None, f, k, g)
        table = pd.DataFrame(rows).astype({"seed": "Int64"})
        table["loss_kind"] = self.kind
        summary: dict[str, Any] = {"loss": self.kind, "held_out_batches": len(self.held_),
                                   "held_out_sequences": n_held,
                                   "estimate_sequences": sum(b.size for b in estimate),
                                   "bootstrap": {"resamples": self.options.pruning_bootstrap,
                                                 "confidence": CONFIDENCE, "over": "held-out sequences",
                                                 "interval": "percentile"},
                                   "pruned_order": [f"L{i // n_heads}H{i % n_heads}" for i in pruned]}
        summary["rankings"] = {"used": list(rankings), "absent": {
            name: ("ran but gave no per-head score" if name in results else "did not run")
            for name in RANKING_ANALYSES if name not in rankings}}
        summary["loss_check"] = loss_check(curves, steps, self.kind)
        if self.options.pruning_seeds:
            summary["importance_vs_random"] = importance_vs_random(curves, steps, self.options.pruning_seeds)
        claim = self._claim(results, survivors or [], n_heads, total)
        summary["seed_claim"] = claim
        return AnalysisResult(name=self.name, tables={"pruning": table}, summary=summary)

    @staticmethod
    def _claim(results: dict[str, AnalysisResult], survivors: list[int], n_heads: int, total: int
               ) -> dict[str, Any]:
        by_analysis = behaviour_by_analysis(results)
        if not by_analysis:
            return {"analyses": [], "note": "no behaviour analysis (roles, distance, syntax, coref) ran"}
        alive = np.zeros(total, bool)
        alive[survivors] = True
        union = set().union(*by_analysis.values())
        claim: dict[str, Any] = {"analyses": list(by_analysis), **seed_claim_test(union, alive, n_heads)}
        claim["absent"] = [name for name in BEHAVIOUR_ANALYSES if name not in by_analysis]
        claim["by_analysis"] = {name: seed_claim_test(found, alive, n_heads) for name, found in by_analysis.items()}
        if claim["share_all"] in (0.0, 1.0):
            claim["note"] = ("every head" if claim["share_all"] else "no head") + (
                " has an identified behaviour in the union, so the union test cannot tell survivors from pruned "
                "heads; see by_analysis")
        return claim

    @staticmethod
    def report(run: RunResult, figures: Path) -> ReportSection | None:
        from headscope.report.section import ReportSection, figure_html

        if "pruning" not in run.tables:
            return None
        table = run.tables["pruning"]
        name = _pruning_figure(table, figures)
        summary = run.run.get("analyses", {}).get("pruning", {})
        claim = summary.get("seed_claim", {})
        if claim.get("analyses"):
            sentence = (f"Of the heads surviving to 50%, {claim['share_survivors']:.0%} have an identified "
                        f"behaviour (from {', '.join(claim['analyses'])}) against {claim['share_pruned']:.0%} of the "
                        f"pruned heads and {claim['share_all']:.0%} of all heads (Fisher's exact test, one-sided, "
                        f"p = {claim['p']:.3g}).")
            if claim.get("note"):
                sentence += f" Note: {claim['note']}."
            parts = [("any of them", claim), *claim.get("by_analysis", {}).items()]
            rows = "".join(
                f"<tr><td>{html.escape(name)}</td><td>{c['survivors_with_behaviour']} / {c['survivors']}</td>"
                f"<td>{c['pruned_with_behaviour']} / {c['pruned']}</td><td>{c['p']:.3g}</td></tr>"
                for name, c in parts)
            extra = (f"<p>{html.escape(sentence)}</p><table><tr><th>behaviour from</th><th>survivors with it</th>"
                     f"<th>pruned with it</th><th>p (one-sided)</th></tr>{rows}</table>")
        else:
            extra = "<p>No behaviour analysis ran: the seed claim is not tested.</p>"
        ranked = sorted(set(table["order"]) - {"importance", "random"})
        controls = "random orders" + (f" and the ranking of {', '.join(ranked)} (weakest first)" if ranked else "")
        absent = summary.get("rankings", {}).get("absent", {})
        if absent:
            controls += "; no ranking of " + ", ".join(f"{k} ({v})" for k, v in absent.items())
        boot = summary.get("bootstrap")
        bands = (f" Bands: {boot['confidence']:.0%} bootstrap intervals over the held-out sequences "
                 f"({boot['resamples']} resamples)." if boot else "")
        check = summary.get("loss_check", {})
        warning = (f"<p><strong>The loss does not measure pruning here.</strong> {html.escape(check['note'])}.</p>"
                   if check.get("note") else "")
        versus = summary.get("importance_vs_random")
        if versus:
            verdict = "lower than" if versus["better"] else "not distinguishable from (or above)"
            warning += (f"<p>Averaged over the fractions between 0 and 1, the importance order's loss is {verdict} "
                        f"the random orders' (difference, {CONFIDENCE:.0%} interval "
                        f"[{versus['difference_low']:.3g}, {versus['difference_high']:.3g}]).</p>")
        body = (warning + "<p>Heads pruned step by step by importance re-estimated after each step (Michel et al. "
                f"2019) and, as controls, in {html.escape(controls)}; loss on held-out sequences."
                f"{html.escape(bands)}</p>" + extra + figure_html(name, "Loss against the fraction of heads pruned"))
        return ReportSection(key="pruning", title="Pruning heads", html=body, figures=[name])


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


def _pruning_figure(table: pd.DataFrame, figures: Path) -> str:
    import matplotlib.pyplot as plt

    from headscope.report.figures import COLUMN_WIDTH, save_figure

    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.2), layout="constrained")
    def band(grp: pd.DataFrame, colour: str, alpha: float) -> None:
        if {"loss_low", "loss_high"} <= set(grp.columns):  # runs before the intervals have none
            ax.fill_between(grp["fraction"], grp["loss_low"], grp["loss_high"], color=colour, alpha=alpha,
                            linewidth=0)

    imp = table[table["order"] == "importance"]
    band(imp, "tab:blue", 0.2)
    ax.plot(imp["fraction"], imp["loss"], "o-", label="importance", color="tab:blue")
    for k, (_, grp) in enumerate(table[table["order"] == "random"].groupby("seed")):
        band(grp, "grey", 0.1)
        ax.plot(grp["fraction"], grp["loss"], "-", color="grey", alpha=0.6, label="random" if k == 0 else None)
    ranked = sorted(set(table["order"]) - {"importance", "random"})
    for name, colour in zip(ranked, ("tab:orange", "tab:green", "tab:red", "tab:purple"), strict=False):
        grp = table[table["order"] == name]
        band(grp, colour, 0.15)
        ax.plot(grp["fraction"], grp["loss"], "s--", markersize=2, color=colour, label=f"{name} ranking")
    ax.set_xlabel("fraction of heads pruned")
    ax.set_ylabel(f"held-out {table['loss_kind'].iloc[0]}")
    ax.legend(fontsize=5)
    save_figure(fig, figures, "pruning_curve")
    return "pruning_curve"
