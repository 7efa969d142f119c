"""Sieve-bias scores: attention on a role's targets relative to uniform attention, from row sums."""

from __future__ import annotations

import torch


def sieve_row_sums(on_targets: torch.Tensor, size: torch.Tensor, queries: torch.Tensor,
                   units: torch.Tensor | None = None) -> torch.Tensor:
    """The sum over counted queries of each query's mean attention on its targets, for some query rows.

    Sums of blocks of query rows add up to the sum of the whole sequence; :func:`sieve_norms` turns it into
    the score.

    Parameters
    ----------
    on_targets : Tensor of shape [batch, layer, head, query]
        ``sum_{j in T(i)} A[i, j]``.
    size : Tensor of shape [batch, query]
        ``|T(i)|``; queries with no target are left out.
    queries : Tensor of shape [batch, query], bool
        The query positions that count (real positions).
    units : Tensor of shape [batch, query, unit], optional
        1 where the query belongs to the unit of observation (a sentence of the sequence); the sums are
        then taken per unit.

    Returns
    -------
    Tensor of shape [batch, layer, head], or [batch, layer, head, unit] with ``units``, float64
        ``sum_i on_targets[i] / size[i]`` over counted queries (of each unit).
    """
    rows = queries & (size > 0)
    row_mean = on_targets.double() / size.clamp_min(1).double()[:, None, None, :]
    if units is None:
        return (row_mean * rows[:, None, None, :]).sum(-1)
    return torch.einsum("blhq,bqu->blhu", row_mean * rows[:, None, None, :], units.double())


def sieve_norms(size: torch.Tensor, queries: torch.Tensor, n: torch.Tensor, units: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """What turns a sequence's :func:`sieve_row_sums` into its score: ``n`` over the counted queries.

    Parameters
    ----------
    size, queries : Tensor of shape [batch, query]
        As in :func:`sieve_row_sums`, for every query of the sequence.
    n : Tensor of shape [batch]
        Size of the uniform baseline (real positions or units).
    units : Tensor of shape [batch, query, unit], optional
        As in :func:`sieve_row_sums`: the queries are counted per unit.

    Returns
    -------
    factor : Tensor of shape [batch] (or [batch, unit]), float64
        ``n / (number of counted queries)``.
    valid : Tensor of shape [batch] (or [batch, unit]), bool
        True when the sequence (unit) has at least one query with a target.
    """
    rows = queries & (size > 0)
    if units is None:
        n_rows = rows.sum(-1)
        return n.double() / n_rows.clamp_min(1).double(), n_rows > 0
    # The baseline stays the whole sequence's n: a unit's queries attend over every position of the input.
    n_rows = torch.einsum("bq,bqu->bu", rows.double(), units.double())
    return n.double()[:, None] / n_rows.clamp_min(1), n_rows > 0


def sieve_from_sums(on_targets: torch.Tensor, size: torch.Tensor, queries: torch.Tensor, n: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sieve bias scores from each query's attention on its targets.

    Parameters
    ----------
    on_targets : Tensor of shape [batch, layer, head, query]
        ``sum_{j in T(i)} A[i, j]``.
    size : Tensor of shape [batch, query]
        ``|T(i)|``; queries with no target are left out.
    queries : Tensor of shape [batch, query], bool
        The query positions that count (real positions).
    n : Tensor of shape [batch]
        Size of the uniform baseline (real positions or units).

    Returns
    -------
    scores : Tensor of shape [batch, layer, head], float64
        ``n * mean_i (on_targets[i] / size[i])`` over counted queries; 0 where ``valid`` is False.
    valid : Tensor of shape [batch], bool
        True when the sequence has at least one query with a target.
    """
    factor, valid = sieve_norms(size, queries, n)
    return sieve_row_sums(on_targets, size, queries) * factor[:, None, None], valid
