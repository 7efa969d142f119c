"""The probe's inputs: per-sentence attention features, and sentences padded into training batches."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from headscope.analyses.probe.store import ProbeSentences


def sentence_features(word_attn: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """The probe's features of one sentence.

    Parameters
    ----------
    word_attn : Tensor of shape [layer, head, unit, unit]
        Word-level attention of the sentence's example (any number of layers, one included).
    units : Tensor of shape [1 + n], int64
        The ROOT stand-in unit (-1 for none) followed by the units of the sentence's words.

    Returns
    -------
    Tensor of shape [layer * head, 1 + n, 1 + n]
        ``out[k, a, b]`` = attention of candidate ``a`` to candidate ``b`` in head ``k``; zero for a
        ROOT without a stand-in unit.
    """
    L, H, m = word_attn.shape[0], word_attn.shape[1], word_attn.shape[-1]
    rows = torch.zeros(1, dtype=torch.int64, device=word_attn.device)
    return batch_sentence_features(word_attn.reshape(1, L * H, m, m), rows, units[None])[0]


def batch_sentence_features(word_attn: torch.Tensor, rows: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """:func:`sentence_features` of many sentences of a batch at once.

    Parameters
    ----------
    word_attn : Tensor of shape [batch, feature, unit, unit]
        Word-level attention of the batch (one layer's heads, or every layer's flattened).
    rows : Tensor of shape [sentence], int64
        Batch row of each sentence's example.
    units : Tensor of shape [sentence, 1 + n], int64
        Per sentence, the ROOT stand-in unit (-1 for none) and its words' units, padded with -1 to the
        longest sentence.

    Returns
    -------
    Tensor of shape [sentence, feature, 1 + n, 1 + n]
        ``out[s, k, a, b]`` = attention of candidate ``a`` to candidate ``b`` of sentence ``s`` in feature
        ``k``; zero where ``a`` or ``b`` is -1 (ROOT without a stand-in, padding).
    """
    present = units >= 0
    idx = units.clamp_min(0)
    sub = word_attn[rows[:, None, None], :, idx[:, :, None], idx[:, None, :]].permute(0, 3, 1, 2)
    keep = (present[:, :, None] & present[:, None, :]).to(sub.dtype)
    return sub * keep[:, None]


def pad_batch(data: ProbeSentences, indices: np.ndarray, vectors: Any | None, use_features: bool
              ) -> dict[str, torch.Tensor]:
    """Pad the sentences ``indices`` into one batch.

    Returns
    -------
    dict with
        ``features`` [batch, feature, cand, cand] (when ``use_features``), ``vectors`` [batch, cand, dim]
        and ``found`` [batch, cand] (when ``vectors`` is given; row 0 is ROOT), ``heads`` [batch, cand]
        (-1 outside real dependents; row 0 is ROOT, never a dependent), ``punct`` [batch, cand] and
        ``valid`` [batch, cand] (real candidates).
    """
    sizes = [data.features.sizes[i] for i in indices]
    b, m = len(indices), max(sizes)
    heads = torch.full((b, m), -1, dtype=torch.int64)
    punct = torch.zeros((b, m), dtype=torch.bool)
    valid = torch.zeros((b, m), dtype=torch.bool)
    out: dict[str, torch.Tensor] = {}
    if use_features:
        feats = torch.zeros((b, data.features.n_features, m, m), dtype=torch.float32)
    if vectors is not None:
        vecs = torch.zeros((b, m, vectors.dim), dtype=torch.float32)
    for r, (i, size) in enumerate(zip(indices, sizes, strict=True)):
        heads[r, 1:size] = torch.from_numpy(data.heads[i])
        punct[r, 1:size] = torch.from_numpy(data.punct[i])
        valid[r, :size] = True
        if use_features:
            feats[r, :, :size, :size] = torch.from_numpy(np.asarray(data.features[i], dtype=np.float32))
        if vectors is not None:
            v, _ = vectors.lookup(data.words[i])
            vecs[r, 1:size] = torch.from_numpy(v)
    out.update(heads=heads, punct=punct, valid=valid)
    if use_features:
        out["features"] = feats
    if vectors is not None:
        out["vectors"] = vecs
    return out
