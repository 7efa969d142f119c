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

import html
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from headscope.analyses.base import Analysis, AnalysisResult, head_name
from headscope.analyses.registry import register
from headscope.config import option
from headscope.model.gates import HeadGates
from headscope.model.losses import MASK_RATE, lm_forward, mask_for_mlm

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.engine.context import RunContext
    from headscope.engine.results import RunResult
    from headscope.model.encode import Example
    from headscope.model.load import LoadedModel
    from headscope.report.section import ReportSection

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


class AblationSums:
    """Running sums of every condition's loss and drift over the batches of the ablation pass.

    Parameters
    ----------
    loaded : LoadedModel
    conditions : list of Condition
        The ablations; the ungated baseline is added first.
    seed : int
        Seed of the masked-LM masks.
    """

    def __init__(self, loaded: LoadedModel, conditions: list[Condition], seed: int) -> None:
        info = loaded.info
        self.loaded = loaded
        self.seed = seed
        self.use_loss = bool(info.has_lm_head) and (info.is_causal or loaded.tokenizer.mask_token_id is not None)
        self.conditions = [Condition("baseline", -1, "", []), *conditions]
        k = len(self.conditions)
        self.loss_ = np.zeros(k)
        self.loss_tokens_ = np.zeros(k)
        self.drift_ = np.zeros(k)
        self.tokens_ = 0

    def add(self, batch: Batch, quiet: bool = True) -> None:
        """Run every condition on ``batch`` (gates attached for the duration); ``quiet=False`` shows the
        conditions' progress (a bar on a terminal, else a line every 30 s)."""
        from headscope.engine.progress import track

        info = self.loaded.info
        labels = None
        inputs = batch.model_inputs()
        if self.use_loss and info.is_causal:
            labels = batch.input_ids.masked_fill(~batch.mask, -100)
        elif self.use_loss:
            inputs, labels = mask_for_mlm(batch, int(self.loaded.tokenizer.mask_token_id), self.seed)
        real = batch.mask
        self.tokens_ += int(real.sum())
        reference = None
        with HeadGates(self.loaded.model, info.n_layers, info.n_heads) as gates, torch.inference_mode():
            conditions = track(self.conditions, "ablation: conditions of this batch", "conditions", quiet=quiet,
                               fraction=None, leave=False, final=False)
            for k, cond in enumerate(conditions):
                gates.set(cond.heads)
                hidden, loss_t, n = lm_forward(self.loaded, inputs, labels, info.is_causal)
                loss_sum = 0.0 if loss_t is None else float(loss_t)
                if reference is None:
                    reference = hidden.float()
                cos = torch.nn.functional.cosine_similarity(hidden.float(), reference, dim=-1)
                self.drift_[k] += float(((1 - cos) * real).sum())
                self.loss_[k] += loss_sum
                self.loss_tokens_[k] += n

    def merge(self, other: AblationSums) -> AblationSums:
        """Add the sums of ``other`` (the same conditions) and return self."""
        for name in ("loss_", "loss_tokens_", "drift_", "tokens_"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def table(self) -> pd.DataFrame:
        """One row per condition (the baseline first)."""
        info = self.loaded.info
        use_loss = self.use_loss
        loss, loss_tokens = self.loss_, self.loss_tokens_
        rows = []
        base_loss = loss[0] / loss_tokens[0] if use_loss and loss_tokens[0] else np.nan
        for k, cond in enumerate(self.conditions):
            value = loss[k] / loss_tokens[k] if use_loss and loss_tokens[k] else np.nan
            single = cond.heads[0] if cond.kind == "head" else (pd.NA, pd.NA)
            rows.append({
                "kind": cond.kind, "cluster": cond.cluster, "pattern": cond.pattern, "n_heads": len(cond.heads),
                "layer": single[0], "head": single[1],
                "heads": " ".join(head_name(la, he) for la, he in cond.heads),
                "loss": value, "loss_increase": value - base_loss,
                "drift": self.drift_[k] / max(self.tokens_, 1),
            })
        table = pd.DataFrame(rows).astype({"layer": "Int64", "head": "Int64"})  # empty unless a single head
        table["effect"] = table["loss_increase"] if use_loss else table["drift"]
        table.attrs["metric"] = ("lm_loss" if info.is_causal else "mlm_loss") if use_loss else "hidden_drift"
        table.attrs["tokens"] = self.tokens_
        table.attrs["loss_tokens"] = int(loss_tokens[0])
        return table


def measure_ablations(loaded: LoadedModel, batches: Iterable[Batch], conditions: list[Condition], seed: int
                      ) -> pd.DataFrame:
    """Run every condition on every batch; one row per condition (the baseline first).

    Parameters
    ----------
    loaded : LoadedModel
    batches : iterable of Batch
    conditions : list of Condition
    seed : int
        Seed of the masked-LM masks.
    """
    sums = AblationSums(loaded, conditions, seed)
    for batch in batches:
        sums.add(batch)
    return sums.table()


@dataclass
class AblationOptions:
    """Options of the ``ablation`` analysis."""

    ablation_sequences: int = option(64, help="Sequences of the corpus (seeded sample) re-run for each "
                                     "ablation.")
    ablation_top: int = option(2, help="Most typical heads of each cluster also switched off one at a time.")


def merge_sums(mine: AblationSums | None, theirs: AblationSums | None) -> AblationSums | None:
    """The reduction of :class:`PatternAblation`'s ``sums_``: either side may not have run yet."""
    if mine is None or theirs is None:
        return theirs if mine is None else mine
    return mine.merge(theirs)


@register
class PatternAblation(Analysis):
    """Switch off each cluster of heads (and its most typical heads alone) and measure what the model loses."""

    # declared state (add_state in start)
    sums_: AblationSums | None
    sequences_: int

    name = "ablation"
    report_order = 64
    description = "switch off each head cluster (gates on head outputs) and measure MLM loss or hidden drift"
    Options = AblationOptions
    after = ("distance",)

    second_pass = True

    def start(self, ctx: RunContext) -> None:
        if self.options.ablation_sequences < 1:
            raise ValueError(f"ablation_sequences must be at least 1, got {self.options.ablation_sequences}")
        if self.options.ablation_top < 0:
            raise ValueError(f"ablation_top must be >= 0, got {self.options.ablation_top}")
        # The pass's sums live in the object that runs it (it holds the model), created once the conditions
        # are known: merged by a reduction of their own until the engine runs interventions itself.
        self.add_state("sums_", None, reduce=merge_sums)
        self.add_state("sequences_", 0)

    def second_pass_examples(self, ctx: RunContext, results: dict[str, AnalysisResult]) -> Iterator[Example]:
        """A seeded sample of the corpus, drawn once the main pass has counted it."""
        seed = int(ctx.config.seed)
        conditions = conditions_from_clusters(results["distance"].heads, self.options.ablation_top, seed)
        self.sums_ = AblationSums(ctx.loaded, conditions, seed)
        total = int(ctx.manifest.counts.get("examples", 0))
        n = min(self.options.ablation_sequences, total)
        picked = set(np.random.default_rng(seed).choice(total, size=n, replace=False).tolist())
        self.second_pass_total = n
        # The corpus is streamed once more, keeping only the drawn examples (memory bounded by the sample).
        return (ex for k, ex in enumerate(ctx.corpus.examples()) if k in picked)

    def update_second_pass(self, ctx: RunContext, batch: Batch) -> None:
        assert self.sums_ is not None, "second_pass_examples comes first"
        self.sums_.add(batch, quiet=ctx.config.quiet)
        self.sequences_ += batch.size

    def finalize(self, ctx: RunContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        if self.sums_ is None:
            raise RuntimeError("the ablation pass did not run (the runner drives it before finalize)")
        table = self.sums_.table()
        summary = {"metric": table.attrs["metric"], "sequences": self.sequences_, "tokens": table.attrs["tokens"],
                   "loss_tokens": table.attrs["loss_tokens"], "conditions": len(table) - 1,
                   "mask_rate": MASK_RATE if table.attrs["metric"] == "mlm_loss" else None}
        return AnalysisResult(name=self.name, tables={"ablation": table}, summary=summary)

    @staticmethod
    def report(run: RunResult, figures: Path) -> ReportSection | None:
        from headscope.report.section import ReportSection, figure_html

        if "ablation" not in run.tables:
            return None
        table = run.tables["ablation"]
        metric = run.run.get("analyses", {}).get("ablation", {}).get("metric", "?")
        name = _ablation_figure(table, metric, figures)
        clusters = table[table["kind"] == "cluster"]
        rows = "".join(f"<tr><td>{int(r.cluster)}</td><td>{html.escape(str(r.pattern))}</td><td>{int(r.n_heads)}"
                       f"</td><td>{r.effect:.4g}</td></tr>" for r in clusters.itertuples())
        what = ("increase of the LM loss" if "loss" in metric
                else "drift of the final hidden states (1 - cosine)")
        body = (f"<p>Each cluster of heads switched off by gates on the heads' outputs, over a seeded subset of "
                f"the corpus; effect = {what}"
                f" ({html.escape(metric)}). Grey: the same number of random heads from outside the cluster.</p>"
                f"<table><tr><th>cluster</th><th>pattern</th><th>heads</th><th>effect</th></tr>{rows}</table>"
                + figure_html(name, "Ablation effect per cluster"))
        return ReportSection(key="ablation", title="Ablation of head clusters", html=body, figures=[name])


def _ablation_figure(table: pd.DataFrame, metric: str, figures: Path) -> str:
    import matplotlib.pyplot as plt

    from headscope.report.figures import COLUMN_WIDTH, save_figure

    clusters = table[table["kind"] == "cluster"].sort_values("cluster")
    random = table[table["kind"] == "random"].set_index("cluster")["effect"]
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.2), layout="constrained")
    x = np.arange(len(clusters))
    ax.bar(x - 0.2, clusters["effect"], width=0.4, label="cluster off", color="tab:blue")
    ax.bar(x + 0.2, random.reindex(clusters["cluster"]).to_numpy(float), width=0.4, label="random heads off",
           color="lightgrey")
    ax.set_xticks(x, [f"{c}: {p} ({n})" for c, p, n in zip(clusters["cluster"], clusters["pattern"],
                                                           clusters["n_heads"], strict=True)],
                  rotation=45, ha="right", fontsize=5)
    ax.set_ylabel("loss increase" if "loss" in metric else "hidden drift (1 - cos)")
    ax.set_title("Switching off each cluster")
    ax.legend(fontsize=5)
    save_figure(fig, figures, "ablation_clusters")
    return "ablation_clusters"
