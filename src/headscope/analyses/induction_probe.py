"""The induction probe's inputs (:mod:`headscope.analyses.decoder_heads`): random ordinary tokens repeated twice,
drawn from the run's seed (stream ``decoder_heads.probe`` of :mod:`headscope.seeds`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from headscope.seeds import Seeds

if TYPE_CHECKING:
    from headscope.engine.codec import TokenCodec


def probe_candidates(codec: TokenCodec, vocab_size: int | None = None) -> np.ndarray:
    """int64 ids a probe token may be drawn from: the vocabulary (capped by the model's) without special tokens."""
    size = codec.size if vocab_size is None else min(codec.size, int(vocab_size))
    keep = np.ones(size, dtype=bool)
    special = np.asarray([i for i in codec.special_ids if 0 <= i < size], dtype=np.int64)
    keep[special] = False
    return np.flatnonzero(keep).astype(np.int64)


def probe_sequences(candidates: np.ndarray, n: int, length: int, seed: int, bos: int | None = None
                    ) -> list[np.ndarray]:
    """``n`` sequences of ``length`` distinct random tokens repeated twice, BOS first when ``bos`` is given.

    Sequence ``k`` depends only on ``seed`` and ``k``. Tokens are distinct within a repeat so that each query
    of the second repeat has exactly one earlier copy (and so one prefix-matching target).

    Returns
    -------
    list of ndarray of shape (offset + 2 * length,)
        int64 ids, ``offset`` = 1 with a BOS, else 0.
    """
    if length > len(candidates):
        raise ValueError(f"induction_length {length} is more than the {len(candidates)} ordinary tokens of the "
                         "vocabulary")
    head = np.asarray([] if bos is None else [bos], dtype=np.int64)
    out = []
    for k in range(n):
        tokens = Seeds(seed).rng("decoder_heads.probe", k).choice(candidates, size=length, replace=False)
        out.append(np.concatenate([head, tokens, tokens]).astype(np.int64))
    return out
