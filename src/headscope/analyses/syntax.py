"""Which heads track which dependency relations (Clark et al. 2019, section 4).

A head *predicts*, for every word, the word it attends to most, the diagonal and special tokens excluded
(word-level attention, :mod:`headscope.engine.wordlevel`). Two directions:

- ``dep->head``: the dependent's row of ``A``; correct when the most-attended word is the dependent's head;
- ``head->dep``: the dependent's row of ``A`` transposed, i.e. the word that attends most *to* the
  dependent; correct when that word is the dependent's head.

The accuracy of a head for a relation is the share of that relation's dependents it gets right. Arcs to
ROOT (``root``) have no word to attend to and are left out (counted in the summary); ``all`` pools every
other arc. Ties go to the earliest word.

The baseline for a relation is the best fixed relative offset in -3..-1, +1..+3 (head = dependent's
position + offset; an offset that leaves the sentence is wrong).

Selection: with two or more treebanks the first is the *selection* split and the last the *held-out*
split (any in between count as selection); with one treebank, or silver parses of raw text, examples are
split at random with the run's seed (``--held-out-fraction``). ``syntax_best.csv`` gives, per relation, the
head and offset picked on the selection split with their held-out accuracy, and, labelled ``same_data_``,
Clark et al.'s way: picked and scored on the held-out split itself.

No "best" rests on a handful of arcs (``--syntax-min-n``, default 20): ``syntax_best.csv`` picks a head and
an offset only for relations with at least that many arcs in the held-out split and in the selection split
(unless the run has none); the others are listed with ``below_min_n`` True and no pick. A head's best
relation in ``heads.csv`` (``syntax_best_relation``, ``syntax_best_accuracy``) is chosen among relations
with at least that many arcs over the corpus, next to that relation's best fixed-offset accuracy
(``syntax_best_baseline``) and its arcs (``syntax_best_n``). The summary records ``min_n``. Silver trees
(``--parse spacy``) are disclosed with the parser's name and version (summary ``parser``).

With ``--conventions clark`` the heads are scored as Clark et al.'s released code (``Syntax_Analysis.ipynb``,
``bpe_utils.py``) scores them: word-level maps from float16 piece maps, the first piece's row for a split word
(``--word-attention first``, whatever the option says) and each entry rounded to float16; the diagonal set to 0
rather than excluded (a row whose other words all have weight 0 then predicts the word itself); arcs to ROOT
scored (never right for a head, so they lower ``all``); the possessive rule of their section 4.2 keyed on
``poss`` and UD's ``nmod:poss``: for such a dependent followed by the word ``'s`` (or ``s'``), when its own
prediction is not the sentence's last word, the prediction made for that ``'s`` is scored instead (for the
offsets too); offsets -3..2, 0 included, clipped into the sentence (clipping below the first word predicts
ROOT); and ties between heads going to the highest layer, then head, then ``head->dep`` (their
``sorted(...)[-1]``), between offsets to the largest. See ``docs/conventions.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from headscope.analyses.base import Analysis, AnalysisResult, head_name
from headscope.analyses.conventions import as_float16, effective_conventions
from headscope.analyses.findings import Behaviour, Ranking
from headscope.analyses.labels.syntax import LABELS as ATLAS_LABELS
from headscope.analyses.registry import register
from headscope.analyses.relations import collapse_relation
from headscope.analyses.splits import split_description, split_of
from headscope.config import option

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.engine.capture import LayerAttention
    from headscope.engine.context import AnalysisContext
    from headscope.model.encode import Example

#: Directions, in the order of the ``direction`` axis of the counts.
DIRECTIONS = ("dep->head", "head->dep")
#: Split names, in the order of the ``split`` axis of the counts.
SPLITS = ("selection", "held_out")
#: Offsets of the fixed-offset baseline (head position minus dependent position).
OFFSETS = (-3, -2, -1, 1, 2, 3)
#: Clark et al.'s offsets (``range(-3, 3)``), predictions clipped into the sentence.
CLARK_OFFSETS = (-3, -2, -1, 0, 1, 2)
#: Labels of Clark et al.'s possessive rule: Stanford's ``poss`` (their key) and UD's ``nmod:poss``.
POSSESSIVE_RELATIONS = ("poss", "nmod:poss")
#: The next word's forms that make the rule fire.
POSSESSIVE_MARKERS = ("'s", "s'")
#: What each ``--conventions`` value means here (``run.json`` and the report).
CONVENTIONS = {
    "headscope": "headscope's definitions (docs/conventions.md)",
    "clark": "as Clark et al.'s released code: float16 word maps from the first piece's row, diagonal set to 0, "
             "arcs to ROOT scored, possessive rule on nmod:poss, offsets -3..2 clipped, their tie-breaking",
}
#: Relations with at least this many held-out dependents get a heat map in the report.
REPORT_MIN_DEPENDENTS = 100
#: Default of ``--syntax-min-n``: fewest arcs of a relation for any "best" claim about it.
MIN_N = 20


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


def _possessive(sentence: Any) -> np.ndarray:
    """Per word: Clark et al.'s possessive rule may apply (a poss/nmod:poss dependent followed by 's or s')."""
    words, rels = sentence.words, sentence.deprels
    return np.asarray([rels[i] in POSSESSIVE_RELATIONS and i + 1 < len(words) and words[i + 1] in POSSESSIVE_MARKERS
                       for i in range(len(words))], dtype=bool)


