"""Head importance as Michel et al. (2019): ``I_h = E |dL/dxi_h|``, xi_h a gate on head h's output.

A second pass over a seeded sample of the corpus (``importance_sequences``) runs the model with
:class:`headscope.model.gates.HeadGates` whose values require grad; each batch adds ``|dL/dxi|`` of its mean
loss, as transformers' ``bertology`` script (the estimate therefore depends on the batch size). The loss:

- ``mlm_loss``: an encoder with a trained LM head, masked-LM over a seeded 15% of the non-special tokens;
- ``lm_loss``: a decoder LM, next-token loss over real tokens;
- ``contrastive_loss``: an encoder without LM head (sentence-embedding models such as the packaged MiniLM),
  in-batch InfoNCE (cosine / 0.05) between the mean-pooled embeddings of the two halves of each example,
  each half encoded on its own as ``[CLS] half [SEP]``. The halves are segment A and segment B when the
  example is a pair of consecutive segments, else the first and second half of its pieces.

Normalisation (both on by default, as ``bertology``): each layer divided by its L2 norm, then min-max over
the model. Writes ``importance.csv`` and the heads columns ``importance`` and ``importance_raw``.

``importance_ranking effects`` (issue 39): the raw importance is instead ``head_effects``' exact ablation
effect of each head on the loss (that analysis must be in the run; no gradient pass), normalised the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from headscope.analyses.base import Analysis, AnalysisResult, head_frame
from headscope.analyses.labels.importance import LABELS as ATLAS_LABELS
from headscope.analyses.registry import register
from headscope.config import check_choices, check_minimum, option
from headscope.engine.forwards import CONTRASTIVE_TEMPERATURE, CorpusRows, GateGradient, Pass

if TYPE_CHECKING:
    from headscope.config import RunConfig
    from headscope.engine.batch import Batch
    from headscope.engine.context import AnalysisContext
    from headscope.engine.forwards import Forward, ForwardOutput, Generate


def normalize_importance(raw: np.ndarray, layers: bool = True, overall: bool = True) -> np.ndarray:
    """``bertology``'s normalisation: each layer by its L2 norm (exponent 2), then min-max over the model.

    Parameters
    ----------
    raw : ndarray of shape (n_layers, n_heads)
    """
    out = np.asarray(raw, dtype=np.float64).copy()
    if layers:
        out /= np.sqrt((out ** 2).sum(-1, keepdims=True)) + 1e-20
    if overall:
        span = out.max() - out.min()
        out = (out - out.min()) / span if span > 0 else np.zeros_like(out)
    return out


def sample_rows(ctx: AnalysisContext, n: int, stream: str) -> CorpusRows:
    """A seeded sample of ``n`` of the corpus's examples, drawn from ``stream`` (:mod:`headscope.seeds`)."""
    n = min(n, ctx.examples)
    picked = ctx.seeds.rng(stream).choice(ctx.examples, size=n, replace=False)
    return CorpusRows(frozenset(int(i) for i in picked))


@dataclass(frozen=True)
class ImportanceOptions:
    """Options of the ``importance`` analysis."""

    importance_sequences: int = option(256, help="Sequences of the corpus (seeded sample) for the gradients "
                                       "(default 256).")
    importance_normalize_layers: bool = option(True, help="Divide each layer's importances by their L2 norm, "
                                               "as bertology (default on).")
    importance_normalize_global: bool = option(True, help="Then min-max the importances over the model "
                                               "(default on).")
    importance_ranking: Literal["gradient", "effects"] = option(
        "gradient", help="gradient: Michel et al.'s E|dL/dxi| (default); effects: head_effects' exact ablation "
        "effect of each head (needs head_effects in --analyses; no gradient pass).")

    def __post_init__(self) -> None:
        check_choices(self)
        check_minimum(self, 1, "importance_sequences")


