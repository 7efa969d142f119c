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

import contextlib
import dataclasses
import html
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch

from headscope.analyses.base import Analysis, AnalysisResult, head_frame
from headscope.analyses.importance import contrastive_ids, loss_kind, plain_batch, sample_examples, split_halves
from headscope.analyses.registry import register
from headscope.analyses.stats import mean_or_nan
from headscope.config import check_choices, option
from headscope.engine.capture import eager_attention
from headscope.model.losses import CONTRASTIVE_TEMPERATURE, contrastive_loss, lm_labels

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from headscope.engine.batch import Batch
    from headscope.engine.context import RunContext
    from headscope.engine.results import RunResult
    from headscope.model.encode import Example
    from headscope.model.load import LoadedModel
    from headscope.report.section import ReportSection


def separator_id(tok: PreTrainedTokenizerFast) -> int | None:
    """The separator: ``sep_token_id``, else ``eos_token_id`` (None when the tokenizer has neither)."""
    return tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id


@contextlib.contextmanager
def differentiable_inputs(loaded: LoadedModel) -> Iterator[None]:
    """Make the input embeddings require grad (the loaded model is frozen), so the attention is in the graph."""
    def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        return output.requires_grad_(True) if not output.requires_grad else output

    handle = loaded.model.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def forward_with_attention(loaded: LoadedModel, batch: Batch, kind: str, seed: int
                           ) -> tuple[torch.Tensor, float, int, list[tuple[tuple[torch.Tensor, ...],
                                                                            torch.Tensor, torch.Tensor]]]:
    """The objective to backpropagate, the summed loss, its terms, and (attentions, ids, mask) per forward.

    ``attentions`` holds one [batch, head, query, key] tensor per layer, each with ``retain_grad`` on; ``ids``
    and ``mask`` ([batch, seq]) are the inputs those attentions were computed on.
    """
    if kind == "contrastive_loss":
        cls_id, sep_id, pad_id = contrastive_ids(loaded.tokenizer)
        halves = split_halves(batch, cls_id, sep_id, pad_id)
        pooled, seen = [], []
        for x in halves:
            out = loaded.base(**x, output_attentions=True)
            m = x["attention_mask"].to(out.last_hidden_state.dtype)[..., None]
            pooled.append((out.last_hidden_state * m).sum(1) / m.sum(1).clamp_min(1.0))
            seen.append((tuple(out.attentions), x["input_ids"], x["attention_mask"].bool()))
        loss = contrastive_loss(pooled[0], pooled[1], CONTRASTIVE_TEMPERATURE)
        objective = loss / max(batch.size, 1)
        terms = batch.size
    else:
        inputs, labels = lm_labels(loaded, batch, seed)
        out = loaded.model(**inputs, output_attentions=True)
        logits = out.logits.float() if out.logits.dtype != torch.float64 else out.logits
        if loaded.info.is_causal:
            logits, labels = logits[:, :-1], labels[:, 1:]
        tok = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                ignore_index=-100, reduction="none").view(labels.shape)
        counts = (labels != -100).sum(1)
        loss = tok.sum()
        objective = (tok.sum(1) / counts.clamp_min(1).to(tok.dtype)).sum()
        terms = int(counts.sum())
        seen = [(tuple(out.attentions), batch.input_ids, batch.mask.bool())]
    for atts, _, _ in seen:
        if not atts or any(a is None for a in atts):
            raise RuntimeError(f"{loaded.info.name}: the model returned no attention weights with "
                               "output_attentions=True (eager attention)")
        for a in atts:
            a.retain_grad()
    return objective, float(loss.detach()), terms, seen


