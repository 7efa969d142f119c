"""Heads switched off: gates on head outputs (:func:`gated`), several sets of gates in one forward
(:func:`variant_losses`) and every head ablated one at a time (:func:`ablations`, replayed from the cached layer
inputs where that is exact, else :func:`full_ablations`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from headscope.engine.forwards.losses import LM_LOSSES, sequence_losses
from headscope.engine.forwards.vocabulary import Ablate, ForwardOutput
from headscope.engine.progress import Tracker
from headscope.model.gates import HeadGates

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.model.load import LoadedModel


@contextlib.contextmanager
def gated(loaded: LoadedModel, values: np.ndarray | None, replace: np.ndarray | None = None
          ) -> Iterator[HeadGates | None]:
    """Gates at ``values`` (shape (n_layers, n_heads), or (rows, n_layers, n_heads) per row) closing onto
    ``replace`` (shape (n_layers, n_heads, head_dim); None: 0) for the duration; nothing attached when
    ``values`` is None."""
    if values is None:
        yield None
        return
    info = loaded.info
    with HeadGates(loaded.model, info.n_layers, info.n_heads) as gates:
        like = gates.values
        if np.ndim(values) == 3:
            gates.values = torch.as_tensor(values, dtype=like.dtype).to(like.device)
        else:
            gates.values.copy_(torch.as_tensor(values, dtype=like.dtype))
        if replace is not None:
            gates.replacement = torch.as_tensor(replace, dtype=like.dtype).to(like.device)
        yield gates


def variant_losses(loaded: LoadedModel, batch: Batch, kind: str, seed: int, gates: np.ndarray,
                   replace: np.ndarray | None = None) -> ForwardOutput:
    """Per-sequence losses of ``batch`` under several sets of gates in one forward: the batch repeated once per
    set (rows ``j * batch + b``), with per-row gates (:class:`~headscope.model.gates.HeadGates`).

    Parameters
    ----------
    gates : ndarray of shape (variants, n_layers, n_heads)
    replace : ndarray of shape (n_layers, n_heads, head_dim), optional
        What a closed head outputs (None: 0).

    Returns
    -------
    ForwardOutput
        ``sequence_loss`` (float64) and ``sequence_terms`` (int64) of shape (variants, batch); ``loss`` and
        ``terms`` summed over both.
    """
    k, b = int(gates.shape[0]), batch.size
    # Every copy gets the same inputs: the masked-LM draw depends only on the seed and each example's index.
    tiled = batch.select(list(range(b)) * k) if k > 1 else batch
    with gated(loaded, np.repeat(np.asarray(gates), b, axis=0), replace), torch.inference_mode():
        losses, terms = sequence_losses(loaded, tiled, kind, seed, variants=k)
    losses, terms = losses.reshape(k, b), terms.reshape(k, b)
    return ForwardOutput(loss=float(losses.sum()), terms=int(terms.sum()), sequence_loss=losses,
                         sequence_terms=terms)


def ablations(loaded: LoadedModel, batch: Batch, kind: str, seed: int, forward: Ablate, budget_bytes: int,
              quiet: bool = True) -> ForwardOutput:
    """:class:`~headscope.engine.forwards.vocabulary.Ablate`: replayed from the cached layer inputs when exact,
    else full forwards (the reason in ``replay``)."""
    from headscope.engine.replay import ReplayRefusedError, replay_ablations

    rows = forward.rows or batch.size
    how: dict[str, Any]
    if not forward.replay:
        how = {"mode": "full forwards", "why": "replay switched off"}
    elif kind not in LM_LOSSES:
        how = {"mode": "full forwards", "why": "replay computes LM losses; the contrastive loss is run in full"}
    else:
        try:
            base, terms, ablated, how = replay_ablations(loaded, batch, seed, rows, forward.replace, budget_bytes,
                                                         quiet, heads=forward.heads)
            return ForwardOutput(loss=float(base.sum()), terms=int(terms.sum()), sequence_loss=base,
                                 sequence_terms=terms, ablated=ablated, replay=how)
        except ReplayRefusedError as exc:
            how = {"mode": "full forwards", "why": str(exc)}
    base, terms, ablated = full_ablations(loaded, batch, kind, seed, rows, forward.replace, quiet,
                                          heads=forward.heads)
    return ForwardOutput(loss=float(base.sum()), terms=int(terms.sum()), sequence_loss=base,
                         sequence_terms=terms, ablated=ablated, replay=how)


def full_ablations(loaded: LoadedModel, batch: Batch, kind: str, seed: int, rows: int, replace: np.ndarray | None,
                   quiet: bool = True, desc: str = "head_effects: ablations of this batch",
                   heads: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`~headscope.engine.replay.replay_ablations` by full forwards (any loss, any model): the baseline,
    then the batch repeated once per head of a group of ``rows // B`` heads (per-row gates), every layer run."""
    info = loaded.info
    b, total = batch.size, info.n_layers * info.n_heads
    with torch.inference_mode():
        base, terms = sequence_losses(loaded, batch, kind, seed)
    per = max(1, rows // max(b, 1))
    ablated = np.full((total, b), np.nan)
    todo = np.arange(total) if heads is None else np.asarray(sorted(heads), dtype=np.int64)
    with Tracker(desc, "heads", len(todo), quiet, leave=False, final=False) as tracker:
        for start in range(0, len(todo), per):
            group = todo[start:start + per]
            gates = np.ones((len(group), total))
            gates[np.arange(len(group)), group] = 0.0
            out = variant_losses(loaded, batch, kind, seed, gates.reshape(len(group), info.n_layers, info.n_heads),
                                 replace)
            assert out.sequence_loss is not None
            ablated[group] = out.sequence_loss
            tracker.update(len(group))
    return base, terms, ablated
