"""The statistics of ``head_effects`` (issues 30, 39): its two seeded samples, the paired bootstrap interval of
every effect, the agreement of an estimate with the exact effects (Spearman, recall of the top, ranks), AtP*'s
GradDrop estimate, and the summary of ``head_effects_verify_top``: plain numpy on the arrays the analysis
gathered.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from headscope.analyses import stats
from headscope.analyses.stats import CONFIDENCE
from headscope.engine.progress import Tracker
from headscope.seeds import Seeds

#: Bootstrap resamples per step of its progress.
BOOTSTRAP_BLOCK = 250

def split_sample(examples: int, sequences: int, mean_sequences: int, seed: int
                 ) -> tuple[frozenset[int], frozenset[int], bool]:
    """The held-out sequences and the mean sample, disjoint when the corpus allows.

    The held-out sample takes at most half the corpus (at least one sequence); the mean sample the next
    ``mean_sequences`` of a seeded permutation. With nothing left for it (or ``mean_sequences`` 0), the mean
    sample is the held-out one.

    Returns
    -------
    held, mean : frozenset of int
        Positions in the corpus's example stream.
    disjoint : bool
    """
    order = Seeds(seed).rng("head_effects.split").permutation(examples)
    n = min(sequences, examples // 2) or min(sequences, examples)
    held = frozenset(int(i) for i in order[:n])
    mean = frozenset(int(i) for i in order[n:n + mean_sequences])
    return held, (mean or held), bool(mean)


def bootstrap_effects(diff: np.ndarray, terms: np.ndarray, resamples: int, seed: int, quiet: bool = True
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap intervals of ``sum(diff[:, h]) / sum(terms)`` over sequences, for every column.

    Parameters
    ----------
    diff : ndarray of shape (sequences, heads)
        Each sequence's ablated minus baseline summed loss (paired: a resample takes both).
    terms : ndarray of shape (sequences,)
    resamples, seed : int
    quiet : bool
        No progress (the resamples, in blocks of :data:`BOOTSTRAP_BLOCK`).

    Returns
    -------
    low, high : ndarray of shape (heads,)
    """
    n = diff.shape[0]
    index = stats.bootstrap_indices(n, resamples, Seeds(seed).key("head_effects.bootstrap"))
    values = np.empty((resamples, diff.shape[1]))
    with Tracker("head_effects: bootstrap", "resamples", resamples, quiet) as tracker:
        for start in range(0, resamples, BOOTSTRAP_BLOCK):
            stop = min(resamples, start + BOOTSTRAP_BLOCK)
            counts = np.zeros((stop - start, n))
            np.add.at(counts, (np.arange(stop - start)[:, None], index[start:stop]), 1.0)
            values[start:stop] = (counts @ diff) / np.maximum(counts @ terms, 1.0)[:, None]
            tracker.update(stop - start)
    return stats.percentile_intervals(values, CONFIDENCE)


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (scipy's) over the pairs where both are defined, None when undefined (fewer
    than 2 values, or a constant one)."""
    from scipy.stats import spearmanr

    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    value = float(spearmanr(a, b).statistic)
    return value if np.isfinite(value) else None


def grad_drop_estimate(dropped: np.ndarray, terms: float) -> np.ndarray:
    """AtP*'s GradDrop estimate (Kramar et al. 2024, section 3.1.2) of every head's effect magnitude:
    ``1 / (L - 1) * sum over layers l of |AtP_{-l}|``, each ``AtP_{-l}`` (the estimate with layer ``l``'s
    gradient dropped) summed over sequences and normalised as the effect; a head's own layer gives 0 (hence
    ``L - 1``).

    Parameters
    ----------
    dropped : ndarray of shape (sequences, n_layers, heads)
        Each sequence's ``AtP_{-l}`` per dropped layer ``l`` and head (flattened ``layer * n_heads + head``).
    terms : float
        The loss terms of the sequences.

    Returns
    -------
    ndarray of shape (heads,)
    """
    n_layers = dropped.shape[1]
    return np.abs(dropped.sum(0) / max(terms, 1.0)).sum(0) / max(n_layers - 1, 1)


def recall_at(estimate: np.ndarray, exact: np.ndarray, k: int) -> float | None:
    """The share of the ``k`` largest ``exact`` values that are among the ``k`` largest of ``estimate``."""
    if k < 1:
        return None
    top = set(np.argsort(-exact, kind="stable")[:k].tolist())
    return len(top & set(np.argsort(-estimate, kind="stable")[:k].tolist())) / k


def ranks(values: np.ndarray) -> np.ndarray:
    """1 for the largest value, ties in head order; NaN values (heads not measured) get no rank (NaN, the
    array then float)."""
    finite = np.isfinite(values)
    out = np.empty(len(values), dtype=np.int64 if finite.all() else np.float64)
    if not finite.all():
        out[~finite] = np.nan
    where = np.flatnonzero(finite)
    out[where[np.argsort(-values[where], kind="stable")]] = np.arange(1, len(where) + 1)
    return out


def verify_summary(effect: np.ndarray, star: np.ndarray, top: list[int], control: list[int]) -> dict[str, Any]:
    """How well AtP*'s top K found the heads of largest exact effect magnitude, from the K heads it picked and
    K random others (the control).

    ``threshold`` is the K-th largest ``|effect|`` among the 2K verified heads. ``recall_verified``: the share
    of the verified heads at or above it that AtP* picked. The control estimates how many unpicked heads reach
    the threshold: ``control_above / K * (heads - K)``; ``recall_estimated`` = picked above / (picked above +
    that estimate), an estimate of the recall of the model's exact top K.
    """
    k = len(top)
    magnitude = np.abs(effect)
    verified = np.asarray(top + control)
    threshold = float(np.sort(magnitude[verified])[::-1][k - 1])
    picked_above = int((magnitude[top] >= threshold).sum())
    control_above = int((magnitude[control] >= threshold).sum())
    unpicked = len(effect) - k
    missed = control_above / k * unpicked
    return {"k": k, "threshold": threshold, "top": top, "control": control,
            "picked_above": picked_above, "control_above": control_above,
            "recall_verified": picked_above / max(picked_above + control_above, 1),
            "estimated_missed": missed, "recall_estimated": picked_above / max(picked_above + missed, 1e-12),
            "spearman_verified": spearman(star[verified], magnitude[verified]),
            "rule": "threshold: the K-th largest |effect| among the 2K verified heads; recall_estimated: picked "
                    "heads above it over those plus control_above / K x (heads - K)"}
