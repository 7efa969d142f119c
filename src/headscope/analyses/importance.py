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
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from headscope.analyses.base import Analysis, AnalysisResult, head_frame
from headscope.analyses.registry import register
from headscope.config import option
from headscope.model.gates import HeadGates
from headscope.model.losses import CONTRASTIVE_TEMPERATURE, contrastive_loss, lm_forward, lm_labels, mean_pool

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from headscope.engine.batch import Batch
    from headscope.engine.context import RunContext
    from headscope.engine.results import RunResult
    from headscope.model.encode import Example
    from headscope.model.load import LoadedModel
    from headscope.report.section import ReportSection


def loss_kind(loaded: LoadedModel) -> str:
    """``mlm_loss``, ``lm_loss`` or ``contrastive_loss`` for this model.

    Raises
    ------
    ValueError
        When no loss can be computed (a masked LM whose tokenizer has no mask token, or a decoder without LM
        head), naming what is missing.
    """
    info = loaded.info
    if info.has_lm_head and info.is_causal:
        return "lm_loss"
    if info.has_lm_head:
        if loaded.tokenizer.mask_token_id is None:
            raise ValueError(f"{info.name}: the masked-LM loss needs a mask token and the tokenizer has none")
        return "mlm_loss"
    if info.is_causal:
        raise ValueError(f"{info.name}: a decoder without an LM head has no loss for head importance")
    cls_id, sep_id, _ = frame_ids(loaded.tokenizer)
    if cls_id is None or sep_id is None:
        raise ValueError(f"{info.name}: no LM head, and the contrastive loss needs CLS/BOS and SEP/EOS tokens to "
                         "encode each half on its own")
    return "contrastive_loss"


def frame_ids(tok: PreTrainedTokenizerFast) -> tuple[int | None, int | None, int]:
    """The ids that open (CLS, else BOS) and close (SEP, else EOS) a sequence, and the pad id (0 if none)."""
    first = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
    last = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
    return first, last, int(tok.pad_token_id) if tok.pad_token_id is not None else 0


def contrastive_ids(tok: PreTrainedTokenizerFast) -> tuple[int, int, int]:
    """:func:`frame_ids` for the contrastive loss, which needs both (:func:`loss_kind` checks that first)."""
    first, last, pad = frame_ids(tok)
    if first is None or last is None:
        raise ValueError("the contrastive loss needs CLS/BOS and SEP/EOS tokens to encode each half on its own")
    return first, last, pad


def plain_batch(batch: Batch) -> Batch:
    """A copy of ``batch`` whose tensors are ordinary ones (the runner's pass builds inference tensors)."""
    changes = {f.name: getattr(batch, f.name).clone() for f in dataclasses.fields(batch)
               if isinstance(getattr(batch, f.name), torch.Tensor)}
    return dataclasses.replace(batch, **changes)


