"""The decoder-head scores of one block of query rows (:mod:`headscope.analyses.decoder_heads`): TransformerLens'
detection patterns (previous-token, duplicate-token, induction) with their exclusions, prefix matching on the
induction probe, the uniform map's chance level, and Gu et al.'s sink alphas. Pure tensor functions."""

from __future__ import annotations

import torch

#: Kept attention per row below which a score is undefined: the exclusions subtract float32 sums, so a row with
#: nothing left keeps a rounding residue of this order rather than an exact 0.
ROUNDING = 1e-6


def kept_row_mass(weights: torch.Tensor, query_start: int, exclude_bos: bool, exclude_current_token: bool
                  ) -> torch.Tensor:
    """Each row's attention left once the exclusions have zeroed column 0 and/or the diagonal.

    Parameters
    ----------
    weights : Tensor of shape [batch, head, query, key]
        One block of query rows, the first at position ``query_start``; padding exactly 0.
    query_start : int
    exclude_bos, exclude_current_token : bool

    Returns
    -------
    Tensor of shape [batch, head, query]
        float64: the denominator of TransformerLens's ``mul`` score, row by row.
    """
    # In float64 (rows are few next to the block): the subtractions then add no rounding of their own.
    mass = weights.sum(-1).double()
    if exclude_bos:
        mass -= weights[..., 0].double()
    if exclude_current_token:
        mass -= torch.diagonal(weights, query_start, dim1=-2, dim2=-1).double()
        if exclude_bos and query_start == 0:
            mass[..., 0] += weights[..., 0, 0].double()  # A[0, 0] is both column 0 and the diagonal: out once
    return mass