def batch_arcs(examples: list[Example], collapse: bool, conventions: str = "headscope") -> tuple[Arcs, int, int]:
    """Every arc between two aligned words of the examples' trees.

    Parameters
    ----------
    conventions : {"headscope", "clark"}
        ``clark``: arcs to ROOT are kept (head unit -1, never predicted), and the possessive rule's units are
        filled in (see the module docstring).

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
    for r, ex in enumerate(examples):
        for k, sentence in enumerate(ex.sentences):
            if not sentence.has_tree:
                continue
            units = ex.sentence_units(k)
            head = np.asarray(sentence.heads, dtype=np.int64)
            position = np.arange(len(head))
            attached = head > 0
            n_root += int((~attached).sum())
            dep_u = units
            head_u = np.where(attached, units[np.clip(head - 1, 0, None)], -1)
            scored = attached | clark  # arcs to ROOT are scored under clark conventions
            # An arc inside one unit (the syntactic words of a multiword token read from its text, "do" +
            # "n't" in "don't") has nothing to attend to: left out with the unaligned ones.
            keep = scored & (dep_u >= 0) & (~attached | ((head_u >= 0) & (head_u != dep_u)))
            n_unaligned += int((scored & ~keep).sum())
            idx = np.flatnonzero(keep)
            rows.append(np.full(len(idx), r, dtype=np.int64))
            deps.append(dep_u[idx])
            heads.append(head_u[idx])
            offsets.append(head[idx] - 1 - position[idx])
            possessive = _possessive(sentence) if clark else np.zeros(len(head), dtype=bool)
            hits.append(_offset_hits(position, head, len(head), possessive, conventions)[idx])
            if clark:
                following = np.append(units[1:], -1)
                poss_units.append(np.where(possessive & (following >= 0), following, -1)[idx])
                aligned_words = units[units >= 0]
                last_units.append(np.full(len(idx), aligned_words[-1] if len(aligned_words) else -1, np.int64))
            rels = sentence.deprels
            assert rels is not None  # has_tree
            relations.extend(collapse_relation(rels[i]) if collapse else rels[i] for i in idx)

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    n_offsets = len(CLARK_OFFSETS if clark else OFFSETS)
    arcs = Arcs(cat(rows), cat(deps), cat(heads), cat(offsets), relations,
                np.concatenate(hits) if hits else np.zeros((0, n_offsets), dtype=bool),
                possessive_unit=cat(poss_units) if clark else None, last_unit=cat(last_units) if clark else None)
    return arcs, n_root, n_unaligned


@dataclass
class _BatchArcs:
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


class ClarkWordAttention:
    """Word-level attention as Clark et al.'s ``bpe_utils.get_word_word_attention`` makes it from float16 maps.

    A split word's row is its first piece's row (their ``mode="first"``). Attention to a split word is the sum
    of its pieces' columns, which NumPy computes there on a float16 array laid out column-major by the fancy
    index (``attn[:, word].sum(axis=-1)``): one float16 addition per piece, from the first, each result rounded
    to float16. Built layer by layer from blocks of query rows, like :class:`~headscope.engine.wordlevel.WordAttention`.

    Parameters
    ----------
    unit_of_piece : Tensor of shape [batch, seq]
        Unit of each position, -1 on padding; a unit's pieces are consecutive.
    n_units : int
        Unit slots.
    """

    def __init__(self, unit_of_piece: torch.Tensor, n_units: int) -> None:
        b, n = unit_of_piece.shape
        dev = unit_of_piece.device
        units = unit_of_piece.clamp_min(0)
        valid = unit_of_piece >= 0
        positions = torch.arange(n, device=dev).expand(b, n)
        first = torch.full((b, n_units), n, dtype=torch.int64, device=dev)
        first.scatter_reduce_(1, units, torch.where(valid, positions, n), reduce="amin")
        count = torch.zeros(b, n_units, dtype=torch.int64, device=dev).scatter_add_(1, units, valid.long())
        self.first = first  # n where a unit slot is empty
        self.count = count
        self.n_units = n_units
        self._map: torch.Tensor | None = None

    def add(self, weights: torch.Tensor, query_start: int) -> torch.Tensor | None:
        """Add a block of rows (float16 values) of one layer; the layer's word map after its last block, else None.

        Parameters
        ----------
        weights : Tensor of shape [batch, head, query, key]

        Returns
        -------
        Tensor of shape [batch, head, unit, unit] or None
            float16 values, as float32; 0 in empty unit slots.
        """
        b, h, q, n = weights.shape
        q1 = query_start + q
        if query_start == 0 or self._map is None:
            self._map = weights.new_zeros(b, h, self.n_units, self.n_units)
        here = (self.first >= query_start) & (self.first < q1)  # [batch, unit]: units whose row is in the block
        if bool(here.any()):
            rows = (self.first - query_start).clamp(0, q - 1)
            rows = weights.gather(2, rows[:, None, :, None].expand(b, h, self.n_units, n))  # [b, h, unit, key]
            columns = weights.new_zeros(b, h, self.n_units, self.n_units)
            for k in range(int(self.count.max())):
                has = (self.count > k)[:, None, None, :]  # [b, 1, 1, unit]: the unit has a k-th piece
                at = (self.first + k).clamp(max=n - 1)[:, None, None, :].expand(b, h, self.n_units, self.n_units)
                piece = rows.gather(3, at)
                columns = torch.where(has, piece if k == 0 else as_float16(columns + piece), columns)
            self._map = torch.where(here[:, None, :, None], columns, self._map)
        return self._map if q1 >= n else None


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


@dataclass
class SyntaxOptions:
    """Options of the ``syntax`` analysis."""

    relation_collapse: bool = option(False, help="Collapse relation subtypes into their universal relation "
                                     "(obl:tmod -> obl) for the syntax tables.")
    held_out_fraction: float = option(0.5, help="With a single treebank (or silver parses), the share of "
                                      "examples held out for scoring the heads picked on the rest.")
    syntax_min_n: int = option(MIN_N, help="Fewest arcs a relation needs for a best-head claim: a head's best "
                               "relation (heads.csv) is chosen among relations with at least this many arcs, and "
                               "syntax_best.csv names a best head and offset only for relations with at least this "
                               "many arcs in the selection and in the held-out split (syntax).")

    def __post_init__(self) -> None:
        if self.syntax_min_n < 1:
            raise ValueError(f"syntax_min_n must be at least 1, got {self.syntax_min_n}")


@register
class SyntaxHeads(Analysis):
    """Accuracy of every head at finding each dependent's head word, per relation and direction."""

    # declared state (add_state in start)
    relations_: list[str]
    correct_: torch.Tensor
    total_: np.ndarray
    offset_correct_: np.ndarray
    n_root_: int
    n_unaligned_: int
    n_silver_: int
    n_possessive_: int
    n_examples_: np.ndarray

    name = "syntax"
    accepts_rollout = True
    report_order = 30
    ranking = Ranking("syntax_best_accuracy", order=20, describe="the accuracy of the head's best relation")
    behaviour = Behaviour(table="syntax_best", order=30)  # a best head of a relation
    atlas_labels = ATLAS_LABELS
    needs = ("treebank",)
    description = "heads that track dependency relations, vs. fixed-offset baselines (Clark et al. s4)"
    Options = SyntaxOptions
    reads_words = True
    reads_pieces = False
    """Under clark conventions (set in ``start``): the word maps are built here, from float16 piece maps."""

    def wants(self, example: Example) -> bool:
        return example.has_tree

    def wants_words(self, example: Example) -> bool:
        # Under clark conventions the engine's word maps are not Clark et al.'s: update builds them.
        return example.has_tree and self.conventions_ != "clark"

    def start(self, ctx: AnalysisContext) -> None:
        self.conventions_ = effective_conventions(ctx, tuple(CONVENTIONS))
        # Under clark conventions the word maps are built here from float16 piece maps (update).
        self.reads_pieces = self.conventions_ == "clark"
        self.offsets_ = list(CLARK_OFFSETS if self.conventions_ == "clark" else OFFSETS)
        self.n_layers_ = int(ctx.info.n_layers)
        self.n_heads_ = int(ctx.info.n_heads)
        self.device_ = ctx.device
        self.mode_ = "first" if self.conventions_ == "clark" else ctx.config.word_attention
        self.treebanks_ = [str(t) for t in ctx.config.treebank]
        self.seed_ = int(ctx.config.seed)
        # Counts indexed by the relations seen so far, in the order first seen: merged by relation name (merge).
        self.add_state("relations_", [], reduce=None)
        # [direction, split, relation, layer, head]: direction first so correct_[d] is a contiguous view.
        self.add_state("correct_", torch.zeros((len(DIRECTIONS), len(SPLITS), 0, self.n_layers_, self.n_heads_),
                                               dtype=torch.int64, device=self.device_), reduce=None)
        self.add_state("total_", np.zeros((len(SPLITS), 0), dtype=np.int64), reduce=None)
        self.add_state("offset_correct_", np.zeros((len(SPLITS), 0, len(OFFSETS)), dtype=np.int64), reduce=None)
        for name in ("n_root_", "n_unaligned_", "n_silver_", "n_possessive_"):
            self.add_state(name, 0)
        self.add_state("n_examples_", np.zeros(len(SPLITS), dtype=np.int64))
        self._batch_arcs: _BatchArcs | None = None
        self._words: ClarkWordAttention | None = None

    def _relation_ids(self, relations: list[str]) -> np.ndarray:
        """Indices of ``relations``, growing the count arrays for relations not seen before."""
        known = {r: i for i, r in enumerate(self.relations_)}
        new = sorted({r for r in relations if r not in known})
        if new:
            self.relations_.extend(new)
            grow = len(new)
            d, s, _, L, H = self.correct_.shape
            self.correct_ = torch.cat([self.correct_, self.correct_.new_zeros((d, s, grow, L, H))], dim=2)
            self.total_ = np.concatenate([self.total_, np.zeros((s, grow), np.int64)], axis=1)
            self.offset_correct_ = np.concatenate(
                [self.offset_correct_, np.zeros((s, grow, len(OFFSETS)), np.int64)], axis=1)
            known = {r: i for i, r in enumerate(self.relations_)}
        return np.asarray([known[r] for r in relations], dtype=np.int64)

    def begin_batch(self, batch: Batch) -> None:
        """Count the batch's examples, arcs and baselines, and keep the arcs for every layer's predictions."""
        examples = batch.examples
        self._batch_arcs = None
        arcs, n_root, n_unaligned = batch_arcs(examples, self.options.relation_collapse, self.conventions_)
        self.n_root_ += n_root
        self.n_unaligned_ += n_unaligned
        splits = np.asarray([split_of(ex, self.treebanks_, self.seed_, self.options.held_out_fraction)
                             for ex in examples], dtype=np.int64)
        np.add.at(self.n_examples_, splits, 1)
        self.n_silver_ += sum(any(s.silver for s in ex.sentences) for ex in examples)
        if not len(arcs.row):
            return
        rel = self._relation_ids(arcs.relation)
        arc_split = splits[arcs.row]
        n_rel = len(self.relations_)
        flat = arc_split * n_rel + rel
        np.add.at(self.total_.reshape(-1), flat, 1)
        np.add.at(self.offset_correct_.reshape(-1, len(self.offsets_)), flat, arcs.hits.astype(np.int64))
        dev = batch.input_ids.device
        n_units = int(batch.n_units.max())

        def on_device(a: np.ndarray | None) -> torch.Tensor | None:
            return None if a is None else torch.from_numpy(a).to(dev)

        if arcs.possessive_unit is not None:
            self.n_possessive_ += int((arcs.possessive_unit >= 0).sum())
        self._batch_arcs = _BatchArcs(
            row=torch.from_numpy(arcs.row).to(dev), dep=torch.from_numpy(arcs.dep_unit).to(dev),
            head=torch.from_numpy(arcs.head_unit).to(dev), index=torch.from_numpy(flat).to(dev),
            is_word=word_unit_mask(examples, n_units, dev), possessive=on_device(arcs.possessive_unit),
            last=on_device(arcs.last_unit))
        if self.conventions_ == "clark":
            self._words = ClarkWordAttention(batch.unit_of_piece, n_units)

    def update_words(self, batch: Batch, layer: int, words: torch.Tensor) -> None:
        """Score one layer's heads on the batch's arcs; ``words`` of shape [batch, head, unit, unit]."""
        arcs = self._batch_arcs
        if arcs is None:
            return
        # The engine sizes the map for the whole batch; units past this sub-batch's are empty slots.
        n = int(arcs.is_word.shape[1])
        clark = self.conventions_ == "clark"
        predicted = most_attended_words(words[:, None, :, :n, :n], arcs.is_word,
                                        self_weight=0.0 if clark else None)  # [dir, batch, 1, head, unit]
        for d in range(len(DIRECTIONS)):
            pred = predicted[d, :, 0]  # [batch, head, unit]
            own = pred[arcs.row, :, arcs.dep]  # [arc, head]
            if arcs.possessive is not None and arcs.last is not None:  # set together (clark conventions)
                # Clark et al.'s possessive rule: score the 's's prediction instead, unless the dependent's own
                # prediction is the sentence's last word (their ``p < len(words)``).
                instead = pred[arcs.row, :, arcs.possessive.clamp_min(0)]
                fires = (arcs.possessive >= 0)[:, None] & (own != arcs.last[:, None])
                own = torch.where(fires, instead, own)
            correct = (own == arcs.head[:, None]).to(torch.int64)
            # [arc, head] into this layer's counts; the strided view writes through to correct_.
            self.correct_[d].view(-1, self.n_layers_, self.n_heads_)[:, layer].index_add_(0, arcs.index, correct)

    def update(self, batch: Batch, block: LayerAttention) -> None:
        """Under clark conventions: build Clark et al.'s word map of the layer (float16 pieces, first piece's row,
        float16 entries) and score it."""
        if self._batch_arcs is None or self._words is None:
            return
        words = self._words.add(as_float16(block.weights), block.query_start)
        if words is not None:
            self.update_words(batch, block.layer, words)

    def end_batch(self, batch: Batch) -> None:
        self._batch_arcs = None
        self._words = None

    def merge(self, other: Analysis) -> SyntaxHeads:
        # Own merge, because no elementwise reduction fits: the relation axis of correct_, total_ and
        # offset_correct_ follows the order each shard first saw its relations, so the other shard's rows are
        # added at the indices of the same relation names here (new ones appended). The counters are declared.
        assert isinstance(other, SyntaxHeads)
        ids = torch.from_numpy(self._relation_ids(other.relations_)).to(self.correct_.device)
        self.correct_.index_add_(2, ids, other.correct_.to(self.correct_.device))
        ids_np = ids.cpu().numpy()
        # numpy's stubs do not accept a tuple of (slice, array) as the indices of ufunc.at, which numpy does.
        np.add.at(self.total_, (slice(None), ids_np), other.total_)  # type: ignore[arg-type]
        np.add.at(self.offset_correct_, (slice(None), ids_np), other.offset_correct_)  # type: ignore[arg-type]
        super().merge(other)
        return self

    def counts(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """The counts with ``all`` appended as the last relation.

        Returns
        -------
        relations : list of str, length n_relations + 1
        correct : ndarray of shape (n_splits, n_directions, n_relations + 1, n_layers, n_heads)
        total : ndarray of shape (n_splits, n_relations + 1)
        offset_correct : ndarray of shape (n_splits, n_relations + 1, n_offsets)
        """
        order = np.argsort(self.relations_, kind="stable")
        correct = self.correct_.cpu().numpy().transpose(1, 0, 2, 3, 4)[:, :, order]
        total = self.total_[:, order]
        offsets = self.offset_correct_[:, order]
        correct = np.concatenate([correct, correct.sum(2, keepdims=True)], axis=2)
        total = np.concatenate([total, total.sum(1, keepdims=True)], axis=1)
        offsets = np.concatenate([offsets, offsets.sum(1, keepdims=True)], axis=1)
        return [self.relations_[i] for i in order] + ["all"], correct, total, offsets

    def finalize(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        relations, correct, total, offset_correct = self.counts()
        clark = self.conventions_ == "clark"
        table = accuracy_table(relations, correct, total)
        min_n = int(self.options.syntax_min_n)
        best = best_heads(relations, correct, total, offset_correct, offsets=tuple(self.offsets_),
                          clark_ties=clark, min_n=min_n)
        per_head = best_relation_per_head(table, relation_baselines(relations, total, offset_correct), min_n)
        arcs_all = total.sum(0)
        silver = self.n_silver_ > 0
        summary = {
            "conventions": self.conventions_,
            "definitions": CONVENTIONS[self.conventions_],
            "word_attention": "first (float16 maps)" if clark else self.mode_,
            "offsets": list(self.offsets_),
            "relations": len(relations) - 1,
            "arcs": {s: int(total[i, -1]) for i, s in enumerate(SPLITS)},
            "examples": {s: int(self.n_examples_[i]) for i, s in enumerate(SPLITS)},
            "root_arcs_excluded": 0 if clark else self.n_root_,
            "root_arcs_scored": self.n_root_ if clark else 0,
            "possessive_rule_arcs": self.n_possessive_,
            "unaligned_arcs_excluded": self.n_unaligned_,
            "silver_examples": self.n_silver_,
            "silver": silver,
            "relation_collapse": bool(self.options.relation_collapse),
            "split": split_description(self.treebanks_, self.options.held_out_fraction,
                                       ("selection", "held-out")),
            "min_n": min_n,
            "min_n_rule": (f"a head's best relation (heads.csv syntax_best_*) is chosen among relations with at "
                           f"least syntax_min_n = {min_n} arcs over the corpus and shown with that relation's best "
                           f"fixed-offset accuracy (syntax_best_baseline); syntax_best.csv picks a head and offset "
                           f"only for relations with at least {min_n} arcs in each split that is not empty "
                           "(below_min_n otherwise)"),
            "relations_below_min_n": [r for r, below in zip(best["relation"], best["below_min_n"], strict=True)
                                      if below],
            "relations_eligible_per_head": [r for k, r in enumerate(relations[:-1]) if arcs_all[k] >= min_n],
        }
        if silver:
            summary["parser"] = ctx.silver_parser()
        return AnalysisResult(name=self.name, heads=per_head,
                              tables={"syntax": table, "syntax_best": best}, summary=summary)

def relation_baselines(relations: list[str], total: np.ndarray, offset_correct: np.ndarray) -> dict[str, float]:
    """Per relation, the accuracy of its best fixed offset over the whole corpus (both splits).

    ``total`` of shape (n_splits, n_relations) and ``offset_correct`` of shape (n_splits, n_relations,
    n_offsets), as :meth:`SyntaxHeads.counts` gives them.
    """
    arcs, hits = total.sum(0), offset_correct.sum(0)
    return {r: float(hits[k].max() / arcs[k]) for k, r in enumerate(relations) if arcs[k] > 0 and hits.shape[-1]}


def best_relation_per_head(table: pd.DataFrame, baselines: dict[str, float] | None = None, min_n: int = MIN_N
                           ) -> pd.DataFrame | None:
    """Per head, the relation it predicts best over the whole corpus and that accuracy (either direction).

    Only relations with at least ``min_n`` arcs compete (``--syntax-min-n``): a relation with one or two arcs
    would give every head an accuracy of 1. A head gets NaN and an empty relation when no relation has that
    many arcs. Returns None when no relation was scored.

    Columns for ``heads.csv`` (the report's grid is coloured by them): ``syntax_best_accuracy``,
    ``syntax_best_relation``, ``syntax_best_n`` (the relation's arcs) and ``syntax_best_baseline`` (the
    accuracy of that relation's best fixed offset over the same arcs, from ``baselines``).
    """
    scored = table[(table["split"] == "all") & (table["relation"] != "all")]
    if scored.empty:
        return None
    heads = scored[["layer", "head"]].drop_duplicates().sort_values(["layer", "head"], kind="stable")
    rows = scored[scored["n"] >= min_n]
    top = rows.sort_values("accuracy", ascending=False, kind="stable").drop_duplicates(["layer", "head"])
    top = heads.merge(top, on=["layer", "head"], how="left").sort_values(["layer", "head"], kind="stable")
    baseline = top["relation"].map(baselines or {})
    return pd.DataFrame({"layer": top["layer"].to_numpy(int), "head": top["head"].to_numpy(int),
                         "syntax_best_accuracy": top["accuracy"].to_numpy(float),
                         "syntax_best_relation": top["relation"].fillna("").to_numpy(str),
                         "syntax_best_n": top["n"].to_numpy(float),
                         "syntax_best_baseline": baseline.to_numpy(float)})


def accuracy_table(relations: list[str], correct: np.ndarray, total: np.ndarray) -> pd.DataFrame:
    """``syntax.csv``: one row per split (selection, held_out, all) x relation x direction x head."""
    L, H = correct.shape[-2:]
    parts = {**{s: (correct[i], total[i]) for i, s in enumerate(SPLITS)},
             "all": (correct.sum(0), total.sum(0))}
    frames = []
    layer, head = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
    for split, (c, t) in parts.items():
        for r, relation in enumerate(relations):
            if t[r] == 0:
                continue
            for d, direction in enumerate(DIRECTIONS):
                frames.append(pd.DataFrame({
                    "split": split, "relation": relation, "direction": direction,
                    "layer": layer.reshape(-1), "head": head.reshape(-1),
                    "accuracy": c[d, r].reshape(-1) / t[r], "n": int(t[r])}))
    columns = ["split", "relation", "direction", "layer", "head", "accuracy", "n"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _pick(correct: np.ndarray, n: int, clark_ties: bool = False) -> tuple[int, int, int, float]:
    """(direction, layer, head, accuracy) of the best head; ``correct`` of shape (n_directions, L, H).

    Ties go to the first direction, layer and head; with ``clark_ties`` to the highest layer, then head, then
    ``head->dep``, as Clark et al.'s ``sorted((score, layer, head, direction))[-1]`` (``"dep->head"`` sorts
    before ``"head<-dep"``).
    """
    if clark_ties:
        by_layer = correct.transpose(1, 2, 0).reshape(-1)  # (layer, head, direction) order
        flat = len(by_layer) - 1 - int(np.argmax(by_layer[::-1]))
        layer, head, d = np.unravel_index(flat, correct.transpose(1, 2, 0).shape)
    else:
        d, layer, head = np.unravel_index(int(np.argmax(correct.reshape(-1))), correct.shape)
    return int(d), int(layer), int(head), float(correct[d, layer, head] / n)


def _pick_offset(offset_correct: np.ndarray, clark_ties: bool = False) -> int:
    """Index of the best offset; ties to the first, or with ``clark_ties`` to the largest (their ``max``)."""
    if clark_ties:
        return len(offset_correct) - 1 - int(np.argmax(offset_correct[::-1]))
    return int(np.argmax(offset_correct))


def best_heads(relations: list[str], correct: np.ndarray, total: np.ndarray, offset_correct: np.ndarray,
               offsets: tuple[int, ...] = OFFSETS, clark_ties: bool = False, min_n: int = 1) -> pd.DataFrame:
    """``syntax_best.csv``: per relation, the best head and offset picked on the selection split and scored
    on the held-out split, and (``same_data_*``) picked and scored on the held-out split (Clark et al.).

    ``offsets`` label the last axis of ``offset_correct``; ``clark_ties`` breaks ties as Clark et al.'s code.
    A relation with fewer than ``min_n`` arcs in the held-out split, or in the selection split when the run has
    one (``--syntax-held-out-fraction 1`` leaves it empty: only the same-data pick exists then), is listed with
    its counts and ``below_min_n`` True, but no head or offset is picked for it (every other column empty).
    """
    sel, held = SPLITS.index("selection"), SPLITS.index("held_out")
    has_selection = bool(total[sel].sum() > 0)
    rows = []
    for r, relation in enumerate(relations):
        n_sel, n_held = int(total[sel, r]), int(total[held, r])
        below = n_held < min_n or (has_selection and n_sel < min_n)
        row: dict[str, Any] = {"relation": relation, "n_selection": n_sel, "n_held_out": n_held,
                               "below_min_n": below}
        if below:
            rows.append(row)
            continue
        if n_sel and n_held:
            d, layer, head, acc_sel = _pick(correct[sel, :, r], n_sel, clark_ties)
            o = _pick_offset(offset_correct[sel, r], clark_ties)
            row.update(direction=DIRECTIONS[d], layer=layer, head=head, head_name=head_name(layer, head),
                       selection_accuracy=acc_sel, accuracy=correct[held, d, r, layer, head] / n_held,
                       baseline_offset=offsets[o], baseline_accuracy=offset_correct[held, r, o] / n_held)
        if n_held:
            d, layer, head, acc = _pick(correct[held, :, r], n_held, clark_ties)
            o = _pick_offset(offset_correct[held, r], clark_ties)
            row.update(same_data_direction=DIRECTIONS[d], same_data_layer=layer, same_data_head=head,
                       same_data_head_name=head_name(layer, head), same_data_accuracy=acc,
                       same_data_baseline_offset=offsets[o],
                       same_data_baseline_accuracy=offset_correct[held, r, o] / n_held)
        rows.append(row)
    columns = ["relation", "n_selection", "n_held_out", "below_min_n", "direction", "layer", "head", "head_name",
               "selection_accuracy", "accuracy", "baseline_offset", "baseline_accuracy",
               "same_data_direction", "same_data_layer", "same_data_head", "same_data_head_name",
               "same_data_accuracy", "same_data_baseline_offset", "same_data_baseline_accuracy"]
    best = pd.DataFrame(rows).reindex(columns=columns)
    for c in ("layer", "head", "baseline_offset", "same_data_layer", "same_data_head",
              "same_data_baseline_offset"):
        best[c] = best[c].astype("Int64")
    return best
