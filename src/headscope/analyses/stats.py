"""The statistics analyses and commands share: means of running sums, t-tests, Benjamini-Hochberg, Fisher's
exact test and percentile bootstrap intervals.

One implementation of each, used by roles, compare, pruning, decoder_heads and the other accumulators, so
that a choice (how an empty mean reads, which p-value a one-sided test reports) is made once.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar, overload

import numpy as np
import torch
from scipy import stats as _scipy

#: Multiple-testing corrections: none, or Benjamini-Hochberg.
Correction = Literal["none", "bh"]

#: Confidence of the bootstrap intervals unless told otherwise.
CONFIDENCE = 0.95

Sums = TypeVar("Sums", torch.Tensor, np.ndarray)


@overload
def mean_or_nan(total: torch.Tensor, count: Any) -> torch.Tensor: ...
@overload
def mean_or_nan(total: np.ndarray, count: Any) -> np.ndarray: ...


def mean_or_nan(total: torch.Tensor | np.ndarray, count: Any) -> torch.Tensor | np.ndarray:
    """``total / count`` of running sums, NaN where ``count`` is 0 (a statistic never defined).

    ``count`` is a number, or an array (tensor) broadcastable to ``total``: one count per statistic or per
    entry. Tensors stay tensors (on ``total``'s device and dtype), numpy arrays stay numpy arrays.
    """
    if isinstance(total, torch.Tensor):
        n = torch.as_tensor(count, dtype=total.dtype).to(total.device)
        return torch.where(n > 0, total / torch.where(n > 0, n, torch.ones_like(n)), float("nan"))
    n_np = np.asarray(count, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_np > 0, total / np.where(n_np > 0, n_np, 1.0), np.nan)


def means_or_nan(totals: dict[str, Sums], counts: dict[str, Any] | Any) -> dict[str, Sums]:
    """:func:`mean_or_nan` of every entry of ``totals``, over ``counts[key]`` (or one shared count)."""
    return {key: mean_or_nan(total, counts[key] if isinstance(counts, dict) else counts)
            for key, total in totals.items()}


def one_sided_t_test(n: np.ndarray, total: np.ndarray, total_sq: np.ndarray, tau: float,
                     population_sd: bool = False) -> dict[str, np.ndarray]:
    """One-sample t-tests of H0 mean <= tau against H1 mean > tau from sufficient statistics.

    Parameters
    ----------
    n, total, total_sq : ndarray of the same shape
        Count, sum and sum of squares of the scores of each test.
    tau : float
    population_sd : bool
        As Pande et al.'s ``ztest_own``: the population standard deviation in ``t`` and ``p = 1 - cdf(t)``.
        ``var`` is the unbiased variance either way.

    Returns
    -------
    dict with ``mean``, ``var`` (unbiased), ``t`` and ``p``, each of the input shape
        ``t`` and ``p`` are NaN with fewer than two scores. Zero variance gives t = +-inf (p 0 or 1), or
        t NaN when the mean equals tau.
    """
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = total / n
        # Clamp: rounding can make the difference of two nearly equal sums slightly negative.
        var = np.maximum(total_sq - n * mean**2, 0.0) / (n - 1)
        var = np.where(var <= 1e-12 * np.maximum(mean**2, 1e-300), 0.0, var)
        if population_sd:
            t = (mean - tau) / np.sqrt(var * (n - 1) / n / n)
            p = 1 - _scipy.t.cdf(t, np.maximum(n - 1, 1))
        else:
            t = (mean - tau) / np.sqrt(var / n)
            p = _scipy.t.sf(t, np.maximum(n - 1, 1))
    few = n < 2
    t = np.where(few, np.nan, t)
    p = np.where(few | np.isnan(t), np.nan, p)
    return {"mean": np.where(n > 0, mean, np.nan), "var": np.where(n > 1, var, np.nan), "t": t, "p": p}


def welch_t_test(mean_a: np.ndarray, var_a: np.ndarray, n_a: np.ndarray, mean_b: np.ndarray, var_b: np.ndarray,
                 n_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Welch t-tests of mean_a == mean_b from means, unbiased variances and counts: (t, p) arrays.

    ``t`` is positive when A is the larger; 0/0 cases give NaN (no warnings).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        t, p = _scipy.ttest_ind_from_stats(mean_a, np.sqrt(var_a), n_a, mean_b, np.sqrt(var_b), n_b, equal_var=False)
    return np.asarray(t, dtype=float), np.asarray(p, dtype=float)


def adjust_pvalues(p: np.ndarray, correction: Correction) -> np.ndarray:
    """p-values adjusted over the whole family (NaN entries stay NaN and are not counted)."""
    p = np.asarray(p, dtype=np.float64)
    if correction == "none":
        return p.copy()
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = _scipy.false_discovery_control(p[ok], method="bh")
    return out


def fisher_exact(table: list[list[int]]) -> dict[str, float | None]:
    """Fisher's exact test of a 2 x 2 table ``[[a, b], [c, d]]``: does the first row hold the first column
    more often than the second row?

    Returns ``odds_ratio`` (None when undefined: a zero margin), ``p`` (one-sided, ``alternative="greater"``)
    and ``p_two_sided``.
    """
    odds, p_two = _scipy.fisher_exact(table)
    _, p_greater = _scipy.fisher_exact(table, alternative="greater")
    return {"odds_ratio": float(odds) if np.isfinite(odds) else None, "p": float(p_greater),
            "p_two_sided": float(p_two)}


def bootstrap_indices(n: int, resamples: int, seed: int | list[int]) -> np.ndarray:
    """Seeded resamples (with replacement) of ``n`` units: int array of shape (resamples, n).

    The same resamples may serve several statistics, so that intervals of their differences are paired.
    ``seed`` is a number or a list (a seed and a stream number, as ``numpy.random.default_rng`` takes)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of bootstrap ``values``."""
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def poisson_weights(keys: Any, resamples: int, seed: int | list[int]) -> np.ndarray:
    """Poisson(1) bootstrap weights of the units named ``keys``: float64 array of shape (resamples, len(keys)).

    A unit's weights depend only on ``seed`` and its key (an example's position in its stream), so weighted
    sums can be accumulated batch by batch and merged across shards in any order: the online bootstrap
    (Hanley & MacGibbon 2006), whose resample ``r`` weighs unit ``k`` by ``weights[r, k]`` where the
    ordinary bootstrap draws it that many times. Each resample's weighted mean is a bootstrap replicate.
    """
    base = [int(s) for s in (seed if isinstance(seed, list | tuple) else [seed])]
    out = np.empty((int(resamples), len(keys)), dtype=np.float64)
    for column, key in enumerate(keys):
        out[:, column] = np.random.default_rng([*base, int(key)]).poisson(1.0, int(resamples))
    return out


def percentile_intervals(replicates: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """:func:`percentile_interval` of each entry: ``replicates`` has the resamples on its first axis.

    NaN replicates (a resample that drew no unit with a defined value) are left out; an entry with none
    defined gives NaN bounds.
    """
    values = np.asarray(replicates, dtype=np.float64)
    tail = (1 - confidence) / 2 * 100
    shape = values.shape[1:]
    low = np.full(shape, np.nan)
    high = np.full(shape, np.nan)
    defined = np.isfinite(values).any(0)
    if defined.any():
        picked = values[:, defined]
        low[defined], high[defined] = np.nanpercentile(picked, [tail, 100 - tail], axis=0)
    return low, high