def token_patterns(input_ids: torch.Tensor, query_start: int, query_stop: int, exclude_bos: bool,
                   exclude_current_token: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The duplicate-token and induction detection patterns of a block of query rows.

    Parameters
    ----------
    input_ids : Tensor of shape [batch, seq]
        int64 ids (right padding; padded positions may hold any id: their weights are 0).
    query_start, query_stop : int
        The block's query positions.
    exclude_bos, exclude_current_token : bool
        Zero column 0 / the diagonal, as zeroing them in the attention would.

    Returns
    -------
    duplicate, induction : Tensor of shape [batch, query, seq], bool
        ``duplicate[b, r, j]``: ``j < i`` and ``ids[j] == ids[i]`` for ``i = query_start + r``;
        ``induction[b, r, j]``: ``1 <= j <= i`` and ``ids[j - 1] == ids[i]``.
    """
    n = input_ids.shape[1]
    dev = input_ids.device
    pos = torch.arange(query_start, query_stop, device=dev)[:, None]
    keys = torch.arange(n, device=dev)[None, :]
    query_ids = input_ids[:, query_start:query_stop, None]
    duplicate = (query_ids == input_ids[:, None, :]) & (keys < pos)
    # The token just before each key; -1 before key 0 matches no id, so key 0 is never an induction target.
    before = torch.nn.functional.pad(input_ids[:, :-1], (1, 0), value=-1)
    induction = (query_ids == before[:, None, :]) & (keys <= pos)
    if exclude_bos:
        duplicate[..., 0] = False
        induction[..., 0] = False
    if exclude_current_token:  # the duplicate pattern is 0 on its diagonal already
        induction &= keys != pos
    return duplicate, induction


def pattern_sums(weights: torch.Tensor, input_ids: torch.Tensor, query_start: int, exclude_bos: bool = False,
                 exclude_current_token: bool = False) -> dict[str, torch.Tensor]:
    """Numerators and denominator of the main-pass scores for one block of query rows.

    Every quantity is a sum over the block's rows, so a layer's blocks add up to the whole layer.

    Parameters
    ----------
    weights : Tensor of shape [batch, head, query, key]
        One block, first row at ``query_start``; padded rows and columns exactly 0.
    input_ids : Tensor of shape [batch, seq]
    query_start : int
    exclude_bos, exclude_current_token : bool

    Returns
    -------
    dict of str to Tensor of shape [batch, head]
        ``previous_token``, ``duplicate_token``, ``induction``: ``sum(A * P)``; ``mass``: ``sum(A)`` after
        the exclusions (their common denominator); ``sink_first``: ``sum_i A[i, 0]`` (no exclusions).
    """
    q0 = query_start
    q1 = q0 + weights.shape[-2]
    # Row r is position q0 + r, so the previous-token entries A[i, i-1] are the block's diagonal q0 - 1.
    previous = torch.diagonal(weights, q0 - 1, dim1=-2, dim2=-1).sum(-1)
    if exclude_bos and q0 <= 1 < q1:
        previous = previous - weights[:, :, 1 - q0, 0]  # A[1, 0] lies in column 0
    duplicate, induction = token_patterns(input_ids, q0, q1, exclude_bos, exclude_current_token)
    # einsum contracts query and key in one matrix product: no temporary as large as the block.
    dtype = weights.dtype
    return {
        "previous_token": previous,
        "duplicate_token": torch.einsum("bhqk,bqk->bh", weights, duplicate.to(dtype)),
        "induction": torch.einsum("bhqk,bqk->bh", weights, induction.to(dtype)),
        "mass": kept_row_mass(weights, q0, exclude_bos, exclude_current_token).sum(-1),
        "sink_first": weights[..., 0].sum(-1),
    }


def prefix_matching_sums(weights: torch.Tensor, query_start: int, length: int, offset: int,
                         exclude_bos: bool = False, exclude_current_token: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerator and denominator of the prefix-matching score for one block of an induction-probe sequence.

    The sequence is ``offset`` leading tokens (1 for a BOS, else 0) and then ``length`` random tokens twice;
    the rows of the second repeat are positions ``offset + length .. offset + 2 * length - 1``, and row ``i``
    is scored on key ``i - length + 1``, the token after the earlier copy of token ``i``.

    Parameters
    ----------
    weights : Tensor of shape [batch, head, query, key]
        One block of query rows, the first at ``query_start``.
    query_start, length, offset : int
    exclude_bos, exclude_current_token : bool
        Only change the denominator: the scored key is never position 0 nor the query itself (length >= 2).

    Returns
    -------
    numerator, denominator : Tensor of shape [batch, head]
        ``sum_i A[i, i - length + 1]`` and ``sum_i sum_j A[i, j]`` (after exclusions) over the block's rows
        of the second repeat.
    """
    b, h, rows, _ = weights.shape
    pos = torch.arange(query_start, query_start + rows, device=weights.device)
    second = ((pos >= offset + length) & (pos < offset + 2 * length)).to(weights.dtype)
    target = (pos - length + 1).clamp_min(0)
    picked = weights.gather(-1, target.view(1, 1, rows, 1).expand(b, h, rows, 1)).squeeze(-1)
    numerator = (picked * second).sum(-1)
    denominator = (kept_row_mass(weights, query_start, exclude_bos, exclude_current_token) * second.double()).sum(-1)
    return numerator, denominator


def uniform_block(lengths: torch.Tensor, query_start: int, rows: int, keys: int) -> torch.Tensor:
    """The block a head attending uniformly over its keys would give: the chance level's attention.

    Parameters
    ----------
    lengths : Tensor of shape [batch]
        Real tokens of each sequence (right-aligned, as the capture hands blocks over).
    query_start, rows, keys : int
        The block's first query position, its rows and the keys of the batch.

    Returns
    -------
    Tensor of shape [batch, 1, rows, keys]
        float32: ``1/(i+1)`` on keys ``0..i`` of each real row ``i``; padded rows and keys 0.
    """
    dev = lengths.device
    pos = torch.arange(query_start, query_start + rows, device=dev)[:, None]
    key = torch.arange(keys, device=dev)[None, :]
    seen = (key <= pos)[None] & (pos[None] < lengths[:, None, None])
    return (seen.to(torch.float32) / (pos + 1).to(torch.float32))[:, None]


def sink_alphas(column_sums: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gu et al.'s ``alpha_k`` of each sequence and head: the mean attention to key ``k`` over the rows that see it.

    ``alpha_k = sum_{i >= k} A[i, k] / (n - k)``, as ``compute_attention_sink`` of their released
    ``eval_sink_open_source.py`` (``(A / ratios).sum(dim=-2)`` with ``ratios[..., i, k] = T - k``; a causal
    ``A[i, k]`` is 0 for ``i < k``).

    Parameters
    ----------
    column_sums : Tensor of shape [batch, layer, head, key]
        ``sum_i A[i, k]`` over every real row of each sequence (padding exactly 0).
    lengths : Tensor of shape [batch]
        Real tokens ``n`` of each sequence (positions ``0 .. n - 1``).

    Returns
    -------
    alpha : Tensor of shape [batch, layer, head, key]
        float64, 0 at ``k >= n``.
    defined : Tensor of shape [batch, 1, 1, key]
        bool: ``k < n``.
    """
    keys = column_sums.shape[-1]
    k = torch.arange(keys, device=column_sums.device, dtype=torch.float64)
    n = lengths.to(column_sums.device, torch.float64)[:, None, None, None]
    defined = k < n
    alpha = torch.where(defined, column_sums.double() / (n - k).clamp_min(1.0), 0.0)
    return alpha, defined
