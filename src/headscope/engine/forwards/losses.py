"""The losses the engine computes for interventions, and what they are computed on.

:func:`loss_kind` picks a model's objective: ``mlm_loss`` (an encoder with an LM head, a seeded 15% of the
non-special tokens masked), ``lm_loss`` (a decoder LM, next-token) and ``contrastive_loss`` (an encoder without
LM head: in-batch InfoNCE between the two halves of each example, each encoded as ``[CLS] half [SEP]``, the
forward written once in :func:`contrastive_forward`). :func:`batch_loss` sums it over a batch (in the graph, for
gradients), :func:`sequence_losses` per sequence.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import torch

from headscope.model.losses import (  # noqa: F401 (MASK_RATE: what analyses report)
    CONTRASTIVE_TEMPERATURE,
    MASK_RATE,
    contrastive_loss,
    lm_forward,
    lm_labels,
    mean_pool,
    token_losses,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from headscope.engine.batch import Batch
    from headscope.model.load import LoadedModel

#: The losses of a model's own LM head (:func:`loss_kind`'s others: ``contrastive_loss``).
LM_LOSSES = ("lm_loss", "mlm_loss")

#: Per encoded input: the per-layer attention weights [batch, head, query, key], the ids and the real-token mask
#: [batch, seq] they were computed on.
Seen = tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]


def has_lm_loss(loaded: LoadedModel) -> bool:
    """Whether the model's own LM head gives a loss: :func:`loss_kind` is the LM head's (an LM head, and a mask
    token unless the model is causal)."""
    try:
        return loss_kind(loaded) in LM_LOSSES
    except ValueError:
        return False


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


def separator_id(tok: PreTrainedTokenizerFast) -> int | None:
    """The separator: ``sep_token_id``, else ``eos_token_id`` (None when the tokenizer has neither)."""
    return tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id


def contrastive_forward(loaded: LoadedModel, batch: Batch, attentions: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor, list[Seen]]:
    """The contrastive loss's forward: each example's two halves encoded on their own (:func:`split_halves`),
    each mean-pooled over its real tokens.

    Returns
    -------
    left, right : Tensor of shape [batch, hidden]
        The pooled embeddings of the first and second halves (in the graph when gradients are on).
    seen : list of (attentions, ids, mask)
        With ``attentions``: per half, the per-layer weights [batch, head, query, key] (``output_attentions``)
        and the ids and real-token mask [batch, seq] they were computed on; else empty.
    """
    cls_id, sep_id, pad_id = contrastive_ids(loaded.tokenizer)
    pooled: list[torch.Tensor] = []
    seen: list[Seen] = []
    for x in split_halves(batch, cls_id, sep_id, pad_id):
        # output_attentions only when asked: a plain forward may take a faster attention kernel
        out = loaded.base(**x, output_attentions=True) if attentions else loaded.base(**x)
        pooled.append(mean_pool(out.last_hidden_state, x["attention_mask"]))
        if attentions:
            seen.append((tuple(out.attentions), x["input_ids"], x["attention_mask"].bool()))
    return pooled[0], pooled[1], seen


def batch_loss(loaded: LoadedModel, batch: Batch, kind: str, seed: int) -> tuple[torch.Tensor, int]:
    """The summed loss of ``batch`` (a 0-d tensor in the graph) and how many terms it sums."""
    if kind == "contrastive_loss":
        left, right, _ = contrastive_forward(loaded, batch)
        return contrastive_loss(left, right, CONTRASTIVE_TEMPERATURE), batch.size
    inputs, labels = lm_labels(loaded, batch, seed)
    _, loss, n = lm_forward(loaded, inputs, labels, loaded.info.is_causal)
    assert loss is not None
    return loss, n


def sequence_losses(loaded: LoadedModel, batch: Batch, kind: str, seed: int, variants: int = 1
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Each sequence's summed loss and its number of terms, as :func:`batch_loss` sums them over the batch.

    For the contrastive loss a sequence's term is its pair's InfoNCE against the other pairs of its batch
    (one term); for LM losses, its masked or next tokens. ``variants``: the batch is that many copies of one
    batch, one after the other (:func:`~headscope.engine.forwards.ablations.variant_losses`), and a pair's
    negatives are those of its own copy.

    Returns
    -------
    loss : ndarray of shape (batch,), float64
    terms : ndarray of shape (batch,), int64
    """
    F = torch.nn.functional
    if kind == "contrastive_loss":
        pooled = contrastive_forward(loaded, batch)[:2]
        if variants > 1:  # [copy, pair, hidden]: each copy's pairs against its own
            left, right = (F.normalize(p, dim=-1).reshape(variants, -1, p.shape[-1]) for p in pooled)
            sim = (left @ right.transpose(1, 2) / CONTRASTIVE_TEMPERATURE).reshape(-1, right.shape[1])
            target = torch.arange(right.shape[1], device=sim.device).repeat(variants)
        else:
            sim = F.normalize(pooled[0], dim=-1) @ F.normalize(pooled[1], dim=-1).T / CONTRASTIVE_TEMPERATURE
            target = torch.arange(sim.shape[0], device=sim.device)
        per = F.cross_entropy(sim.float(), target, reduction="none")
        return per.double().cpu().numpy(), np.ones(batch.size, dtype=np.int64)
    inputs, labels = lm_labels(loaded, batch, seed)
    per_token, labels = token_losses(loaded.model(**inputs).logits.float(), labels, loaded.info.is_causal)
    return (per_token.double().sum(-1).cpu().numpy(), (labels != -100).sum(-1).cpu().numpy().astype(np.int64))
