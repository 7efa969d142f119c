"""Pruning heads step by step (Michel et al. 2019, Fig. 4-5): loss against the fraction of heads pruned.

A second pass collects two disjoint seeded samples of the corpus: ``pruning_sequences`` held-out sequences on
which the loss is measured, and as many on which importance is estimated. Orders:

- ``importance``: at each step the importance (:mod:`headscope.analyses.importance`, per-layer L2
  normalisation) is re-estimated with the heads pruned so far closed, and the least important remaining
  heads are pruned next (Michel et al.'s iterative pruning);
- ``random``: a seeded random order, one per seed of ``pruning_seeds``;
- ``roles``, ``syntax``, ``coref``: each analysis's own ranking, weakest first, for the analyses that ran
  (:func:`analysis_rankings`): does pruning what an analysis finds least remarkable hurt as little as
  pruning the least important?

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

from headscope.analyses.base import Analysis, AnalysisResult
from headscope.analyses.importance import batch_loss, gate_gradient, loss_kind, normalize_importance, plain_batch
from headscope.analyses.registry import register
from headscope.config import option
from headscope.model.gates import HeadGates

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


def behaviour_heads(results: dict[str, AnalysisResult]) -> tuple[set[tuple[int, int]], list[str]]:
    """Heads with an identified behaviour in any analysis that ran, and the names of those analyses."""
    by_analysis = behaviour_by_analysis(results)
    return set().union(*by_analysis.values()), list(by_analysis)


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


@dataclass
class PruningOptions:
    """Options of the ``pruning`` analysis."""

    pruning_step: float = option(0.1, help="Share of all heads pruned at each step (default 0.1).")
    pruning_seeds: int = option(3, help="Random pruning orders, as a control (default 3).")
    pruning_sequences: int = option(64, help="Held-out sequences (seeded) on which the loss is measured; as "
                                    "many others estimate importance (default 64).")


@register
class HeadPruning(Analysis):
    """Prune heads by re-estimated importance (and at random) and measure the loss at each step."""

    name = "pruning"
    report_order = 66
    description = "prune heads by re-estimated gradient importance vs random, loss per pruned fraction"
    Options = PruningOptions
    second_pass = True

    def start(self, ctx: RunContext) -> None:
        o = self.options
        if not 0 < o.pruning_step <= 1:
            raise ValueError(f"pruning_step must be in (0, 1], got {o.pruning_step}")
        if o.pruning_seeds < 0:
            raise ValueError(f"pruning_seeds must be >= 0, got {o.pruning_seeds}")
        if o.pruning_sequences < 1:
            raise ValueError(f"pruning_sequences must be at least 1, got {o.pruning_sequences}")
        self.kind = loss_kind(ctx.loaded)
        self.held_: list[Batch] = []
        self.estimate_: list[Batch] = []

    def second_pass_examples(self, ctx: RunContext, results: dict[str, AnalysisResult]) -> Iterator[Example]:
        total = int(ctx.manifest.counts.get("examples", 0))
        n = min(self.options.pruning_sequences, total // 2) or total
        order = np.random.default_rng([int(ctx.config.seed), 16]).permutation(total)
        self.held_ids_ = {int(i) for i in order[:n]}
        estimate = {int(i) for i in order[n:2 * n]} or self.held_ids_
        keep = self.held_ids_ | estimate
        return (ex for k, ex in enumerate(ctx.corpus.examples()) if k in keep)

    def update_second_pass(self, ctx: RunContext, batch: Batch) -> None:
        with torch.inference_mode(False):
            copy = plain_batch(batch)
        rows = [r for r, ex in enumerate(copy.examples) if ex.index in self.held_ids_]
        rest = [r for r in range(copy.size) if r not in set(rows)]
        if rows:
            self.held_.append(copy.select(rows))
        if rest:
            self.estimate_.append(copy.select(rest))

    def merge(self, other: Analysis) -> HeadPruning:
        assert isinstance(other, HeadPruning)
        self.held_ += other.held_
        self.estimate_ += other.estimate_
        return self

    def finalize(self, ctx: RunContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        if not self.held_:
            raise RuntimeError("the pruning pass saw no held-out batch")
        loaded, seed = ctx.loaded, int(ctx.config.seed)
        estimate = self.estimate_ or self.held_
        n_layers, n_heads = ctx.info.n_layers, ctx.info.n_heads
        total = n_layers * n_heads
        steps = fractions(self.options.pruning_step)
        rows = []
        # Importance order, re-estimated after each step with the pruned heads closed.
        gates = np.ones((n_layers, n_heads))
        pruned: list[int] = []
        survivors: list[int] | None = None
        for f in steps:
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
            rows.append({"fraction": f, "order": "importance", "seed": pd.NA, "n_pruned": len(pruned),
                         "loss": held_out_loss(loaded, self.held_, self.kind, seed, gates)})
            if survivors is None and f >= 0.5:
                survivors = [i for i in range(total) if gates.reshape(-1)[i] > 0]
        for s in range(self.options.pruning_seeds):
            perm = np.random.default_rng([seed, 17, s]).permutation(total)
            for f in steps:
                g = np.ones(total)
                k = round(f * total)
                g[perm[:k]] = 0.0
                loss = held_out_loss(loaded, self.held_, self.kind, seed, g.reshape(n_layers, n_heads))
                rows.append({"fraction": f, "order": "random", "seed": s, "n_pruned": k, "loss": loss})
        for name, score in analysis_rankings(results, n_layers, n_heads).items():
            order = np.argsort(score, kind="stable")  # weakest behaviour first
            for f in steps:
                g = np.ones(total)
                k = round(f * total)
                g[order[:k]] = 0.0
                loss = held_out_loss(loaded, self.held_, self.kind, seed, g.reshape(n_layers, n_heads))
                rows.append({"fraction": f, "order": name, "seed": pd.NA, "n_pruned": k, "loss": loss})
        table = pd.DataFrame(rows).astype({"seed": "Int64"})
        table["loss_kind"] = self.kind
        summary: dict[str, Any] = {"loss": self.kind, "held_out_batches": len(self.held_),
                                   "held_out_sequences": sum(b.size for b in self.held_),
                                   "estimate_sequences": sum(b.size for b in estimate),
                                   "pruned_order": [f"L{i // n_heads}H{i % n_heads}" for i in pruned]}
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
        claim = run.run.get("analyses", {}).get("pruning", {}).get("seed_claim", {})
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
        body = ("<p>Heads pruned step by step by importance re-estimated after each step (Michel et al. 2019) "
                f"and, as controls, in {html.escape(controls)}; loss on held-out sequences.</p>" + extra
                + figure_html(name, "Loss against the fraction of heads pruned"))
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
    from scipy.stats import fisher_exact

    total = alive.size
    flag = np.array([(i // n_heads, i % n_heads) in found for i in range(total)])
    a, b = int((flag & alive).sum()), int((~flag & alive).sum())
    c, d = int((flag & ~alive).sum()), int((~flag & ~alive).sum())
    odds, p_two = fisher_exact([[a, b], [c, d]])
    _, p_greater = fisher_exact([[a, b], [c, d]], alternative="greater")
    return {"survivors": int(alive.sum()), "survivors_with_behaviour": a, "pruned": int((~alive).sum()),
            "pruned_with_behaviour": c, "share_survivors": a / max(a + b, 1), "share_pruned": c / max(c + d, 1),
            "share_all": (a + c) / total, "odds_ratio": float(odds) if np.isfinite(odds) else None,
            "p": float(p_greater), "p_two_sided": float(p_two)}


def _pruning_figure(table: pd.DataFrame, figures: Path) -> str:
    import matplotlib.pyplot as plt

    from headscope.report.figures import COLUMN_WIDTH, save_figure

    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.2), layout="constrained")
    imp = table[table["order"] == "importance"]
    ax.plot(imp["fraction"], imp["loss"], "o-", label="importance", color="tab:blue")
    for k, (_, grp) in enumerate(table[table["order"] == "random"].groupby("seed")):
        ax.plot(grp["fraction"], grp["loss"], "-", color="grey", alpha=0.6, label="random" if k == 0 else None)
    ranked = sorted(set(table["order"]) - {"importance", "random"})
    for name, colour in zip(ranked, ("tab:orange", "tab:green", "tab:red", "tab:purple"), strict=False):
        grp = table[table["order"] == name]
        ax.plot(grp["fraction"], grp["loss"], "s--", markersize=2, color=colour, label=f"{name} ranking")
    ax.set_xlabel("fraction of heads pruned")
    ax.set_ylabel(f"held-out {table['loss_kind'].iloc[0]}")
    ax.legend(fontsize=5)
    save_figure(fig, figures, "pruning_curve")
    return "pruning_curve"
