"""Plain per-sequence loops that restate the papers' definitions; tests compare the fast paths to them."""

from __future__ import annotations

import math

import numpy as np


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
