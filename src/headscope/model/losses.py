"""Losses of a model on a batch, shared by the analyses that run the model themselves (ablation, importance).

- :func:`mask_for_mlm`: a seeded ``MASK_RATE`` of each sequence's non-special tokens replaced by the mask token;
- :func:`lm_forward`: final hidden states and the summed token loss (masked-LM, or next-token for causal LMs);
- :func:`contrastive_loss`: in-batch InfoNCE between mean-pooled embeddings of two segments of each pair, for
  sentence-embedding encoders without an LM head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from headscope.seeds import Seeds

if TYPE_CHECKING:
    from headscope.model.encode import Example
    from headscope.model.load import LoadedModel

#: Share of the non-special tokens masked for the masked-LM loss.
MASK_RATE = 0.15

#: Temperature of the in-batch contrastive loss (sentence-transformers' MultipleNegativesRankingLoss scale 20).
CONTRASTIVE_TEMPERATURE = 0.05


class LossBatch(Protocol):
    """What the losses read of a batch: :class:`headscope.engine.batch.Batch` (a Protocol, as the engine is a
    layer above the model)."""

    input_ids: torch.Tensor
    is_cls: torch.Tensor
    is_sep: torch.Tensor
    examples: list[Example]

    @property
    def mask(self) -> torch.Tensor: ...

    def model_inputs(self) -> dict[str, torch.Tensor]: ...


def mask_for_mlm(batch: LossBatch, mask_id: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Replace a seeded ``MASK_RATE`` of each sequence's non-special tokens by the mask token.

    The draw depends only on the seed and each example's corpus index (not on batching).

    Returns
    -------
    inputs : dict of str to Tensor
        Model inputs with the masked ``input_ids``.
    labels : Tensor of shape [batch, seq]
        The original id at masked positions, -100 elsewhere.
    """
    ids = batch.input_ids.clone()
    labels = torch.full_like(ids, -100)
    candidates = (batch.mask & ~batch.is_cls & ~batch.is_sep).cpu().numpy()
    for row, ex in enumerate(batch.examples):
        where = np.flatnonzero(candidates[row])
        if where.size == 0:
            continue
        rng = Seeds(seed).per_example("losses.mask", ex.index)
        chosen = where[rng.random(where.size) < MASK_RATE]
        if chosen.size == 0:
            chosen = where[rng.integers(where.size, size=1)]
        idx = torch.as_tensor(chosen, device=ids.device)
        labels[row, idx] = ids[row, idx]
        ids[row, idx] = mask_id
    inputs = batch.model_inputs()
    inputs["input_ids"] = ids
    return inputs, labels


def lm_labels(loaded: LoadedModel, batch: LossBatch, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Inputs and labels of the LM loss: next-token for a causal LM (padding ignored), else seeded masked-LM.

    Raises
    ------
    ValueError
        When the model has no LM head, or is a masked LM whose tokenizer has no mask token.
    """
    info = loaded.info
    if not info.has_lm_head:
        raise ValueError(f"{info.name if hasattr(info, 'name') else 'the model'} has no LM head")
    if info.is_causal:
        return batch.model_inputs(), batch.input_ids.masked_fill(~batch.mask, -100)
    if loaded.tokenizer.mask_token_id is None:
        raise ValueError("the masked-LM loss needs a mask token, and the tokenizer has none")
    return mask_for_mlm(batch, int(loaded.tokenizer.mask_token_id), seed)


def token_losses(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's LM loss [batch, seq'] (0 where the label is -100) and the labels it was computed against.

    ``logits`` [batch, seq, vocabulary], ``labels`` [batch, seq] (-100: no loss); ``causal``: next-token (the
    last position predicts nothing), else masked-LM (``seq' = seq``).
    """
    if causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    # [token, vocabulary], the classes contiguous: ~3x faster on CPU than the transposed [batch, vocabulary, seq]
    per_token = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                  ignore_index=-100, reduction="none").view(labels.shape)
    return per_token, labels


def lm_forward(loaded: LoadedModel, inputs: dict[str, torch.Tensor], labels: torch.Tensor | None, causal: bool
               ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Final hidden states [batch, seq, hidden], the summed token loss (a 0-d tensor, None without labels)
    and its token count."""
    if labels is None:
        return loaded.base(**inputs).last_hidden_state, None, 0
    out = loaded.model(**inputs, output_hidden_states=True)
    logits = out.logits.float() if out.logits.dtype != torch.float64 else out.logits
    if causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                             ignore_index=-100, reduction="sum")
    return out.hidden_states[-1], loss, int((labels != -100).sum())


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens, as sentence-transformers: [batch, seq, hidden] -> [batch, hidden]."""
    m = mask.to(hidden.dtype)[..., None]
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, temperature: float = CONTRASTIVE_TEMPERATURE
                     ) -> torch.Tensor:
    """Summed in-batch InfoNCE of ``a[i]`` against ``b[i]`` (all other ``b[j]`` as negatives).

    Parameters
    ----------
    a, b : Tensor of shape [pairs, hidden]
        Pooled embeddings of the two segments of each pair.

    Returns
    -------
    Tensor of shape []
        Sum over pairs of the cross-entropy of cosine similarities / ``temperature``.
    """
    sim = torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return torch.nn.functional.cross_entropy(sim, target, reduction="sum")
