"""The probing classifiers (Attn, Attn+GloVe, Distances+GloVe, right-branching), their training and UAS."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from headscope.analyses.probe.features import pad_batch
from headscope.analyses.probe.store import ProbeSentences

#: Signed distances beyond this share a bucket in ``distances_glove``.
MAX_DISTANCE = 10


class AttnProbe(nn.Module):
    """``s(i | j) = sum_k w_k A_k[j, i] + u_k A_k[i, j]``; with ``dim`` > 0, ``w`` and ``u`` depend on the
    GloVe vectors of ``i`` and ``j`` (Attn+GloVe)."""

    def __init__(self, n_features: int, dim: int = 0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(n_features))
        self.u = nn.Parameter(torch.zeros(n_features))
        self.dim = dim
        if dim:
            self.root = nn.Parameter(torch.zeros(dim))
            # Candidate and dependent halves of W (v_i ⊕ v_j), for w and u at once: [dim, 2 * n_features].
            self.cand = nn.Linear(dim, 2 * n_features, bias=False)
            self.dep = nn.Linear(dim, 2 * n_features, bias=False)
            nn.init.zeros_(self.cand.weight)
            nn.init.zeros_(self.dep.weight)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scores of shape [batch, dependent, candidate]."""
        f = batch["features"]  # [batch, feature, cand, cand]
        to_cand = f.permute(0, 2, 3, 1)  # [batch, dep j, cand i, feature] = A[j, i]
        from_cand = f.permute(0, 3, 2, 1)  # [batch, dep j, cand i, feature] = A[i, j]
        k = f.shape[1]
        if not self.dim:
            return to_cand @ self.w + from_cand @ self.u
        v = batch["vectors"].clone()
        v[:, 0] = self.root
        cand = self.cand(v)  # [batch, cand, 2k]
        dep = self.dep(v)
        weights = cand[:, None, :, :] + dep[:, :, None, :] + torch.cat([self.w, self.u])
        return (weights[..., :k] * to_cand).sum(-1) + (weights[..., k:] * from_cand).sum(-1)


class DistanceProbe(nn.Module):
    """``s(i | j) = p . ReLU(A v_i + B v_j + E[distance bucket(i, j)] + c)`` (Distances+GloVe)."""

    def __init__(self, dim: int, hidden: int = 100) -> None:
        super().__init__()
        self.root = nn.Parameter(torch.zeros(dim))
        self.cand = nn.Linear(dim, hidden)
        self.dep = nn.Linear(dim, hidden, bias=False)
        # Buckets 0..2*MAX_DISTANCE for signed distance i - j, and one more for ROOT.
        self.distance = nn.Embedding(2 * MAX_DISTANCE + 2, hidden)
        self.out = nn.Linear(hidden, 1, bias=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        v = batch["vectors"].clone()
        v[:, 0] = self.root
        m = v.shape[1]
        pos = torch.arange(m)
        bucket = (pos[None, :] - pos[:, None]).clamp(-MAX_DISTANCE, MAX_DISTANCE) + MAX_DISTANCE  # [dep, cand]
        bucket[:, 0] = 2 * MAX_DISTANCE + 1
        h = self.cand(v)[:, None, :, :] + self.dep(v)[:, :, None, :] + self.distance(bucket)[None]
        return self.out(torch.relu(h)).squeeze(-1)


def masked_scores(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Scores with padding candidates and each word itself ruled out; shape [batch, dependent, candidate]."""
    m = scores.shape[-1]
    blocked = ~valid[:, None, :] | torch.eye(m, dtype=torch.bool)[None]
    return scores.masked_fill(blocked, float("-inf"))


def right_branching(heads: torch.Tensor) -> torch.Tensor:
    """Predicted heads of shape [batch, cand]: word k's head is word k + 1; the last word's is ROOT."""
    m = heads.shape[1]
    pred = torch.arange(1, m + 1)[None, :].expand_as(heads).clone()
    is_last = (heads >= 0) & torch.cat([heads[:, 1:] < 0, torch.ones_like(heads[:, :1], dtype=torch.bool)], 1)
    pred[is_last] = 0
    return pred


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread inside the block: probes take many tiny steps, where synchronising threads
    costs more than it saves (several times slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def uas(predict: Any, data: ProbeSentences, vectors: Any | None, use_features: bool, batch_sentences: int
        ) -> tuple[float, int]:
    """Unlabelled attachment score of ``predict`` (batch dict -> predicted heads [batch, cand]) on ``data``,
    punctuation excluded. Returns (UAS, number of scored words)."""
    correct = total = 0
    order = data.order()
    with single_thread(), torch.no_grad():
        for start in range(0, len(order), batch_sentences):
            batch = pad_batch(data, order[start:start + batch_sentences], vectors, use_features)
            pred = predict(batch)
            scored = (batch["heads"] >= 0) & ~batch["punct"]
            correct += int(((pred == batch["heads"]) & scored).sum())
            total += int(scored.sum())
    return (correct / total if total else float("nan")), total


def train_probe(model: nn.Module, train: ProbeSentences, vectors: Any | None, use_features: bool, epochs: int,
                lr: float, batch_sentences: int, seed: int) -> list[float]:
    """Train ``model`` with Adam on cross-entropy over each word's candidates; return the mean loss of each
    epoch. Sentences are visited in a seeded random order, the same whatever the batching of the pass."""
    torch.manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    with single_thread():
        return _epochs(model, optimiser, train, vectors, use_features, epochs, batch_sentences, rng)


def _epochs(model: nn.Module, optimiser: torch.optim.Optimizer, train: ProbeSentences, vectors: Any | None,
            use_features: bool, epochs: int, batch_sentences: int, rng: np.random.Generator) -> list[float]:
    base = train.order()
    losses = []
    for _ in range(epochs):
        order = base[rng.permutation(len(base))]
        total_loss = 0.0
        n_words = 0
        for start in range(0, len(order), batch_sentences):
            batch = pad_batch(train, order[start:start + batch_sentences], vectors, use_features)
            scores = masked_scores(model(batch), batch["valid"])
            targets = batch["heads"]
            loss = nn.functional.cross_entropy(scores.reshape(-1, scores.shape[-1]), targets.reshape(-1),
                                               ignore_index=-1, reduction="sum")
            words = int((targets >= 0).sum())
            if words == 0:
                continue
            optimiser.zero_grad()
            (loss / words).backward()
            optimiser.step()
            total_loss += loss.item()
            n_words += words
        losses.append(total_loss / max(n_words, 1))
    return losses
