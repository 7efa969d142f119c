"""What each head predicts from a word-level map, and whether it is the gold head (``syntax``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from headscope.model.encode import Example

#: Directions, in the order of the ``direction`` axis of the counts.
DIRECTIONS = ("dep->head", "head->dep")


@dataclass
class BatchArcs:
    """One batch's scorable arcs on the model's device, kept from ``begin_batch`` for every layer."""

    row: torch.Tensor
    """int64 [arc]: batch row of the arc's example."""
    dep: torch.Tensor
    """int64 [arc]: unit of the dependent."""
    head: torch.Tensor
    """int64 [arc]: unit of the gold head."""
    index: torch.Tensor
    """int64 [arc]: split * n_relations + relation, the arc's row in the flattened counts."""
    is_word: torch.Tensor
    """bool [batch, unit]: units that are words."""
    possessive: torch.Tensor | None = None
    """int64 [arc]: unit of the ``'s`` scored instead (Clark et al.'s possessive rule), -1 where it does not
    apply; None under headscope conventions."""
    last: torch.Tensor | None = None
    """int64 [arc]: unit of the sentence's last word (the rule's guard)."""


def word_unit_mask(examples: list[Example], n_units: int, device: torch.device | str) -> torch.Tensor:
    """bool Tensor of shape [batch, unit], True at units that are words (not special tokens, not padding)."""
    mask = np.zeros((len(examples), n_units), dtype=bool)
    for r, ex in enumerate(examples):
        units = ex.word_units[ex.word_units >= 0]
        mask[r, units] = True
    return torch.from_numpy(mask).to(device)


def most_attended_words(word_attn: torch.Tensor, is_word: torch.Tensor, self_weight: float | None = None
                        ) -> torch.Tensor:
    """The word each word attends to most, in both directions.

    Parameters
    ----------
    word_attn : Tensor of shape [batch, layer, head, unit, unit]
    is_word : Tensor of shape [batch, unit], bool
    self_weight : float, optional
        None: a word never predicts itself. A number: the diagonal is set to it instead (Clark et al. set it
        to 0, so a row whose other words all have weight 0 predicts the word itself).

    Returns
    -------
    Tensor of shape [direction, batch, layer, head, unit], int64
        Direction 0 (``dep->head``): argmax over the row of ``A``; direction 1 (``head->dep``): argmax over
        the row of ``A`` transposed. Non-word units are never chosen; ties go to the lowest unit.
    """
    n = word_attn.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=word_attn.device)
    not_word = ~is_word[:, None, None, None, :]
    out = []
    for attn in (word_attn, word_attn.transpose(-1, -2)):
        if self_weight is None:
            attn = attn.masked_fill(not_word | eye, float("-inf"))
        else:
            attn = attn.masked_fill(eye, self_weight).masked_fill(not_word, float("-inf"))
        out.append(attn.argmax(-1))
    return torch.stack(out)


def correct_predictions(words: torch.Tensor, arcs: BatchArcs, clark: bool) -> torch.Tensor:
    """Whether each head finds each arc's gold head, in both directions.

    Parameters
    ----------
    words : Tensor of shape [batch, head, unit, unit]
        One layer's word-level attention (at least as many unit slots as ``arcs.is_word``).
    arcs : BatchArcs
    clark : bool
        Clark et al.'s conventions: the diagonal set to 0 rather than excluded, and their possessive rule
        (``arcs.possessive``).

    Returns
    -------
    Tensor of shape [direction, arc, head], int64
        1 where the head's prediction for the arc's dependent is its gold head.
    """
    # The engine sizes the map for the whole batch; units past this sub-batch's are empty slots.
    n = int(arcs.is_word.shape[1])
    predicted = most_attended_words(words[:, None, :, :n, :n], arcs.is_word,
                                    self_weight=0.0 if clark else None)  # [dir, batch, 1, head, unit]
    out = []
    for d in range(len(DIRECTIONS)):
        pred = predicted[d, :, 0]  # [batch, head, unit]
        own = pred[arcs.row, :, arcs.dep]  # [arc, head]
        if arcs.possessive is not None and arcs.last is not None:  # set together (clark conventions)
            # Clark et al.'s possessive rule: score the 's's prediction instead, unless the dependent's own
            # prediction is the sentence's last word (their ``p < len(words)``).
            instead = pred[arcs.row, :, arcs.possessive.clamp_min(0)]
            fires = (arcs.possessive >= 0)[:, None] & (own != arcs.last[:, None])
            own = torch.where(fires, instead, own)
        out.append((own == arcs.head[:, None]).to(torch.int64))
    return torch.stack(out)
