"""What each attention pattern does: switch off a cluster of heads and measure what the model loses.

After the ``distance`` analysis has clustered the heads, a seeded subset of the corpus
(``--ablation-sequences``) is run again through the model once per condition, with head gates
(:class:`headscope.model.gates.HeadGates`) closing:

- ``cluster``: every head of one cluster;
- ``random``: as many heads, drawn (seeded) from outside that cluster, as a control for the count;
- ``head``: each of the ``--ablation-top`` most typical heads of a cluster (nearest its centroid), alone.

Measured against the ungated model on the same inputs:

- ``loss``: where the model has a trained LM head, the masked-LM loss over a seeded 15% of the non-special
  tokens replaced by the mask token (causal LMs: the next-token loss), and ``loss_increase`` over the
  baseline;
- ``drift``: always, the mean over real tokens of ``1 - cos(h, h0)`` between the final hidden states with and
  without the gates.

``effect`` is ``loss_increase`` when there is a loss, else ``drift``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from headscope.analyses.base import Analysis, AnalysisResult, head_name
from headscope.analyses.registry import register
from headscope.config import check_minimum, option
from headscope.engine.forwards import LM_LOSSES, MASK_RATE, CorpusRows, Forward, LMLoss, Pass

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.engine.context import AnalysisContext
    from headscope.engine.forwards import ForwardOutput, Generate

@dataclass
class Condition:
    """One ablation: the heads whose gates are closed."""

    kind: str
    """``baseline``, ``cluster``, ``random`` or ``head``."""
    cluster: int
    """The cluster it concerns (-1 for the baseline)."""
    pattern: str
    """That cluster's pattern name."""
    heads: list[tuple[int, int]]
    """``(layer, head)`` pairs switched off."""


def conditions_from_clusters(heads: pd.DataFrame, top: int, seed: int) -> list[Condition]:
    """The ablations for a per-head table with ``layer, head, cluster, pattern, cluster_distance``."""
    rng = np.random.default_rng(seed)
    everyone = [(int(la), int(he)) for la, he in zip(heads["layer"], heads["head"], strict=True)]
    out = []
    for c, members in heads.groupby("cluster", sort=True):
        pattern = str(members["pattern"].iloc[0])
        chosen = [(int(la), int(he)) for la, he in zip(members["layer"], members["head"], strict=True)]
        out.append(Condition("cluster", int(c), pattern, chosen))
        outside = [h for h in everyone if h not in set(chosen)]
        if len(outside) >= len(chosen):
            pick = rng.choice(len(outside), size=len(chosen), replace=False)
            out.append(Condition("random", int(c), pattern, sorted(outside[i] for i in pick)))
        typical = members.sort_values(["cluster_distance", "layer", "head"]).head(top)
        out.extend(Condition("head", int(c), pattern, [(int(la), int(he))])
                   for la, he in zip(typical["layer"], typical["head"], strict=True))
    return out


def ablation_table(conditions: list[Condition], loss: np.ndarray, loss_tokens: np.ndarray, drift: np.ndarray,
                   tokens: int, metric: str) -> pd.DataFrame:
    """One row per condition (the baseline first) from the summed losses and drifts of the pass.

    Parameters
    ----------
    conditions : list of Condition
        The baseline, then every ablation.
    loss, loss_tokens, drift : ndarray of shape (n_conditions,)
        Summed token loss, its tokens, and summed drift over real tokens.
    tokens : int
        Real tokens of the pass.
    metric : {"lm_loss", "mlm_loss", "hidden_drift"}
    """
    use_loss = metric != "hidden_drift"
    rows = []
    base_loss = loss[0] / loss_tokens[0] if use_loss and loss_tokens[0] else np.nan
    for k, cond in enumerate(conditions):
        value = loss[k] / loss_tokens[k] if use_loss and loss_tokens[k] else np.nan
        single = cond.heads[0] if cond.kind == "head" else (pd.NA, pd.NA)
        rows.append({
            "kind": cond.kind, "cluster": cond.cluster, "pattern": cond.pattern, "n_heads": len(cond.heads),
            "layer": single[0], "head": single[1],
            "heads": " ".join(head_name(la, he) for la, he in cond.heads),
            "loss": value, "loss_increase": value - base_loss,
            "drift": drift[k] / max(tokens, 1),
        })
    table = pd.DataFrame(rows).astype({"layer": "Int64", "head": "Int64"})  # empty unless a single head
    table["effect"] = table["loss_increase"] if use_loss else table["drift"]
    table.attrs["metric"] = metric
    table.attrs["tokens"] = tokens
    table.attrs["loss_tokens"] = int(loss_tokens[0])
    return table


