"""The scorable dependency arcs of a batch, and the fixed-offset baseline's hits on them (``syntax``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from headscope.analyses.relations import collapse_relation
from headscope.analyses.trees import tree_sentences

if TYPE_CHECKING:
    from headscope.corpus.types import Sentence
    from headscope.model.encode import Example

#: Offsets of the fixed-offset baseline (head position minus dependent position).
OFFSETS = (-3, -2, -1, 1, 2, 3)
#: Clark et al.'s offsets (``range(-3, 3)``), predictions clipped into the sentence.
CLARK_OFFSETS = (-3, -2, -1, 0, 1, 2)
#: Labels of Clark et al.'s possessive rule: Stanford's ``poss`` (their key) and UD's ``nmod:poss``.
POSSESSIVE_RELATIONS = ("poss", "nmod:poss")
#: The next word's forms that make the rule fire.
POSSESSIVE_MARKERS = ("'s", "s'")


@dataclass
class Arcs:
    """The scorable dependency arcs of a batch, as parallel arrays of shape (n_arcs,)."""

    row: np.ndarray
    """Batch row of the arc's example."""
    dep_unit: np.ndarray
    """Unit of the dependent."""
    head_unit: np.ndarray
    """Unit of the gold head."""
    offset: np.ndarray
    """Head position minus dependent position, in words of the sentence."""
    relation: list[str]
    """Relation label of each arc."""
    hits: np.ndarray
    """bool of shape (n_arcs, n_offsets): the fixed-offset baseline is right (offsets of the conventions)."""
    possessive_unit: np.ndarray | None = None
    """Unit of the ``'s`` whose prediction is scored instead of the dependent's (Clark et al.'s possessive
    rule), -1 where the rule does not apply; None under headscope conventions."""
    last_unit: np.ndarray | None = None
    """Unit of the sentence's last word: the rule applies only when the dependent's prediction is not it."""


def _offset_hits(position: np.ndarray, head: np.ndarray, n_words: int, possessive: np.ndarray,
                 conventions: str) -> np.ndarray:
    """Whether each offset predicts each word's head; bool of shape (n_words, n_offsets).

    headscope: head = position + offset, wrong outside the sentence, root arcs never right. clark: Clark et
    al.'s ``max(0, min(i + offset + 1, len(words)))`` (1-based, 0 = ROOT) and their possessive rule.
    """
    if conventions != "clark":
        return (head - 1 - position)[:, None] == np.asarray(OFFSETS)[None, :]
    offsets = np.asarray(CLARK_OFFSETS)[None, :]
    own = np.clip(position[:, None] + offsets + 1, 0, n_words)
    following = np.clip(position[:, None] + 1 + offsets + 1, 0, n_words)
    scored = np.where(possessive[:, None] & (own < n_words), following, own)
    return scored == head[:, None]


def _possessive(sentence: Sentence) -> np.ndarray:
    """Per word: Clark et al.'s possessive rule may apply (a poss/nmod:poss dependent followed by 's or s')."""
    words, rels = sentence.words, sentence.deprels
    assert rels is not None  # a sentence with a tree
    return np.asarray([rels[i] in POSSESSIVE_RELATIONS and i + 1 < len(words) and words[i + 1] in POSSESSIVE_MARKERS
                       for i in range(len(words))], dtype=bool)


def batch_arcs(examples: list[Example], collapse: bool, conventions: str = "headscope") -> tuple[Arcs, int, int]:
    """Every arc between two aligned words of the examples' trees.

    Parameters
    ----------
    examples : list of Example
        The batch's examples, in batch order (``Arcs.row`` indexes them).
    collapse : bool
        Relation subtypes collapsed into their universal relation (``obl:tmod`` -> ``obl``).
    conventions : {"headscope", "clark"}
        ``clark``: arcs to ROOT are kept (head unit -1, never predicted), and the possessive rule's units are
        filled in (see :mod:`headscope.analyses.syntax`).

    Returns
    -------
    arcs : Arcs
    n_root : int
        Arcs to ROOT (left out under headscope conventions, scored under clark).
    n_unaligned : int
        Arcs left out because the dependent or the head got no piece from the tokenizer, or both share one
        unit (the syntactic words of a multiword token).
    """
    clark = conventions == "clark"
    rows, deps, heads, offsets, hits, poss_units, last_units = [], [], [], [], [], [], []
    relations: list[str] = []
    n_root = n_unaligned = 0
    for tree in tree_sentences(examples):
        units, head = tree.units, tree.heads
        position = np.arange(len(head))
        attached = head > 0
        n_root += int((~attached).sum())
        scored = attached | clark  # arcs to ROOT are scored under clark conventions
        keep = tree.scorable | (clark & ~attached & (units >= 0))
        n_unaligned += int((scored & ~keep).sum())
        idx = np.flatnonzero(keep)
        rows.append(np.full(len(idx), tree.row, dtype=np.int64))
        deps.append(units[idx])
        heads.append(tree.head_units[idx])
        offsets.append(head[idx] - 1 - position[idx])
        possessive = _possessive(tree.sentence) if clark else np.zeros(len(head), dtype=bool)
        hits.append(_offset_hits(position, head, len(head), possessive, conventions)[idx])
        if clark:
            following = np.append(units[1:], -1)
            poss_units.append(np.where(possessive & (following >= 0), following, -1)[idx])
            aligned_words = units[units >= 0]
            last_units.append(np.full(len(idx), aligned_words[-1] if len(aligned_words) else -1, np.int64))
        rels = tree.sentence.deprels
        assert rels is not None  # has_tree
        relations.extend(collapse_relation(rels[i]) if collapse else rels[i] for i in idx)

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    n_offsets = len(CLARK_OFFSETS if clark else OFFSETS)
    arcs = Arcs(cat(rows), cat(deps), cat(heads), cat(offsets), relations,
                np.concatenate(hits) if hits else np.zeros((0, n_offsets), dtype=bool),
                possessive_unit=cat(poss_units) if clark else None, last_unit=cat(last_units) if clark else None)
    return arcs, n_root, n_unaligned