def split_halves(batch: Batch, cls_id: int, sep_id: int, pad_id: int
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Two batches of inputs, ``[CLS] half [SEP]``, for the two halves of each example's non-special pieces.

    A half is segment A / segment B when the example has both, else the first / second half of the pieces
    (the first gets the extra piece).
    """
    content = (batch.mask & ~batch.is_cls & ~batch.is_sep)
    halves: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
    for row in range(batch.size):
        where = torch.nonzero(content[row]).flatten()
        seg = batch.segment[row, where]
        if bool((seg == 0).any()) and bool((seg == 1).any()):
            parts = (where[seg == 0], where[seg == 1])
        else:
            cut = (where.numel() + 1) // 2
            parts = (where[:cut], where[cut:])
        for k in (0, 1):
            ids = batch.input_ids[row, parts[k]]
            halves[k].append(torch.cat([ids.new_tensor([cls_id]), ids, ids.new_tensor([sep_id])]))
    out = []
    for seqs in halves:
        n = max(s.numel() for s in seqs)
        ids = torch.full((len(seqs), n), pad_id, dtype=torch.int64, device=batch.input_ids.device)
        mask = torch.zeros_like(ids)
        for r, s in enumerate(seqs):
            ids[r, :s.numel()] = s
            mask[r, :s.numel()] = 1
        inputs = {"input_ids": ids, "attention_mask": mask}
        if batch.token_type_ids is not None:
            inputs["token_type_ids"] = torch.zeros_like(ids)
        out.append(inputs)
    return out[0], out[1]


def batch_loss(loaded: LoadedModel, batch: Batch, kind: str, seed: int) -> tuple[torch.Tensor, int]:
    """The summed loss of ``batch`` (a 0-d tensor in the graph) and how many terms it sums."""
    if kind == "contrastive_loss":
        cls_id, sep_id, pad_id = contrastive_ids(loaded.tokenizer)
        a, b = split_halves(batch, cls_id, sep_id, pad_id)
        pooled = [mean_pool(loaded.base(**x).last_hidden_state, x["attention_mask"]) for x in (a, b)]
        return contrastive_loss(pooled[0], pooled[1], CONTRASTIVE_TEMPERATURE), batch.size
    inputs, labels = lm_labels(loaded, batch, seed)
    _, loss, n = lm_forward(loaded, inputs, labels, loaded.info.is_causal)
    assert loss is not None
    return loss, n


def gate_gradient(loaded: LoadedModel, batch: Batch, kind: str, seed: int, gate_values: torch.Tensor | None = None
                  ) -> tuple[np.ndarray, float, int]:
    """``dL/dxi`` of the batch's mean loss at the gates ``gate_values`` (all open by default).

    Returns
    -------
    grad : ndarray of shape (n_layers, n_heads)
    loss_sum : float
        The summed loss.
    terms : int
        Tokens (LM losses) or pairs (contrastive) in the sum.
    """
    info = loaded.info
    with torch.inference_mode(False), torch.enable_grad():
        batch = plain_batch(batch)
        with HeadGates(loaded.model, info.n_layers, info.n_heads) as gates:
            if gate_values is not None:
                gates.values = gate_values.detach().clone().to(gates.values)
            gates.values.requires_grad_(True)
            loss, n = batch_loss(loaded, batch, kind, seed)
            (loss / max(n, 1)).backward()
            assert gates.values.grad is not None  # the gates require grad and are in the graph
            grad = gates.values.grad.detach().double().cpu().numpy()
    return grad, float(loss.detach()), n


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


def sample_examples(ctx: RunContext, n: int, salt: int) -> Iterator[Example]:
    """A seeded sample of ``n`` examples of the corpus, streamed again (``salt`` separates samples)."""
    total = int(ctx.manifest.counts.get("examples", 0))
    n = min(n, total)
    picked = set(np.random.default_rng([int(ctx.config.seed), salt]).choice(total, size=n, replace=False).tolist())
    return (ex for k, ex in enumerate(ctx.corpus.examples()) if k in picked)


@dataclass
class ImportanceOptions:
    """Options of the ``importance`` analysis."""

    importance_sequences: int = option(256, help="Sequences of the corpus (seeded sample) for the gradients "
                                       "(default 256).")
    importance_normalize_layers: bool = option(True, help="Divide each layer's importances by their L2 norm, "
                                               "as bertology (default on).")
    importance_normalize_global: bool = option(True, help="Then min-max the importances over the model "
                                               "(default on).")


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
    description = "head importance E|dL/dxi| (Michel et al. 2019): MLM, next-token or contrastive loss"
    Options = ImportanceOptions
    second_pass = True

    def start(self, ctx: RunContext) -> None:
        if self.options.importance_sequences < 1:
            raise ValueError(f"importance_sequences must be at least 1, got {self.options.importance_sequences}")
        self.kind = loss_kind(ctx.loaded)
        info = ctx.info
        self.add_state("grad_abs_", np.zeros((info.n_layers, info.n_heads)))
        self.add_state("loss_", np.zeros(1))
        self.add_state("terms_", np.zeros(1))
        self.add_state("batches_", np.zeros(1))

    def second_pass_examples(self, ctx: RunContext, results: dict[str, AnalysisResult]) -> Iterator[Example]:
        self.second_pass_total = min(self.options.importance_sequences, int(ctx.manifest.counts.get("examples", 0)))
        return sample_examples(ctx, self.options.importance_sequences, salt=14)

    def update_second_pass(self, ctx: RunContext, batch: Batch) -> None:
        grad, loss, n = gate_gradient(ctx.loaded, batch, self.kind, int(ctx.config.seed))
        self.grad_abs_ += np.abs(grad)
        self.loss_ += loss
        self.terms_ += n
        self.batches_ += 1

    def finalize(self, ctx: RunContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        if self.batches_[0] == 0:
            raise RuntimeError("the importance pass saw no batch")
        raw = self.grad_abs_ / self.batches_[0]
        o = self.options
        norm = normalize_importance(raw, o.importance_normalize_layers, o.importance_normalize_global)
        n_layers, n_heads = raw.shape
        heads = head_frame({"importance": norm, "importance_raw": raw}, n_layers, n_heads)
        table = heads.copy()
        table["loss"] = self.kind
        summary = {"loss": self.kind, "mean_loss": float(self.loss_[0] / max(self.terms_[0], 1)),
                   "batches": int(self.batches_[0]), "terms": int(self.terms_[0]),
                   "normalize_layers": bool(o.importance_normalize_layers),
                   "normalize_global": bool(o.importance_normalize_global)}
        if self.kind == "contrastive_loss":
            summary["temperature"] = CONTRASTIVE_TEMPERATURE
        return AnalysisResult(name=self.name, heads=heads, tables={"importance": table}, summary=summary)

    @staticmethod
    def report(run: RunResult, figures: Path) -> ReportSection | None:
        from headscope.report.section import ReportSection, figure_html

        if "importance" not in run.tables:
            return None
        table = run.tables["importance"]
        loss = str(table["loss"].iloc[0]) if len(table) else "?"
        name = _importance_figure(table, figures)
        top = table.sort_values("importance", ascending=False).head(10)
        rows = "".join(f"<tr><td>L{int(r.layer)}H{int(r.head)}</td><td>{r.importance:.3g}</td>"
                       f"<td>{r.importance_raw:.3g}</td></tr>" for r in top.itertuples())
        body = (f"<p>Head importance E|dL/d&xi;<sub>h</sub>| (Michel et al. 2019), loss {html.escape(loss)}, "
                "normalised as transformers' bertology script.</p>"
                f"<table><tr><th>head</th><th>importance</th><th>raw</th></tr>{rows}</table>"
                + figure_html(name, "Head importance"))
        return ReportSection(key="importance", title="Head importance (gradients)", html=body, figures=[name])


def _importance_figure(table: pd.DataFrame, figures: Path) -> str:
    import matplotlib.pyplot as plt

    from headscope.report.figures import COLUMN_WIDTH, save_figure

    grid = table.pivot(index="layer", columns="head", values="importance").to_numpy(float)
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.4), layout="constrained")
    im = ax.imshow(grid, aspect="auto", cmap="viridis", origin="lower")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("Head importance")
    fig.colorbar(im, ax=ax)
    save_figure(fig, figures, "importance_heads")
    return "importance_heads"
