"""Coreference mentions as the readers attach them to sentences, and how a mention's head word is found.

Both coreference readers (:mod:`headscope.corpus.coref_readers`) put a list of :class:`Mention` in
``Sentence.annotations["mentions"]``; window planning (:mod:`headscope.corpus.coref_windows`) and the
``coref`` analysis read them from there. This module holds only what all of them share: the mention type,
the head-word finders of the two formats (:func:`tree_head` from a dependency tree, :func:`heuristic_head`
from Penn Treebank tags) and the mention types by head part of speech (:func:`mention_type`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: Mention types, by the universal part of speech of the mention's head word (anything else is ``other``).
MENTION_TYPES = ("pronoun", "proper", "nominal", "other")
_TYPE_OF_UPOS = {"PRON": "pronoun", "PROPN": "proper", "NOUN": "nominal"}

#: Tags that end the pre-head part of a noun phrase in :func:`heuristic_head` (post-modifiers start there).
_POSTMODIFIER_TAGS = {"IN", "TO", "WDT", "WP", "WP$", "WRB", "CC", ",", ":", "-LRB-", "VB", "VBD", "VBG",
                      "VBN", "VBP", "VBZ", "MD"}


@dataclass(frozen=True)
class Mention:
    """One mention of an entity, inside one sentence."""

    entity: str
    """Entity (cluster) identifier, unique within its document."""
    words: tuple[int, ...]
    """0-based indices of the mention's words in its sentence, ascending (a contiguous span unless the
    source marked a discontinuous mention)."""
    head: int
    """0-based index in the sentence of the mention's head word."""
    line: int
    """1-based line of the word that opens the mention (for messages)."""

    @property
    def start(self) -> int:
        """Index of the first word."""
        return self.words[0]

    @property
    def end(self) -> int:
        """Index of the last word (inclusive)."""
        return self.words[-1]


def mention_type(upos: str | None) -> str:
    """``pronoun`` (PRON), ``proper`` (PROPN), ``nominal`` (NOUN) or ``other``, from the head's UPOS.

    Parameters
    ----------
    upos : str or None
        Universal part of speech of the mention's head word; None when the sentence has none.

    Returns
    -------
    str
        One of :data:`MENTION_TYPES`.
    """
    return _TYPE_OF_UPOS.get(upos or "", "other")


def tree_head(heads: list[int], words: Iterable[int]) -> int:
    """The syntactic head of a set of words: the word whose head lies outside the set.

    Parameters
    ----------
    heads : list of int
        CoNLL-U heads of the sentence (1-based, 0 for the root).
    words : iterable of int
        0-based indices of the mention's words.

    Returns
    -------
    int
        The 0-based index of the head word. When several words have their head outside the set (the span
        is not one subtree), the one closest to the root wins, then the leftmost.
    """
    inside = set(words)

    def depth(k: int) -> int:
        d = 0
        while heads[k] != 0:
            k = heads[k] - 1
            d += 1
        return d

    exits = [k for k in sorted(inside) if heads[k] == 0 or heads[k] - 1 not in inside]
    return min(exits, key=lambda k: (depth(k), k))


def heuristic_head(tags: list[str], words: Iterable[int]) -> int:
    """Head word of a mention without a dependency tree, from Penn Treebank tags.

    The pre-head part of the noun phrase ends at the first post-modifier (a preposition, ``to``, a
    wh-word, a conjunction, a comma/colon/bracket or a verb, after the first word); its head is the last
    noun, pronoun or number in that part (``the king 's daughter`` -> daughter, ``the city of Paris`` ->
    city, ``John and Mary`` -> John), else its last word.

    Parameters
    ----------
    tags : list of str
        Penn Treebank tag of every word of the sentence.
    words : iterable of int
        0-based indices of the mention's words.

    Returns
    -------
    int
        The 0-based index of the head word in the sentence.
    """
    span = sorted(words)
    prefix = [span[0]]
    for k in span[1:]:
        if tags[k] in _POSTMODIFIER_TAGS:
            break
        prefix.append(k)
    nominal = [k for k in prefix if tags[k].startswith(("NN", "PRP", "WP", "CD"))]
    return nominal[-1] if nominal else prefix[-1]
