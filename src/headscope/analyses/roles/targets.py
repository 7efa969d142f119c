"""The targets of the token-level roles (local, delimiter, block) and their per-unit row sums."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from headscope.analyses.roles.options import (
    WINDOW,
)
from headscope.analyses.roles.scores import sieve_norms, sieve_row_sums

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.model.encode import Example


@dataclass
class SurfaceTargets:
    """The target sets of the token-level roles for one batch, which do not depend on attention."""

    size: dict[str, torch.Tensor]
    """Per role, ``|T(i)|`` of shape [batch, seq]."""
    queries: torch.Tensor
    """bool [batch, seq]: real positions."""
    columns: torch.Tensor
    """[batch, seq, 4]: keys that are [CLS], [SEP], in segment A, in segment B."""
    in_b: torch.Tensor
    """bool [batch, seq]: positions of segment B."""
    units: torch.Tensor
    """float [batch, seq, unit]: the unit of observation of each position (:func:`unit_membership`)."""
    factor: dict[str, torch.Tensor]
    """Per role, float64 [batch, unit]: ``n`` over the unit's counted queries (:func:`sieve_norms`)."""
    valid: dict[str, torch.Tensor]
    """Per role, bool [batch, unit]: False where the role is not defined for the unit."""
    pande: bool = False
    """Pande et al.'s definitions (module docstring): rows normalised by their sum, block times row entropy."""


def sentence_of_piece(ex: Example) -> np.ndarray:
    """The source sentence (index into ``ex.sentences``) each position of ``ex`` belongs to.

    A word's pieces belong to its sentence; a special token to the sentence before it, [CLS] to the first,
    so the sentences of an input split all of its query rows between them.

    Returns
    -------
    ndarray of shape (ex.length,), int64
    """
    of_unit = np.full(ex.n_units, -1, dtype=np.int64)
    for k in range(len(ex.sentences)):
        units = ex.sentence_units(k)
        of_unit[units[units >= 0]] = k
    of_piece = of_unit[ex.unit_of_piece]
    known = np.flatnonzero(of_piece >= 0)
    if not len(known):
        return np.zeros(ex.length, dtype=np.int64)
    last = np.maximum.accumulate(np.where(of_piece >= 0, np.arange(ex.length), -1))
    return np.where(last >= 0, of_piece[np.maximum(last, 0)], of_piece[known[0]])


def unit_membership(batch: Batch, unit: str = "input") -> torch.Tensor:
    """The unit of observation of each position of ``batch``, one-hot.

    Parameters
    ----------
    unit : {"input", "sentence"}
        ``input``: the whole sequence is one unit; ``sentence``: each source sentence is one
        (:func:`sentence_of_piece`).

    Returns
    -------
    Tensor of shape [batch, seq, unit], float32
        Padding positions belong to no unit.
    """
    mask = batch.mask
    if unit == "input":
        return mask[..., None].to(torch.float32)
    units = np.zeros((*mask.shape, max(len(ex.sentences) for ex in batch.examples)), dtype=np.float32)
    for row, ex in enumerate(batch.examples):
        units[row, np.arange(ex.length), sentence_of_piece(ex)] = 1.0
    return torch.from_numpy(units).to(mask.device) * mask[..., None]


def surface_targets(batch: Batch, dtype: torch.dtype = torch.float32, conventions: str = "headscope",
                    unit: str = "input") -> SurfaceTargets:
    """The token-level roles' target sets of ``batch``: sizes, key columns, score factors and validity.

    ``conventions="pande"``: the local band's size and the block targets of Pande et al.'s notebooks.
    ``unit``: what one score is (:func:`unit_membership`).
    """
    mask = batch.mask
    b, s = mask.shape
    mask_f = mask.to(dtype)
    pande = conventions == "pande"
    seg = batch.segment
    if pande:
        pos = torch.arange(s, device=mask.device)[None, :]
        n = batch.lengths[:, None]
        # Their band_size: (min(i + 2, n) + 1) - max(0, i - 2), clipped at n rather than n - 1.
        size_local = ((torch.minimum(pos + WINDOW, n) + 1 - (pos - WINDOW).clamp_min(0)) * mask).to(dtype)
        first_sep = torch.where(batch.is_sep, pos, s).amin(-1, keepdim=True)
        words_a = mask & (pos >= 1) & (pos < first_sep)  # 1 .. sep1 - 1
        words_b = mask & (pos > first_sep) & (pos < n - 1)  # sep1 + 1 .. sep2 - 1, sep2 the last position
        in_b = pos >= first_sep
        paired = (mask & (seg == 1)).any(-1)
    else:
        size_local = torch.zeros(b, s, dtype=dtype, device=mask.device)
        for o in range(-WINDOW, WINDOW + 1):
            if abs(o) >= s:
                continue
            if o >= 0:
                size_local[:, : s - o] += mask_f[:, o:]
            else:
                size_local[:, -o:] += mask_f[:, : s + o]
        words_a, words_b = mask & (seg == 0), mask & (seg == 1)
        in_b = seg == 1
        paired = torch.ones(b, dtype=torch.bool, device=mask.device)
    columns = torch.stack([batch.is_cls, batch.is_sep, words_a, words_b], -1).to(dtype)
    n_cls, n_sep, n_a, n_b = columns.sum(1).unbind(-1)  # [batch] each
    size = {
        "local": size_local * mask_f,
        "delimiter": (n_cls + n_sep)[:, None].expand(b, s),
        "delimiter_cls": n_cls[:, None].expand(b, s),
        "delimiter_sep": n_sep[:, None].expand(b, s),
        "block": torch.where(in_b, n_b[:, None], n_a[:, None]),
    }
    units = unit_membership(batch, unit)
    factor, valid = {}, {}
    for role, role_size in size.items():
        factor[role], valid[role] = sieve_norms(role_size, mask, batch.lengths, units)
    valid["block"] = valid["block"] & ((n_a > 0) & (n_b > 0) & paired)[:, None]
    return SurfaceTargets(size, mask, columns, in_b, units, factor, valid, pande=pande)


