"""The ``syntax`` accumulator: per relation, split and direction, how often each head finds the gold head
(the method and the conventions: :mod:`headscope.analyses.syntax`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from headscope.analyses.base import Analysis, AnalysisResult
from headscope.analyses.conventions import as_float16, effective_conventions
from headscope.analyses.findings import Behaviour, Ranking
from headscope.analyses.labels.syntax import LABELS as ATLAS_LABELS
from headscope.analyses.registry import register
from headscope.analyses.splits import split_description, split_of
from headscope.analyses.syntax.arcs import CLARK_OFFSETS, OFFSETS, batch_arcs
from headscope.analyses.syntax.predict import DIRECTIONS, BatchArcs, correct_predictions, word_unit_mask
from headscope.analyses.syntax.selection import (
    MIN_N,
    SPLITS,
    accuracy_table,
    best_heads,
    best_relation_per_head,
    relation_baselines,
)
from headscope.config import option
from headscope.engine.state import Keyed
from headscope.engine.wordlevel import WordAttention

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.engine.capture import LayerAttention
    from headscope.engine.context import AnalysisContext
    from headscope.model.encode import Example

#: What each ``--conventions`` value means here (``run.json`` and the report).
CONVENTIONS = {
    "headscope": "headscope's definitions (docs/conventions.md)",
    "clark": "as Clark et al.'s released code: float16 word maps from the first piece's row, diagonal set to 0, "
             "arcs to ROOT scored, possessive rule on nmod:poss, offsets -3..2 clipped, their tie-breaking",
}
#: Relations with at least this many held-out dependents get a heat map in the report.
REPORT_MIN_DEPENDENTS = 100


@dataclass(frozen=True)
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
        self.mode_ = "first" if self.conventions_ == "clark" else ctx.word_attention
        self.treebanks_ = list(ctx.treebanks)
        self.seed_ = ctx.seeds.seed
        # Counts indexed by the relations seen so far, in the order each shard first met them: merged by
        # relation name (Keyed), grown as new relations come (grow_keys).
        self.add_state("relations_", [], reduce="keys")
        # [direction, split, relation, layer, head]: direction first so correct_[d] is a contiguous view.
        self.add_state("correct_", torch.zeros((len(DIRECTIONS), len(SPLITS), 0, self.n_layers_, self.n_heads_),
                                               dtype=torch.int64, device=self.device_),
                       reduce=Keyed("relations_", axis=2))
        self.add_state("total_", np.zeros((len(SPLITS), 0), dtype=np.int64), reduce=Keyed("relations_", axis=1))
        self.add_state("offset_correct_", np.zeros((len(SPLITS), 0, len(self.offsets_)), dtype=np.int64),
                       reduce=Keyed("relations_", axis=1))
        for name in ("n_root_", "n_unaligned_", "n_silver_", "n_possessive_"):
            self.add_state(name, 0)
        self.add_state("n_examples_", np.zeros(len(SPLITS), dtype=np.int64))
        self._batch_arcs: BatchArcs | None = None
        self._words: WordAttention | None = None

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
        rel = self.grow_keys("relations_", arcs.relation)
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
        self._batch_arcs = BatchArcs(
            row=torch.from_numpy(arcs.row).to(dev), dep=torch.from_numpy(arcs.dep_unit).to(dev),
            head=torch.from_numpy(arcs.head_unit).to(dev), index=torch.from_numpy(flat).to(dev),
            is_word=word_unit_mask(examples, n_units, dev), possessive=on_device(arcs.possessive_unit),
            last=on_device(arcs.last_unit))
        if self.conventions_ == "clark":
            # Clark et al.'s word maps: the first piece's row, float16 column sums (engine.wordlevel).
            self._words = WordAttention(batch.unit_of_piece, n_units, mode="first", float16=True)

    def update_words(self, batch: Batch, layer: int, words: torch.Tensor) -> None:
        """Score one layer's heads on the batch's arcs; ``words`` of shape [batch, head, unit, unit]."""
        arcs = self._batch_arcs
        if arcs is None:
            return
        correct = correct_predictions(words, arcs, self.conventions_ == "clark")  # [direction, arc, head]
        for d in range(len(DIRECTIONS)):
            # [arc, head] into this layer's counts; the strided view writes through to correct_.
            self.correct_[d].view(-1, self.n_layers_, self.n_heads_)[:, layer].index_add_(0, arcs.index, correct[d])

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
