"""The attention span's measures (:mod:`headscope.analyses.span`): distance edges and histogram bins, the attention
mass within each distance of every query row, a head's fractions by bucket, the streaming/retrieval split and
the KV budget it gives. Pure functions of arrays."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch

#: The fixed buckets' edges: the last LOCAL tokens are local, beyond FAR far.
LOCAL = 64
FAR = 512
#: The buckets of ``span.csv``, in order.
BUCKETS = ("sink", "local", "mid", "far")
#: An edge past every position (the sink's: ``max(i - e, 0) = 0``).
BEYOND = 1 << 40


def span_edges(longest: int, window: int) -> np.ndarray:
    """The distance edges at which cumulative masses are read: 0, powers of two up to ``longest``, the window,
    :data:`LOCAL`, :data:`FAR` and :data:`BEYOND` (the sink), sorted and distinct (int64)."""
    powers = [1 << k for k in range(max(int(longest - 1).bit_length(), 1))]
    return np.asarray(sorted({0, *powers, window, LOCAL, FAR, BEYOND}), dtype=np.int64)


def histogram_bins(edges: np.ndarray, longest: int) -> list[tuple[int, int]]:
    """The log-spaced distance bins ``[lo, hi)``: ``[0, 1)``, ``[1, 2)``, ``[2, 4)``, ..., the last open
    (``hi`` = :data:`BEYOND`) from the largest power of two below ``longest``."""
    powers = [0] + [1 << k for k in range(max(int(longest - 1).bit_length(), 1))]
    bins = [*itertools.pairwise(powers), (powers[-1], BEYOND)]
    assert all(lo in edges and hi in edges for lo, hi in bins)
    return bins


def bin_name(lo: int, hi: int) -> str:
    """``"0"``, ``"1"``, ``"2-3"``, ``"512+"``."""
    if hi >= BEYOND:
        return f"{lo}+"
    return str(lo) if hi == lo + 1 else f"{lo}-{hi - 1}"


def cumulative_masses(weights: torch.Tensor, query_start: int, edges: torch.Tensor) -> torch.Tensor:
    """Per head, the sums over a block's rows of ``S_i(max(i - e, 0))`` for each edge ``e``.

    ``S_i(k)`` is row ``i``'s attention on keys ``0..k``, so ``S_i(i) - S_i(max(i - e, 0))`` is its attention on
    the keys at distance below ``e`` other than position 0, and ``S_i(0)`` its attention on the sink: every
    bucket is a difference of two of these sums.

    Parameters
    ----------
    weights : Tensor of shape [batch, head, query, key]
        One block of query rows, the first at ``query_start``; padding exactly 0.
    query_start : int
    edges : Tensor of shape [edge]
        int64 distances, on the weights' device.

    Returns
    -------
    Tensor of shape [head, edge]
        float64.
    """
    b, h, r, m = weights.shape
    cumulative = weights.cumsum(-1)
    pos = torch.arange(query_start, query_start + r, device=weights.device)
    index = (pos[:, None] - edges[None, :]).clamp(0, m - 1)  # [query, edge]
    picked = cumulative.gather(-1, index[None, None].expand(b, h, r, len(edges)))
    return picked.sum((0, 2), dtype=torch.float64)


def fractions(masses: np.ndarray, edges: np.ndarray, window: int, bins: list[tuple[int, int]]
              ) -> dict[str, np.ndarray]:
    """Buckets, histogram bins and window coverage from summed cumulative masses ``[..., edge]``.

    Returns a dict of arrays of the leading shape: ``sink``, ``local``, ``mid``, ``far`` (summing to 1),
    ``bin:<lo>`` for each histogram bin (with ``sink``, summing to 1), ``coverage`` (the sink and the last
    ``window`` tokens) and ``total`` (the attention summed over rows). NaN where ``total`` is 0.
    """
    at = {int(e): k for k, e in enumerate(edges)}
    total = masses[..., at[0]]
    with np.errstate(divide="ignore", invalid="ignore"):
        def share(lo: int, hi: int) -> np.ndarray:
            return (masses[..., at[lo]] - masses[..., at[hi]]) / total

        out = {"sink": masses[..., at[BEYOND]] / total, "local": share(0, LOCAL), "mid": share(LOCAL, FAR),
               "far": share(FAR, BEYOND)}
        for lo, hi in bins:
            out[f"bin:{lo}"] = share(lo, hi)
        out["coverage"] = out["sink"] + share(0, window)
    out["total"] = total
    return out


def classify(coverage: np.ndarray, threshold: float) -> np.ndarray:
    """``coverage`` [length, layer, head] -> bool [layer, head]: streaming when at least ``threshold`` at every
    measured length (lengths never measured, all NaN, are left out)."""
    measured = ~np.isnan(coverage).all(axis=(1, 2))
    if not measured.any():
        return np.zeros(coverage.shape[1:], dtype=bool)
    return (coverage[measured] >= threshold).all(0)


def budget_windows(streaming: np.ndarray, window: int) -> np.ndarray:
    """Per-head key windows (int64 [layer, head]) of the KV budget: ``window`` for streaming heads, 0 (whole)
    for the others (:class:`~headscope.engine.forwards.Loss` ``kv_budget``)."""
    return np.where(streaming, int(window), 0).astype(np.int64)


def budget_document(streaming: np.ndarray, window: int, **about: Any) -> dict[str, Any]:
    """``kv_budget.json``: per layer, per head, ``"full"`` or ``{"sink": 1, "window": W}``."""
    layers = [["full" if not s else {"sink": 1, "window": int(window)} for s in row] for row in streaming]
    return {**about, "window": int(window), "sink": 1,
            "streaming_heads": int(streaming.sum()), "heads": int(streaming.size), "layers": layers}
