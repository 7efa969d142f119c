"""Attention to [SEP] and the gradient of the loss with respect to it, per head (Clark et al. 2019, Fig. 3).

A second pass over a seeded sample of the corpus (``sep_gradient_sequences``) runs the model with eager
attention and ``output_attentions=True``, keeps the gradient of each returned attention tensor
``A`` (shape [batch, head, query, key]) and backpropagates the loss. The loss is the one of
:mod:`headscope.analyses.importance` (:func:`~headscope.analyses.importance.loss_kind`):

- ``mlm_loss`` (an encoder with an LM head, seeded 15% masking) and ``lm_loss`` (a decoder LM, next-token):
  each sequence's **mean** token loss, summed over the batch, so that each sequence's gradient is the
  gradient of its own mean loss and the statistics do not depend on the batch size or on padding;
- ``contrastive_loss`` (an encoder without LM head): the in-batch InfoNCE of importance, divided by the
  batch size. Its in-batch negatives make it depend on which sequences share a batch; the statistics are
  taken over the two half inputs ``[CLS] half [SEP]`` that the loss encodes.

The separator is the tokenizer's ``sep_token_id``, else its ``eos_token_id``: every real (non-padding)
position holding that id. A sequence without any separator is left out of both statistics and counted
(``skipped_sequences``). With ``S`` the separator positions of a sequence and ``Q`` its real query rows (for
a decoder, only rows at or after a separator, and only pairs ``j <= i``, as later keys get no attention):

- ``sep_attention`` = mean over rows ``i`` in ``Q`` of ``sum_{j in S} A[i, j]`` (a row's attention to [SEP]
  is the sum over its separator columns), pooled over all rows of all sequences;
- ``sep_gradient`` = mean over pairs ``(i, j)``, ``i`` in ``Q``, ``j`` in ``S``, of ``|dL/dA[i, j]|``, pooled
  over all pairs of all sequences.

Raw text given to a decoder LM is packed into windows without any EOS, so every sequence would be skipped.
For a decoder, ``sep_gradient_append_eos`` (``auto``: on for decoders, off for encoders) inserts the EOS token
at the start of each sequence (after its BOS), where packed training data has the end of the previous
document (:func:`with_eos`); ``summary["appended_eos"]`` records it.

Sums are float64. Writes ``sep_gradient.csv`` (per layer and head, with the row and pair counts) and the heads
columns ``sep_attention`` and ``sep_gradient``; the report plots both per layer, as Clark et al.'s Figure 3.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from headscope.analyses.base import Analysis, AnalysisResult, head_frame
from headscope.analyses.importance import sample_rows
from headscope.analyses.registry import register
from headscope.analyses.stats import mean_or_nan
from headscope.config import check_choices, check_minimum, option
from headscope.engine.forwards import CONTRASTIVE_TEMPERATURE, AttentionGradients, Pass

if TYPE_CHECKING:

    from headscope.engine.batch import Batch
    from headscope.engine.context import AnalysisContext
    from headscope.engine.forwards import Forward, ForwardOutput, Generate


def sep_statistics(atts: tuple[torch.Tensor, ...], grads: tuple[torch.Tensor, ...], ids: torch.Tensor,
                   mask: torch.Tensor, sep_id: int, causal: bool) -> dict[str, np.ndarray]:
    """Sums of one forward's attention to the separators and of ``|dL/dA|`` at them.

    ``atts`` and ``grads`` hold one [batch, head, query, key] tensor per layer: the weights and ``dL/dA``.

    Returns
    -------
    dict with ``attention`` and ``gradient`` of shape (n_layers, n_heads) (float64 sums over rows and over
    (row, separator) pairs), ``rows`` and ``pairs`` (counts, the same for every head), ``sequences`` (encoded
    sequences with a separator) and ``skipped`` (without one). The contrastive loss encodes two half
    sequences per example.
    """
    sep = (ids == sep_id) & mask                       # [b, k]
    has = sep.any(1)                                   # [b]
    n = ids.shape[1]
    pairs = mask[:, :, None] & sep[:, None, :] & has[:, None, None]   # [b, q, k]
    if causal:
        pairs = pairs & torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()[None]
    rows = pairs.any(-1)                               # [b, q]
    att = np.zeros((len(atts), atts[0].shape[1]))
    grad = np.zeros_like(att)
    pf = pairs[:, None].to(torch.float64)
    for layer, (a, da) in enumerate(zip(atts, grads, strict=True)):
        w = a.to(torch.float64)
        g = da.to(torch.float64).abs()
        att[layer] = (w * pf).sum((0, 2, 3)).cpu().numpy()
        grad[layer] = (g * pf).sum((0, 2, 3)).cpu().numpy()
    return {"attention": att, "gradient": grad, "rows": np.array(float(rows.sum())),
            "pairs": np.array(float(pairs.sum())), "sequences": np.array(float(has.sum())),
            "skipped": np.array(float((~has).sum()))}


def with_eos(batch: Batch, eos_id: int, limit: int, bos_id: int | None = None) -> Batch:
    """``batch`` with ``eos_id`` inserted at the start of every sequence (after its BOS, when all have one).

    In a decoder's packed training data a window begins where an earlier document ended; the EOS placed there
    is attended to by every later row. (An EOS after the last token would be attended to only by its own row,
    whose prediction has no target, so its gradient would be exactly zero.) Every tensor of shape
    [batch, seq] shifts right by one; when the batch is already ``limit`` wide its last column is dropped.
    """
    seq = batch.input_ids.shape[1]
    at = int(bos_id is not None and bool((batch.input_ids[:, 0] == bos_id).all()))
    width = min(seq + 1, limit)
    fills = {"input_ids": eos_id, "attention_mask": 1, "is_sep": True, "unit_of_piece": -1}
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(batch):
        value = getattr(batch, f.name)
        if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[1] == seq:
            column = torch.full_like(value[:, :1], fills.get(f.name, 0))
            changes[f.name] = torch.cat([value[:, :at], column, value[:, at:]], dim=1)[:, :width]
    changes["lengths"] = torch.clamp(batch.lengths + 1, max=width)
    return dataclasses.replace(batch, **changes)


def sep_sums(out: ForwardOutput, sep_id: int, causal: bool, examples: int) -> dict[str, np.ndarray]:
    """The summed :func:`sep_statistics` of one :class:`~headscope.engine.forwards.AttentionGradients` forward
    over ``examples``."""
    total: dict[str, np.ndarray] = {}
    for atts, grads, ids, mask in out.attention_gradients:
        stats = sep_statistics(atts, grads, ids, mask, sep_id, causal)
        for key, value in stats.items():
            total[key] = total[key] + value if key in total else value
    total["examples"] = np.array(float(examples))
    return total


@dataclass(frozen=True)
class SepGradientOptions:
    """Options of the ``sep_gradient`` analysis."""

    sep_gradient_sequences: int = option(256, help="Sequences of the corpus (seeded sample) for the attention "
                                         "gradients at [SEP] (default 256).")
    sep_gradient_append_eos: Literal["auto", "yes", "no"] = option(
        "auto", help="Insert EOS at the start of each sequence, as the end of a previous document in packed "
        "training data: auto (for decoder LMs, whose packed raw text has none), yes or no (default: auto).")

    def __post_init__(self) -> None:
        check_choices(self)
        check_minimum(self, 1, "sep_gradient_sequences")


@register
class SepGradient(Analysis):
    """Clark et al.'s Figure 3: attention to [SEP] and ``|dL/dA|`` at [SEP], per head."""

    # declared state (add_state in start)
    attention_: np.ndarray
    gradient_: np.ndarray
    rows_: np.ndarray
    pairs_: np.ndarray
    sequences_: np.ndarray
    skipped_: np.ndarray
    examples_: np.ndarray
    loss_: np.ndarray
    terms_: np.ndarray
    batches_: np.ndarray

    name = "sep_gradient"
    report_order = 67
    description = ("attention to [SEP]/EOS and mean |dL/dA| at it per head (Clark et al. 2019 Fig. 3): "
                   "MLM, next-token or contrastive loss")
    Options = SepGradientOptions
    intervenes = True

    def start(self, ctx: AnalysisContext) -> None:
        self.kind = ctx.require_loss()
        self.append_eos = (self.options.sep_gradient_append_eos == "yes"
                           or (self.options.sep_gradient_append_eos == "auto" and ctx.info.is_causal))
        codec = ctx.require_codec()
        if self.append_eos and codec.eos_id is None:
            raise ValueError(f"{ctx.info.name}: sep_gradient_append_eos needs an EOS token and the tokenizer has none")
        sep_id = codec.sep_id
        if sep_id is None:
            raise ValueError(f"{ctx.info.name}: sep_gradient needs a SEP or EOS token and the tokenizer has none")
        self.sep_id = int(sep_id)
        self.causal = bool(ctx.info.is_causal) and self.kind != "contrastive_loss"
        self._limit, self._bos_id = int(ctx.info.max_length), codec.bos_id
        info = ctx.info
        self.add_state("attention_", np.zeros((info.n_layers, info.n_heads)))
        self.add_state("gradient_", np.zeros((info.n_layers, info.n_heads)))
        for name in ("rows_", "pairs_", "sequences_", "skipped_", "examples_", "loss_", "terms_", "batches_"):
            self.add_state(name, np.zeros(1))

    def planned_forwards(self, ctx: AnalysisContext, sequences: int) -> int:
        return 3 * min(self.options.sep_gradient_sequences, sequences)  # a forward and a backward each

    def passes(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> Iterator[Pass]:
        """One pass over a seeded sample: eager attention, its weights and ``dL/dA`` (with EOS put first
        when ``append_eos``)."""
        yield Pass("sep_gradient", sample_rows(ctx, self.options.sep_gradient_sequences, "sep_gradient.sample"),
                   [AttentionGradients()], prepare=self.prepare)

    def prepare(self, batch: Batch) -> Batch:
        """The batch the model reads: with EOS first when ``append_eos`` (:func:`with_eos`)."""
        if not self.append_eos:
            return batch
        return with_eos(batch, self.sep_id, self._limit, self._bos_id)

    def update_pass(self, batch: Batch, forward: Forward | Generate, out: ForwardOutput) -> None:
        self.add(sep_sums(out, self.sep_id, self.causal, batch.size), out.loss, out.terms)

    def add(self, stats: dict[str, np.ndarray], loss: float = 0.0, terms: int = 0) -> None:
        """Add one batch's sums (from :func:`sep_gradient_batch`)."""
        self.attention_ += stats["attention"]
        self.gradient_ += stats["gradient"]
        for key in ("rows", "pairs", "sequences", "skipped", "examples"):
            getattr(self, f"{key}_")[0] += float(stats[key])
        self.loss_ += loss
        self.terms_ += terms
        self.batches_ += 1

    def values(self) -> tuple[np.ndarray, np.ndarray]:
        """The per-head ``sep_attention`` and ``sep_gradient`` (NaN when no row had a separator)."""
        return mean_or_nan(self.attention_, self.rows_[0]), mean_or_nan(self.gradient_, self.pairs_[0])

    def finalize(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        if self.batches_[0] == 0:
            raise RuntimeError("the sep_gradient pass saw no batch")
        att, grad = self.values()
        n_layers, n_heads = att.shape
        heads = head_frame({"sep_attention": att, "sep_gradient": grad}, n_layers, n_heads)
        table = heads.copy()
        table["rows"] = int(self.rows_[0])
        table["pairs"] = int(self.pairs_[0])
        table["loss"] = self.kind
        codec = ctx.require_codec()
        sep_id = self.sep_id
        summary = {"loss": self.kind, "mean_loss": float(self.loss_[0] / max(self.terms_[0], 1)),
                   "batches": int(self.batches_[0]), "terms": int(self.terms_[0]),
                   "sequences": int(self.examples_[0]),
                   "encoded_with_separator": int(self.sequences_[0]), "skipped_sequences": int(self.skipped_[0]),
                   "rows": int(self.rows_[0]), "pairs": int(self.pairs_[0]), "appended_eos": self.append_eos,
                   "separator_token": codec.token(sep_id), "separator_id": int(sep_id),
                   "sep_attention": "mean over real query rows of the summed attention to the separator columns",
                   "sep_gradient": "mean over (query row, separator) pairs of |dL/dA[i, sep]|; L the mean loss "
                                   "of each sequence (contrastive: the batch's mean)"}
        if self.kind == "contrastive_loss":
            summary["temperature"] = CONTRASTIVE_TEMPERATURE
        return AnalysisResult(name=self.name, heads=heads, tables={"sep_gradient": table}, summary=summary)
