"""Plain per-sequence loops that restate the papers' definitions; tests compare the fast paths to them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from headscope.analyses.base import AnalysisResult
from headscope.analyses.pruning import behaviour_by_analysis
from headscope.analyses.roles import sieve_from_sums
from headscope.analyses.similarity import entropy
from headscope.config import WordMode


def surface_reference(A: np.ndarray, is_cls: np.ndarray, is_sep: np.ndarray, is_punct: np.ndarray,
                      causal: bool = False) -> dict[str, float]:
    """Clark et al.'s surface statistics of one head on one sequence, by loops over rows.

    ``A`` has shape (n, n) without padding; the masks have shape (n,).
    """
    n = A.shape[0]
    out: dict[str, float] = {}
    for name, mask in (("cls", is_cls), ("sep", is_sep), ("punct", is_punct)):
        out[name] = sum(A[i, j] for i in range(n) for j in range(n) if mask[j]) / n
    out["self"] = sum(A[i, i] for i in range(n)) / n
    if n > 1:
        out["next"] = sum(A[i, i + 1] for i in range(n - 1)) / (n - 1)
        out["prev"] = sum(A[i, i - 1] for i in range(1, n)) / (n - 1)
    ent = [-sum(a * math.log(a) for a in A[i] if a > 0) for i in range(n)]
    out["entropy"] = sum(ent) / n
    out["entropy_uniform"] = (sum(math.log(i + 1) for i in range(n)) / n) if causal else math.log(n)
    if is_cls[0]:
        out["cls_entropy"] = ent[0]
    seps = [i for i in range(n) if is_sep[i]]
    others = [i for i in range(n) if not is_sep[i]]
    if seps:
        out["sep_to_sep"] = sum(A[i, j] for i in seps for j in seps) / len(seps)
        if others:
            out["other_to_sep"] = sum(A[i, j] for i in others for j in seps) / len(others)
    out["confidence"] = sum(max(A[i]) for i in range(n)) / n
    return out


def random_attention(rng: np.random.Generator, n: int, causal: bool = False) -> np.ndarray:
    """A row-stochastic (n, n) matrix (lower-triangular when causal)."""
    logits = rng.normal(size=(n, n)) * 2
    if causal:
        logits = np.where(np.tril(np.ones((n, n))) > 0, logits, -np.inf)
    A = np.exp(logits - logits.max(1, keepdims=True))
    return A / A.sum(1, keepdims=True)


def word_attention_reference(attn: np.ndarray, groups: list[list[int]], mode: WordMode = "mean") -> np.ndarray:
    """Plain-loop version of :func:`headscope.engine.wordlevel.word_attention` for one map.

    Parameters
    ----------
    attn : ndarray of shape (seq, seq)
    groups : list of list of int
        The positions of each unit, in unit order.

    Returns
    -------
    ndarray of shape (n_units, n_units)
    """
    m = len(groups)
    out = np.zeros((m, m))
    for u, rows in enumerate(groups):
        from_rows = rows if mode == "mean" else rows[:1]
        for v, cols in enumerate(groups):
            out[u, v] = np.mean([sum(attn[i, j] for j in cols) for i in from_rows])
    return out


def rollout_reference(attention: torch.Tensor) -> torch.Tensor:
    """Abnar & Zuidema's head-averaged rollout for a stack of layers, written as the plain formula.

    Parameters
    ----------
    attention : Tensor of shape [layer, head, seq, seq]
        One unpadded sequence.

    Returns
    -------
    Tensor of shape [layer, seq, seq]
    """
    n = attention.shape[-1]
    eye = torch.eye(n, dtype=torch.float64)
    out = []
    r = None
    for a in attention.double():
        ahat = 0.5 * a.mean(0) + 0.5 * eye
        ahat = ahat / ahat.sum(-1, keepdim=True)
        r = ahat if r is None else ahat @ r
        out.append(r)
    return torch.stack(out).float()


def sieve_scores(attn: torch.Tensor, targets: torch.Tensor, queries: torch.Tensor, n: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sieve bias score of every sequence and head for one role given as a dense target mask: the general form
    (any target sets) of what ``roles`` computes without the dense mask.

    Parameters
    ----------
    attn : Tensor of shape [batch, layer, head, query, key]
        Rows of real queries sum to 1; padding is 0.
    targets : Tensor of shape [batch, query, key]
        1 where key j is in the target set of query i (float or bool).
    queries, n
        As in :func:`headscope.analyses.roles.sieve_from_sums`.

    Returns
    -------
    scores : Tensor of shape [batch, layer, head], float64
    valid : Tensor of shape [batch], bool
    """
    targets = targets.to(attn.dtype)
    on_targets = torch.einsum("blhqk,bqk->blhq", attn, targets)
    return sieve_from_sums(on_targets, targets.sum(-1), queries, n)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in nats of distributions along the last dimension (broadcasts)."""
    return (entropy((p + q) / 2) - (entropy(p) + entropy(q)) / 2).clamp_min(0.0)


def behaviour_heads(results: dict[str, AnalysisResult]) -> tuple[set[tuple[int, int]], list[str]]:
    """Heads with an identified behaviour in any analysis that ran, and the names of those analyses."""
    by_analysis = behaviour_by_analysis(results)
    return set().union(*by_analysis.values()), list(by_analysis)


def sep_gradient_batch(loaded: Any, batch: Any, kind: str, seed: int, append_eos: bool = False
                       ) -> tuple[dict[str, np.ndarray], float, int]:
    """One batch of the sep_gradient pass, as the engine runs it: (summed statistics, summed loss, terms)."""
    from headscope.analyses.sep_gradient import sep_sums, with_eos
    from headscope.engine.forwards import ForwardOutput, attention_gradients, plain_batch, separator_id

    sep_id = separator_id(loaded.tokenizer)
    if sep_id is None:
        raise ValueError(f"{loaded.info.name}: the tokenizer has neither a SEP nor an EOS token")
    if append_eos:
        with torch.inference_mode(False):
            batch = with_eos(plain_batch(batch), int(sep_id), int(loaded.info.max_length),
                             loaded.tokenizer.bos_token_id)
    seen, loss, terms = attention_gradients(loaded, batch, kind, seed)
    causal = bool(loaded.info.is_causal) and kind != "contrastive_loss"
    out = ForwardOutput(loss=loss, terms=terms, attention_gradients=seen)
    return sep_sums(out, int(sep_id), causal, batch.size), loss, terms


def held_out_loss(loaded: Any, batches: list[Any], kind: str, seed: int, gates: np.ndarray) -> float:
    """Mean loss over ``batches`` with the gates ``gates`` (shape (n_layers, n_heads)), through the engine's
    forward as pruning's passes run it."""
    from headscope.engine.forwards import Loss, loss_kind, run_forward

    assert kind == loss_kind(loaded), "the engine computes the model's own loss"
    total, terms = 0.0, 0
    for batch in batches:
        out = run_forward(loaded, batch, Loss(gates=gates), seed)
        total += out.loss
        terms += out.terms
    return total / max(terms, 1)