@register
class HeadImportance(Analysis):
    """Michel et al.'s gradient importance of each head, ``E |dL/dxi_h|``."""

    # declared state (add_state in start)
    grad_abs_: np.ndarray
    loss_: np.ndarray
    terms_: np.ndarray
    batches_: np.ndarray

    name = "importance"
    report_order = 65
    atlas_labels = ATLAS_LABELS
    description = "head importance E|dL/dxi| (Michel et al. 2019): MLM, next-token or contrastive loss"
    Options = ImportanceOptions
    intervenes = True
    after_if_run = ("head_effects",)

    def check_run(self, config: RunConfig) -> None:
        if self.options.importance_ranking == "effects" and "head_effects" not in config.analyses:
            raise ValueError("importance_ranking effects reads head_effects' exact effects: add head_effects to "
                             "--analyses")

    def start(self, ctx: AnalysisContext) -> None:
        self.kind = ctx.require_loss()
        info = ctx.info
        self.add_state("grad_abs_", np.zeros((info.n_layers, info.n_heads)))
        self.add_state("loss_", np.zeros(1))
        self.add_state("terms_", np.zeros(1))
        self.add_state("batches_", np.zeros(1))

    def planned_forwards(self, ctx: AnalysisContext, sequences: int) -> int:
        if self.options.importance_ranking == "effects":
            return 0  # head_effects' effects, no pass of its own
        return 3 * min(self.options.importance_sequences, sequences)  # a forward and a backward each

    def passes(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> Iterator[Pass]:
        """One pass over a seeded sample: the gradient of each batch's mean loss at the (open) gates (none when
        the ranking is head_effects' exact effects)."""
        if self.options.importance_ranking == "effects":
            # No forward: the examples head_effects measured on are what this importance rests on (counted as
            # the analysis's input).
            held = results["head_effects"].summary["held_out_examples"] if "head_effects" in results else []
            yield Pass("importance: head_effects' held-out sequences", CorpusRows(frozenset(held)), [],
                       progress=False)
            return
        yield Pass("importance", sample_rows(ctx, self.options.importance_sequences, "importance.sample"),
                   [GateGradient()])

    def update_pass(self, batch: Batch, forward: Forward | Generate, out: ForwardOutput) -> None:
        assert out.gate_grad is not None
        self.grad_abs_ += np.abs(out.gate_grad)
        self.loss_ += out.loss
        self.terms_ += out.terms
        self.batches_ += 1

    def finalize(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        o = self.options
        if o.importance_ranking == "effects":
            return self._from_effects(ctx, results)
        if self.batches_[0] == 0:
            raise RuntimeError("the importance pass saw no batch")
        raw = self.grad_abs_ / self.batches_[0]
        norm = normalize_importance(raw, o.importance_normalize_layers, o.importance_normalize_global)
        n_layers, n_heads = raw.shape
        heads = head_frame({"importance": norm, "importance_raw": raw}, n_layers, n_heads)
        table = heads.copy()
        table["loss"] = self.kind
        summary = {"loss": self.kind, "mean_loss": float(self.loss_[0] / max(self.terms_[0], 1)),
                   "batches": int(self.batches_[0]), "terms": int(self.terms_[0]),
                   "normalize_layers": bool(o.importance_normalize_layers),
                   "normalize_global": bool(o.importance_normalize_global), "ranking": "gradient"}
        if self.kind == "contrastive_loss":
            summary["temperature"] = CONTRASTIVE_TEMPERATURE
        return AnalysisResult(name=self.name, heads=heads, tables={"importance": table}, summary=summary)

    def _from_effects(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        """The importance as head_effects' exact effects (raw), normalised as the gradient importance."""
        if "head_effects" not in results:
            raise RuntimeError("importance_ranking effects: head_effects did not finalize before importance")
        o = self.options
        effects = results["head_effects"]
        assert effects.heads is not None and "effect" in effects.heads
        frame = effects.heads.sort_values(["layer", "head"])
        raw = frame["effect"].to_numpy(float).copy().reshape(ctx.info.n_layers, ctx.info.n_heads)  # writable
        norm = normalize_importance(raw, o.importance_normalize_layers, o.importance_normalize_global)
        n_layers, n_heads = raw.shape
        heads = head_frame({"importance": norm, "importance_raw": raw}, n_layers, n_heads)
        table = heads.copy()
        table["loss"] = self.kind
        summary = {"loss": self.kind, "ranking": "effects",
                   "source": f"head_effects: exact {effects.summary.get('ablation')}-ablation effect on the loss "
                             f"over {effects.summary.get('held_out_sequences')} held-out sequences",
                   "normalize_layers": bool(o.importance_normalize_layers),
                   "normalize_global": bool(o.importance_normalize_global)}
        return AnalysisResult(name=self.name, heads=heads, tables={"importance": table}, summary=summary)