def surface_row_sums(attn: torch.Tensor, targets: SurfaceTargets, query_start: int = 0) -> dict[str, torch.Tensor]:
    """:func:`sieve_row_sums` of the token-level roles for a block of query rows.

    The target sets are a band (local) or a set of keys per sequence or per segment (delimiter, block),
    so their sums come from diagonals and one matrix product instead of a [query, key] mask per role.

    Parameters
    ----------
    attn : Tensor of shape [batch, layer, head, query, key]
        Rows ``query_start ...`` (padding 0); ``key`` is the whole sequence.
    targets : SurfaceTargets
        Of the same batch.
    query_start : int
        Position of ``attn``'s first query row.

    Returns
    -------
    dict of role to Tensor of shape [batch, layer, head, unit], float64
        The blocks of a layer add up to the whole layer's sums.
    """
    q0, q1 = query_start, query_start + attn.shape[-2]
    queries = targets.queries[:, q0:q1]
    out: dict[str, torch.Tensor] = {}
    # local: A[i, i+o] for |o| <= WINDOW. Row r is position q0 + r, so that is diagonal q0 + o of the block;
    # it starts at row max(0, -(q0 + o)). Padding is 0, so whole diagonals can be summed.
    on_local = torch.zeros(attn.shape[:-1], dtype=attn.dtype, device=attn.device)
    for o in range(-WINDOW, WINDOW + 1):
        diag = torch.diagonal(attn, q0 + o, dim1=-2, dim2=-1)
        start = max(0, -(q0 + o))
        on_local[..., start:start + diag.shape[-1]] += diag

    sums = torch.matmul(attn, targets.columns[:, None, None].to(attn.dtype))  # [batch, layer, head, query, 4]
    on_cls, on_sep, on_a, on_b = sums.unbind(-1)
    on_block = torch.where(targets.in_b[:, None, None, q0:q1], on_b, on_a)
    if targets.pande:
        # Each query's term over the row's mean attention sum(A[i, :]) / n (the n is in the score's factor),
        # and block's times the row's entropy (scipy.stats.entropy normalises the row).
        total = attn.sum(-1)
        norm = total.clamp_min(torch.finfo(attn.dtype).tiny)
        entropy = torch.log(norm) - torch.special.xlogy(attn, attn).sum(-1) / norm
        on_local, on_cls, on_sep = on_local / norm, on_cls / norm, on_sep / norm
        on_block = on_block / norm * entropy
    on = {"local": on_local, "delimiter": on_cls + on_sep, "delimiter_cls": on_cls, "delimiter_sep": on_sep,
          "block": on_block}
    for role, on_role in on.items():
        out[role] = sieve_row_sums(on_role, targets.size[role][:, q0:q1], queries, targets.units[:, q0:q1])
    return out


def surface_scores(batch: Batch, attn: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Scores of the token-level roles for one batch, from whole maps.

    Parameters
    ----------
    attn : Tensor of shape [batch, layer, head, query, key]

    Returns
    -------
    dict of role to (scores, valid)
        ``scores`` of shape [batch, layer, head], float64; ``valid`` of shape [batch], False where the role
        is not defined (no [SEP] for ``delimiter_sep``, no segment pair for ``block``).
    """
    targets = surface_targets(batch, attn.dtype)
    return {role: (total[..., 0] * targets.factor[role][:, None, None, 0], targets.valid[role][:, 0])
            for role, total in surface_row_sums(attn, targets).items()}