def sep_statistics(atts: tuple[torch.Tensor, ...], ids: torch.Tensor, mask: torch.Tensor, sep_id: int,
                   causal: bool) -> dict[str, np.ndarray]:
    """Sums of one forward's attention to the separators and of ``|dL/dA|`` at them (after ``backward``).

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
    for layer, a in enumerate(atts):
        if a.grad is None:
            raise RuntimeError("the attention weights got no gradient (is the loss connected to them?)")
        w = a.detach().to(torch.float64)
        g = a.grad.detach().to(torch.float64).abs()
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


def sep_gradient_batch(loaded: LoadedModel, batch: Batch, kind: str, seed: int, append_eos: bool = False
                       ) -> tuple[dict[str, np.ndarray], float, int]:
    """One batch of the pass: the summed statistics of :func:`sep_statistics`, the summed loss and its terms.

    With ``append_eos`` the EOS token is appended to each sequence first (:func:`with_eos`).
    """
    sep_id = separator_id(loaded.tokenizer)
    if sep_id is None:
        raise ValueError(f"{loaded.info.name}: the tokenizer has neither a SEP nor an EOS token")
    total: dict[str, np.ndarray] = {}
    with torch.inference_mode(False), torch.enable_grad(), eager_attention(loaded), differentiable_inputs(loaded):
        batch = plain_batch(batch)
        if append_eos:
            batch = with_eos(batch, int(sep_id), int(loaded.info.max_length), loaded.tokenizer.bos_token_id)
        objective, loss, terms, seen = forward_with_attention(loaded, batch, kind, seed)
        objective.backward()
        causal = bool(loaded.info.is_causal) and kind != "contrastive_loss"
        for atts, ids, mask in seen:
            stats = sep_statistics(atts, ids, mask, int(sep_id), causal)
            for key, value in stats.items():
                total[key] = total[key] + value if key in total else value
    total["examples"] = np.array(float(batch.size))
    return total, loss, terms


@dataclass
class SepGradientOptions:
    """Options of the ``sep_gradient`` analysis."""

    sep_gradient_sequences: int = option(256, help="Sequences of the corpus (seeded sample) for the attention "
                                         "gradients at [SEP] (default 256).")
    sep_gradient_append_eos: Literal["auto", "yes", "no"] = option(
        "auto", help="Insert EOS at the start of each sequence, as the end of a previous document in packed "
        "training data: auto (for decoder LMs, whose packed raw text has none), yes or no (default: auto).")

    def __post_init__(self) -> None:
        check_choices(self)


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
    second_pass = True

    def start(self, ctx: RunContext) -> None:
        if self.options.sep_gradient_sequences < 1:
            raise ValueError(f"sep_gradient_sequences must be at least 1, got {self.options.sep_gradient_sequences}")
        check_choices(self.options)  # again: the options may have been changed since
        self.kind = loss_kind(ctx.loaded)
        self.append_eos = (self.options.sep_gradient_append_eos == "yes"
                           or (self.options.sep_gradient_append_eos == "auto" and ctx.info.is_causal))
        if self.append_eos and ctx.loaded.tokenizer.eos_token_id is None:
            raise ValueError(f"{ctx.info.name}: sep_gradient_append_eos needs an EOS token and the tokenizer has none")
        if separator_id(ctx.loaded.tokenizer) is None:
            raise ValueError(f"{ctx.info.name}: sep_gradient needs a SEP or EOS token and the tokenizer has none")
        info = ctx.info
        self.add_state("attention_", np.zeros((info.n_layers, info.n_heads)))
        self.add_state("gradient_", np.zeros((info.n_layers, info.n_heads)))
        for name in ("rows_", "pairs_", "sequences_", "skipped_", "examples_", "loss_", "terms_", "batches_"):
            self.add_state(name, np.zeros(1))

    def second_pass_examples(self, ctx: RunContext, results: dict[str, AnalysisResult]) -> Iterator[Example]:
        self.second_pass_total = min(self.options.sep_gradient_sequences,
                                     int(ctx.manifest.counts.get("examples", 0)))
        return sample_examples(ctx, self.options.sep_gradient_sequences, salt=19)

    def update_second_pass(self, ctx: RunContext, batch: Batch) -> None:
        stats, loss, terms = sep_gradient_batch(ctx.loaded, batch, self.kind, int(ctx.config.seed),
                                                self.append_eos)
        self.add(stats, loss, terms)

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

    def finalize(self, ctx: RunContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        if self.batches_[0] == 0:
            raise RuntimeError("the sep_gradient pass saw no batch")
        att, grad = self.values()
        n_layers, n_heads = att.shape
        heads = head_frame({"sep_attention": att, "sep_gradient": grad}, n_layers, n_heads)
        table = heads.copy()
        table["rows"] = int(self.rows_[0])
        table["pairs"] = int(self.pairs_[0])
        table["loss"] = self.kind
        tok = ctx.loaded.tokenizer
        sep_id = separator_id(tok)
        assert sep_id is not None  # start() refuses a tokenizer without one
        summary = {"loss": self.kind, "mean_loss": float(self.loss_[0] / max(self.terms_[0], 1)),
                   "batches": int(self.batches_[0]), "terms": int(self.terms_[0]),
                   "sequences": int(self.examples_[0]),
                   "encoded_with_separator": int(self.sequences_[0]), "skipped_sequences": int(self.skipped_[0]),
                   "rows": int(self.rows_[0]), "pairs": int(self.pairs_[0]), "appended_eos": self.append_eos,
                   "separator_token": tok.convert_ids_to_tokens(int(sep_id)), "separator_id": int(sep_id),
                   "sep_attention": "mean over real query rows of the summed attention to the separator columns",
                   "sep_gradient": "mean over (query row, separator) pairs of |dL/dA[i, sep]|; L the mean loss "
                                   "of each sequence (contrastive: the batch's mean)"}
        if self.kind == "contrastive_loss":
            summary["temperature"] = CONTRASTIVE_TEMPERATURE
        return AnalysisResult(name=self.name, heads=heads, tables={"sep_gradient": table}, summary=summary)

    @staticmethod
    def report(run: RunResult, figures: Path) -> ReportSection | None:
        from headscope.report.section import ReportSection, figure_html

        if "sep_gradient" not in run.tables:
            return None
        table = run.tables["sep_gradient"]
        loss = str(table["loss"].iloc[0]) if len(table) else "?"
        name = _sep_gradient_figure(table, figures)
        per_layer = table.groupby("layer")[["sep_attention", "sep_gradient"]].mean()
        rows = "".join(f"<tr><td>{int(layer)}</td><td>{r.sep_attention:.3g}</td><td>{r.sep_gradient:.3g}</td></tr>"
                       for layer, r in per_layer.iterrows())
        body = ("<p>Per layer, the mean attention to [SEP] (the separator, or EOS) and the mean gradient magnitude "
                f"|dL/dA| of the loss ({html.escape(loss)}) with respect to that attention, as Clark et al. "
                "(2019) Figure 3. Averaged over the layer's heads.</p>"
                f"<table><tr><th>layer</th><th>attention to [SEP]</th><th>|dL/dA| at [SEP]</th></tr>{rows}</table>"
                + figure_html(name, "Attention to [SEP] and its gradient, per layer"))
        return ReportSection(key="sep_gradient", title="Attention to [SEP] and its gradient", html=body,
                             figures=[name])


def _sep_gradient_figure(table: pd.DataFrame, figures: Path) -> str:
    import matplotlib.pyplot as plt

    from headscope.report.figures import COLUMN_WIDTH, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(2 * COLUMN_WIDTH, 2.2), layout="constrained")
    for ax, column, title in zip(axes, ("sep_attention", "sep_gradient"),
                                 ("Avg. attention to [SEP]", "Avg. |dL/dA| at [SEP]"), strict=True):
        ax.scatter(table["layer"], table[column], s=6, color="0.7", label="heads")
        mean = table.groupby("layer")[column].mean()
        ax.plot(mean.index, mean.to_numpy(float), marker="o", color="C0", label="layer mean")
        ax.set_xlabel("layer")
        ax.set_title(title)
    axes[0].legend(frameon=False)
    save_figure(fig, figures, "sep_gradient_layers")
    return "sep_gradient_layers"
