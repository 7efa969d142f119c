"""Syntactic roles: the dependency arcs of each relation, as word-level and piece-level slots."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from headscope.analyses.relations import collapse_relation
from headscope.analyses.roles.options import (
    ALIASES,
    DEFAULT_RELATIONS,
)
from headscope.analyses.roles.scores import sieve_norms
from headscope.analyses.trees import tree_sentences

if TYPE_CHECKING:
    from headscope.engine.batch import Batch


def relation_matches(relation: str, deprel: str, exact: bool = False) -> bool:
    """Whether dependency label ``deprel`` counts as ``relation`` (exact, alias, or universal part).

    ``exact``: the label or an alias only (Pande et al. compare spaCy's labels with ``==``).
    """
    names = ALIASES.get(relation, (relation,))
    return deprel in names or (not exact and collapse_relation(deprel) in names)


def syntactic_arcs(examples: list[Any], relations: list[str], exact: bool = False
                   ) -> list[tuple[int, int, int, int, int]]:
    """Dependent -> head arcs of the given relations, as unit indices.

    Parameters
    ----------
    examples : list of Example
    relations : list of str
        Relation ``r`` gets role index ``r``'s position in this list.
    exact : bool
        Match labels exactly (:func:`relation_matches`).

    Returns
    -------
    list of (example row, relation index, dependent unit, head unit, sentence index in the example)
        Arcs whose dependent or head word got no piece (or was cut) are left out; the root is never a head.
    """
    arcs = []
    for tree in tree_sentences(examples):
        deprels = tree.sentence.deprels
        assert deprels is not None  # a sentence with a tree
        head_units = tree.head_units
        # Only arcs with attention to score (not an arc inside one unit, a multiword token read from its text).
        for d in np.flatnonzero(tree.scorable):
            for r, relation in enumerate(relations):
                if relation_matches(relation, deprels[d], exact):
                    arcs.append((tree.row, r, int(tree.units[d]), int(head_units[d]), tree.number))
    return arcs


@dataclass
class DependentSlots:
    """The syntactic roles' dependents of one batch: the queries of word-level attention they read.

    Each batch row with an arc gets one slot per distinct dependent unit (a word can be the dependent of
    one arc only, but of several matching relations).
    """

    roles: list[str]
    """``syntactic`` (the union of the default relations), then ``syntactic_<rel>`` per relation."""
    index: torch.Tensor
    """int64 [rows]: the batch rows with at least one arc."""
    dependent: torch.Tensor
    """int64 [rows, slot]: unit of the slot's dependent (0 in unused slots)."""
    head_word: torch.Tensor
    """int64 [rows, slot]: unit of its head word."""
    in_relation: torch.Tensor
    """float32 [rows, role, slot]: 1 where the slot's arc has the role's relation (``|T(i)|`` of the query)."""
    queries: torch.Tensor
    """bool [rows, slot]: every slot may count (``in_relation`` leaves out the others)."""
    units: torch.Tensor
    """float32 [rows, slot, unit]: the unit of observation of each slot (its dependent's sentence, or the row)."""
    factor: list[torch.Tensor]
    """Per role, float64 [rows, unit]: ``n`` (units) over the role's dependents (:func:`sieve_norms`)."""
    valid: list[torch.Tensor]
    """Per role, bool [rows, unit]: True when the row's unit holds the relation."""


def dependent_slots(batch: Batch, relations: list[str], exact: bool = False, unit: str = "input"
                    ) -> DependentSlots | None:
    """The :class:`DependentSlots` of ``batch`` for ``relations``; None when it has no arc of them.

    ``unit``: ``input`` scores each row once, ``sentence`` each sentence of a row (:func:`unit_membership`).
    """
    arcs = syntactic_arcs(batch.examples, relations, exact)
    if not arcs:
        return None
    roles = ["syntactic", *(f"syntactic_{r}" for r in relations)]
    rows = sorted({row for row, *_ in arcs})
    local = {row: k for k, row in enumerate(rows)}
    slots: list[dict[int, int]] = [{} for _ in rows]
    for row, _, d, _, _ in arcs:
        slots[local[row]].setdefault(d, len(slots[local[row]]))
    m = max(len(s) for s in slots)
    dev = batch.input_ids.device
    dependent = torch.zeros(len(rows), m, dtype=torch.int64, device=dev)
    head_word = torch.zeros(len(rows), m, dtype=torch.int64, device=dev)
    in_relation = torch.zeros(len(rows), len(roles), m, dtype=torch.float32, device=dev)
    n_units = max(len(batch.examples[row].sentences) for row in rows) if unit == "sentence" else 1
    units = torch.zeros(len(rows), m, n_units, dtype=torch.float32, device=dev)
    for row, r, d, h, sentence in arcs:
        k, slot = local[row], slots[local[row]][d]
        dependent[k, slot], head_word[k, slot] = d, h
        units[k, slot, sentence if unit == "sentence" else 0] = 1.0
        in_relation[k, r + 1, slot] = 1.0
        # Role 0 is the union: every arc of a default relation counts for it as well.
        if relations[r] in DEFAULT_RELATIONS:
            in_relation[k, 0, slot] = 1.0
    index = torch.tensor(rows, dtype=torch.int64, device=dev)
    queries = torch.ones(len(rows), m, dtype=torch.bool, device=dev)
    norms = [sieve_norms(in_relation[:, r], queries, batch.n_units[index], units) for r in range(len(roles))]
    return DependentSlots(roles, index, dependent, head_word, in_relation, queries, units,
                          [f for f, _ in norms], [v for _, v in norms])


@dataclass
class PieceSlots:
    """The dependents' and head words' pieces of :class:`DependentSlots`, as Pande et al. find them.

    Each word's pieces are looked up by id in the word's segment, first occurrence first (their
    ``final_sent.index(piece)``), so a piece that occurs earlier in the segment points there.
    """

    from_weight: torch.Tensor
    """float32 [rows, slot, seq]: weight of each position in the mean over the dependent's pieces."""
    to_weight: torch.Tensor
    """float32 [rows, slot, seq]: weight of each position in the mean over the head word's pieces."""
    n: torch.Tensor
    """float64 [rows]: pieces of the sequence (Pande et al.'s ``sent_len``)."""


def first_occurrences(unit_of_piece: np.ndarray, ids: np.ndarray, segment: np.ndarray, unit: int) -> list[int]:
    """Where Pande et al. look a word's pieces up: for each piece, the first position of its id in the segment.

    Parameters
    ----------
    unit_of_piece, ids, segment : ndarray of shape (seq,)
        One sequence's alignment, token ids and segments.
    unit : int
        The word's unit.
    """
    pieces = np.flatnonzero(unit_of_piece == unit)
    in_b = np.flatnonzero(segment == 1)
    start = int(in_b[0]) if len(in_b) and len(pieces) and pieces[0] >= in_b[0] else 0
    return [start + int(np.flatnonzero(ids[start:] == ids[p])[0]) for p in pieces]


def piece_slots(batch: Batch, dep: DependentSlots) -> PieceSlots:
    """The :class:`PieceSlots` of ``dep``'s slots in ``batch``."""
    rows, slots = dep.dependent.shape
    seq = batch.input_ids.shape[1]
    from_w = np.zeros((rows, slots, seq), dtype=np.float32)
    to_w = np.zeros((rows, slots, seq), dtype=np.float32)
    unit_of_piece = batch.unit_of_piece.cpu().numpy()
    ids = batch.input_ids.cpu().numpy()
    segment = batch.segment.cpu().numpy()
    used = dep.in_relation.sum(1).cpu().numpy() > 0  # [rows, slot]
    for k, row in enumerate(dep.index.tolist()):
        for slot in range(slots):
            if not used[k, slot]:
                continue
            for weights, unit in ((from_w, dep.dependent[k, slot]), (to_w, dep.head_word[k, slot])):
                found = first_occurrences(unit_of_piece[row], ids[row], segment[row], int(unit))
                for position in found:
                    weights[k, slot, position] += 1.0 / len(found)
    dev = batch.input_ids.device
    return PieceSlots(torch.from_numpy(from_w).to(dev), torch.from_numpy(to_w).to(dev),
                      batch.lengths.index_select(0, dep.index).to(torch.float64))