def gates_closing(heads: list[tuple[int, int]], n_layers: int, n_heads: int) -> np.ndarray | None:
    """Gate values of shape (n_layers, n_heads) closing ``heads``; None (no gates) when there are none."""
    if not heads:
        return None
    gates = np.ones((n_layers, n_heads))
    for layer, head in heads:
        gates[layer, head] = 0.0
    return gates


@dataclass(frozen=True)
class AblationOptions:
    """Options of the ``ablation`` analysis."""

    ablation_sequences: int = option(64, help="Sequences of the corpus (seeded sample) re-run for each "
                                     "ablation.")
    ablation_top: int = option(2, help="Most typical heads of each cluster also switched off one at a time.")

    def __post_init__(self) -> None:
        check_minimum(self, 1, "ablation_sequences")
        check_minimum(self, 0, "ablation_top")


@register
class PatternAblation(Analysis):
    """Switch off each cluster of heads (and its most typical heads alone) and measure what the model loses."""

    # declared state (add_state in passes, once the conditions are known)
    loss_: np.ndarray
    loss_tokens_: np.ndarray
    drift_: np.ndarray
    tokens_: int
    sequences_: int

    name = "ablation"
    report_order = 64
    description = "switch off each head cluster (gates on head outputs) and measure MLM loss or hidden drift"
    Options = AblationOptions
    after = ("distance",)
    intervenes = True

    def start(self, ctx: AnalysisContext) -> None:
        # The LM loss when the model has one (the engine's LMLoss forward), else the hidden states' drift.
        self.metric = ctx.loss_kind if ctx.loss_kind in LM_LOSSES else "hidden_drift"
        self.conditions: list[Condition] = []
        self.add_state("tokens_", 0)
        self.add_state("sequences_", 0)

    def planned_forwards(self, ctx: AnalysisContext, sequences: int) -> int:
        # The clusters are known only after the pass: at most 10 (distance's largest silhouette k by default),
        # each switched off whole, as a random control and by its --ablation-top heads, plus the baseline.
        return min(self.options.ablation_sequences, sequences) * (1 + 10 * (2 + self.options.ablation_top))

    def passes(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> Iterator[Pass]:
        """One pass over a seeded sample of the corpus: every condition's forward on each batch."""
        seed = ctx.seeds.seed  # the root draw (headscope.seeds.ROOT["ablation"])
        self.conditions = [Condition("baseline", -1, "", []),
                           *conditions_from_clusters(results["distance"].heads, self.options.ablation_top, seed)]
        k = len(self.conditions)
        # The sums have one entry per condition, known only now (the clusters are final).
        self.add_state("loss_", np.zeros(k))
        self.add_state("loss_tokens_", np.zeros(k))
        self.add_state("drift_", np.zeros(k))
        n = min(self.options.ablation_sequences, ctx.examples)
        picked = ctx.seeds.root("ablation").choice(ctx.examples, size=n, replace=False)
        shape = (ctx.info.n_layers, ctx.info.n_heads)
        forwards = [LMLoss(tag=j, gates=gates_closing(c.heads, *shape))
                    for j, c in enumerate(self.conditions)]
        yield Pass("ablation", CorpusRows(frozenset(int(i) for i in picked)), forwards)

    def update_pass(self, batch: Batch, forward: Forward | Generate, out: ForwardOutput) -> None:
        assert out.hidden is not None and isinstance(forward, Forward)
        j = int(forward.tag)  # type: ignore[call-overload]
        if j == 0:
            # the ungated reference of this batch's drifts (a per-batch buffer, not state)
            self._reference = out.hidden.float()
            self.tokens_ += int(batch.mask.sum())
            self.sequences_ += batch.size
        cos = torch.nn.functional.cosine_similarity(out.hidden.float(), self._reference, dim=-1)
        self.drift_[j] += float(((1 - cos) * batch.mask).sum())
        self.loss_[j] += out.loss
        self.loss_tokens_[j] += out.terms

    def finalize(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        if not self.conditions or self.sequences_ == 0:
            raise RuntimeError("the ablation pass did not run (the engine runs it before finalize)")
        table = ablation_table(self.conditions, self.loss_, self.loss_tokens_, self.drift_, self.tokens_,
                               self.metric)
        summary = {"metric": table.attrs["metric"], "sequences": self.sequences_, "tokens": table.attrs["tokens"],
                   "loss_tokens": table.attrs["loss_tokens"], "conditions": len(table) - 1,
                   "mask_rate": MASK_RATE if table.attrs["metric"] == "mlm_loss" else None}
        return AnalysisResult(name=self.name, tables={"ablation": table}, summary=summary)
