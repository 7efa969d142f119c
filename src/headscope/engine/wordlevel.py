"""Word-level attention: from a piece x piece map to a unit x unit map.

Clark et al.: attention *to* a split word is the sum over its pieces; attention *from* a split word is the
mean over its pieces' rows (``mode="mean"``, rows still sum to 1) or, as their released code did, the first
piece's row (``mode="first"``). Special tokens are units of their own.

Clark et al.'s released code (``bpe_utils.get_word_word_attention``) sums a split word's columns in float16
NumPy arithmetic; :class:`WordAttention` with ``float16=True`` does the same sums (``syntax`` under
``--conventions clark``).
"""

from __future__ import annotations

import typing

import torch

from headscope.config import WordMode


def unit_maps(unit_of_piece: torch.Tensor, n_units: int, mode: WordMode = "mean"
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
                   mode: WordMode = "mean") -> torch.Tensor:
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


class WordAttention:
    """Word-level attention of one batch, built layer by layer from blocks of piece-level query rows.

    The same sums as :func:`word_attention`, with scatter-adds instead of dense pooling matrices, so the cost
    is that of reading the piece map once (it stays O(seq^2) however many words a long window holds), and
    query blocks add up: a word whose pieces fall in two blocks gets both parts.

    Parameters
    ----------
    unit_of_piece : Tensor of shape [batch, seq]
        Unit of each position, -1 on padding.
    n_units : int
        Unit slots (at least the largest unit count in the batch).
    mode : {"mean", "first"}
    float16 : bool
        Attention to a split word summed as Clark et al.'s NumPy code sums it from float16 maps: one float16
        addition per piece, from the first, each result rounded to float16 (their ``attn[:, word].sum(-1)``
        on a float16 array that the fancy index lays out column-major). The weights given to :meth:`add`
        should then hold float16 values. Only with ``mode="first"`` (their rows), where a unit's row is one
        piece's row, so the result is the float16 column sums exactly.
    """

    def __init__(self, unit_of_piece: torch.Tensor, n_units: int, mode: WordMode = "mean",
                 float16: bool = False) -> None:
        if mode not in typing.get_args(WordMode):
            raise ValueError(f"mode must be 'mean' or 'first', got {mode!r}")
        if float16 and mode != "first":
            raise ValueError("float16 column sums are Clark et al.'s, with mode='first' only")
        self.n_units = n_units
        self.float16 = float16
        valid = unit_of_piece >= 0
        self.unit = unit_of_piece.clamp_min(0)  # padding columns are 0, so slot 0 gets nothing from them
        counts = torch.zeros(unit_of_piece.shape[0], n_units, device=unit_of_piece.device)
        counts.scatter_add_(1, self.unit, valid.float())
        if mode == "mean":
            self.from_weight = valid.float() / counts.gather(1, self.unit).clamp_min(1.0)
        else:
            previous = torch.cat([torch.full_like(self.unit[:, :1], -1), self.unit[:, :-1]], dim=1)
            self.from_weight = (valid & (self.unit != previous)).float()
        self._sum: torch.Tensor | None = None
        if float16:
            # A unit's first piece (n for an empty slot) and its number of pieces: the float16 sums run over them.
            b, n = unit_of_piece.shape
            positions = torch.arange(n, device=unit_of_piece.device).expand(b, n)
            self.first = torch.full((b, n_units), n, dtype=torch.int64, device=unit_of_piece.device)
            self.first.scatter_reduce_(1, self.unit, torch.where(valid, positions, n), reduce="amin")
            self.count = counts.long()

    def add(self, weights: torch.Tensor, query_start: int) -> torch.Tensor | None:
        """Add a block of rows of one layer; returns the layer's word map after its last block, else None.

        Parameters
        ----------
        weights : Tensor of shape [batch, head, query, key]
            Rows ``query_start ...`` of the layer.

        Returns
        -------
        Tensor of shape [batch, head, unit, unit] or None
            Rows of real units sum to 1; valid until the next layer's first block.
        """
        b, h, q, n = weights.shape
        q1 = query_start + q
        if query_start == 0 or self._sum is None:
            self._sum = weights.new_zeros(b, h, self.n_units, self.n_units)
        if self.float16:
            to_units = self._float16_columns(weights)
        else:
            to_units = weights.new_zeros(b, h, q, self.n_units)
            to_units.scatter_add_(3, self.unit[:, None, None, :].expand(b, h, q, n), weights)
        to_units.mul_(self.from_weight[:, None, query_start:q1, None])
        rows = self.unit[:, None, query_start:q1, None].expand(b, h, q, self.n_units)
        self._sum.scatter_add_(2, rows, to_units)
        return self._sum if q1 >= n else None

    def _float16_columns(self, weights: torch.Tensor) -> torch.Tensor:
        """Attention of each query row to each unit, summed over the unit's pieces in float16 steps.

        Parameters
        ----------
        weights : Tensor of shape [batch, head, query, key]
            float16 values (in any floating dtype).

        Returns
        -------
        Tensor of shape [batch, head, query, unit]
            0 in empty unit slots.
        """
        b, h, q, n = weights.shape
        columns = weights.new_zeros(b, h, q, self.n_units)
        for k in range(int(self.count.max()) if self.count.numel() else 0):
            has = (self.count > k)[:, None, None, :]  # [batch, 1, 1, unit]: the unit has a k-th piece
            at = (self.first + k).clamp(max=n - 1)[:, None, None, :].expand(b, h, q, self.n_units)
            piece = weights.gather(3, at)
            # One float16 addition, rounded (ties to even) as NumPy's float16 arithmetic rounds it.
            columns = torch.where(has, piece if k == 0 else (columns + piece).to(torch.float16).to(columns.dtype),
                                  columns)
        return columns
