"""The walk over the dependency trees of a batch that ``syntax``, ``roles`` and ``probe`` share.

Each sentence with a tree (gold or silver) comes with its words' units (``Example.sentence_units``: the
tokenizer alignment, -1 for a word that got no piece) and its heads as arrays, and with the arcs that have
attention to read: both ends aligned to a unit each, the two units distinct (the syntactic words of a
multiword token read from its text, "do" + "n't" in "don't", share one unit and have nothing to attend to).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from headscope.corpus.types import Sentence
    from headscope.model.encode import Example


@dataclass
class TreeSentence:
    """One sentence with a dependency tree, in the units of its example."""

    row: int
    """Batch row (position in the list walked) of the sentence's example."""
    number: int
    """Index of the sentence in its example (``Example.sentences``)."""
    sentence: Sentence
    """The sentence itself (words, deprels, upos, silver)."""
    units: np.ndarray
    """int64 of shape (n_words,): unit of each word, -1 where the word got no piece."""
    heads: np.ndarray
    """int64 of shape (n_words,): each word's head, 1-based, 0 for ROOT (CoNLL-U ``HEAD``)."""

    @property
    def head_units(self) -> np.ndarray:
        """int64 of shape (n_words,): unit of each word's head, -1 for ROOT or a head without a piece."""
        attached = self.heads > 0
        return np.where(attached, self.units[np.clip(self.heads - 1, 0, None)], -1)

    @property
    def scorable(self) -> np.ndarray:
        """bool of shape (n_words,): the word's arc to its head has attention to read (both ends in units of
        their own, not ROOT)."""
        head_units = self.head_units
        return (self.heads > 0) & (self.units >= 0) & (head_units >= 0) & (head_units != self.units)


def tree_sentences(examples: list[Example]) -> Iterator[TreeSentence]:
    """Every sentence with a dependency tree of ``examples``, in order (example by example)."""
    for row, ex in enumerate(examples):
        for k, sentence in enumerate(ex.sentences):
            if not sentence.has_tree:
                continue
            units = np.asarray(ex.sentence_units(k), dtype=np.int64)
            yield TreeSentence(row, k, sentence, units, np.asarray(sentence.heads, dtype=np.int64))
