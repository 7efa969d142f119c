"""Word-level attention: from a piece x piece map to a unit x unit map.

Clark et al.: attention *to* a split word is the sum over its pieces; attention *from* a split word is the
mean over its pieces' rows (``mode="mean"``, rows still sum to 1) or, as their released code did, the first
piece's row (``mode="first"``). Special tokens are units of their own.
"""

from __future__ import annotations

import numpy as np
import torch


def unit_maps(unit_of_piece: torch.Tensor, n_units: int, mode: str = "mean"
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooling matrices from pieces to units.

    Parameters
    ----------
    unit_of_piece : Tensor of shape [batch, seq]
        Unit index of each position, -1 on padding.
    n_units : int
        Number of unit slots (at least the largest unit count in the batch).
    mode : {"mean", "first"}

    Returns
    -------
    from_map : Tensor of shape [batch, unit, seq]
        Row u averages (or picks the first of) the query rows of unit u's pieces.
    to_map : Tensor of shape [batch, unit, seq]
        Row u is 1 on unit u's pieces (sums attention to them).
    """
    valid = unit_of_piece >= 0
    idx = unit_of_piece.clamp_min(0)
    to_map = torch.zeros(unit_of_piece.shape[0], n_units, unit_of_piece.shape[1],
                         device=unit_of_piece.device, dtype=torch.float32)
    to_map.scatter_(1, idx[:, None, :], valid[:, None, :].float())
    if mode == "mean":
        from_map = to_map / to_map.sum(-1, keepdim=True).clamp_min(1.0)
    elif mode == "first":
        first = torch.cumsum(to_map, dim=-1) == 1
        from_map = (first & (to_map > 0)).float()
    else:
        raise ValueError(f"mode must be 'mean' or 'first', got {mode!r}")
    return from_map, to_map


def word_attention(attn: torch.Tensor, unit_of_piece: torch.Tensor, n_units: int | None = None,
                   mode: str = "mean") -> torch.Tensor:
    """Convert piece-level attention to unit-level attention for a whole batch.

    Parameters
    ----------
    attn : Tensor of shape [batch, layer, head, query, key]
    unit_of_piece : Tensor of shape [batch, seq]
    n_units : int, optional
        Unit slots; default the largest unit index + 1.
    mode : {"mean", "first"}

    Returns
    -------
    Tensor of shape [batch, layer, head, unit, unit]
        Rows of real units sum to 1 (as the piece rows did); padding units are 0.
    """
    if n_units is None:
        n_units = int(unit_of_piece.max().item()) + 1
    from_map, to_map = unit_maps(unit_of_piece, n_units, mode)
    return torch.einsum("bwi,blhij,bvj->blhwv", from_map, attn.float(), to_map)


def word_attention_reference(attn: np.ndarray, groups: list[list[int]], mode: str = "mean") -> np.ndarray:
    """Plain-loop version of :func:`word_attention` for one map, for tests and checks.

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
