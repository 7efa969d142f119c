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
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from headscope.analyses.base import Analysis, AnalysisResult, head_name, register
from headscope.config import option
from headscope.corpus.conllu import collapse_relation
from headscope.model.encode import Example

if TYPE_CHECKING:
    from headscope.engine.batch import Batch

#: Directions, in the order of the ``direction`` axis of the counts.
DIRECTIONS = ("dep->head", "head->dep")
#: Split names, in the order of the ``split`` axis of the counts.
SPLITS = ("selection", "held_out")
#: Offsets of the fixed-offset baseline (head position minus dependent position).
OFFSETS = (-3, -2, -1, 1, 2, 3)
#: Relations with at least this many held-out dependents get a heat map in the report.
REPORT_MIN_DEPENDENTS = 100


def split_of(example: Example, treebanks: list[str], seed: int, held_out_fraction: float) -> int:
    """The split of an example: 0 selection / training, 1 held-out / evaluation.

    With two or more treebanks, a treebank sentence's split is given by its file (the last file is
    held out). Otherwise (one treebank, silver parses of raw text) it is a seeded draw per example that
    depends only on ``seed`` and ``example.index``, so it is the same whatever the batching.
    """
    if len(treebanks) >= 2 and example.kind == "sentence":
        files = [str(t) for t in treebanks]
        if example.file in files:
            return int(files.index(example.file) == len(files) - 1)
    return int(np.random.default_rng([seed, example.index]).random() < held_out_fraction)


def split_description(treebanks: list[str], held_out_fraction: float, what: tuple[str, str]) -> str:
    """How :func:`split_of` splits this run's data, in words (for ``run.json`` and the report)."""
    if len(treebanks) >= 2:
        return f"{what[0]}: {treebanks[0]}; {what[1]}: {treebanks[-1]}"
    return (f"seeded random split of the examples: {1 - held_out_fraction:.0%} {what[0]}, "
            f"{held_out_fraction:.0%} {what[1]}")


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


def batch_arcs(examples: list[Example], collapse: bool) -> tuple[Arcs, int, int]:
    """Every arc between two aligned words of the examples' trees.

    Returns
    -------
    arcs : Arcs
    n_root : int
        Arcs to ROOT, left out.
    n_unaligned : int
        Arcs left out because the dependent or the head got no piece from the tokenizer.
    """
    rows, deps, heads, offsets, relations = [], [], [], [], []
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
            keep = attached & (dep_u >= 0) & (head_u >= 0)
            n_unaligned += int((attached & ~keep).sum())
            idx = np.flatnonzero(keep)
            rows.append(np.full(len(idx), r, dtype=np.int64))
            deps.append(dep_u[idx])
            heads.append(head_u[idx])
            offsets.append(head[idx] - 1 - position[idx])
            rels = sentence.deprels
            relations.extend(collapse_relation(rels[i]) if collapse else rels[i] for i in idx)

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    return Arcs(cat(rows), cat(deps), cat(heads), cat(offsets), relations), n_root, n_unaligned


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


def word_unit_mask(examples: list[Example], n_units: int, device: torch.device | str) -> torch.Tensor:
    """bool Tensor of shape [batch, unit], True at units that are words (not special tokens, not padding)."""
    mask = np.zeros((len(examples), n_units), dtype=bool)
    for r, ex in enumerate(examples):
        units = ex.word_units[ex.word_units >= 0]
        mask[r, units] = True
    return torch.from_numpy(mask).to(device)


def most_attended_words(word_attn: torch.Tensor, is_word: torch.Tensor) -> torch.Tensor:
    """The word each word attends to most, in both directions.

    Parameters
    ----------
    word_attn : Tensor of shape [batch, layer, head, unit, unit]
    is_word : Tensor of shape [batch, unit], bool

    Returns
    -------
    Tensor of shape [direction, batch, layer, head, unit], int64
        Direction 0 (``dep->head``): argmax over the row of ``A``; direction 1 (``head->dep``): argmax over
        the row of ``A`` transposed. Self and non-word units are never chosen; ties go to the lowest unit.
    """
    n = word_attn.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=word_attn.device)
    blocked = ~is_word[:, None, None, None, :] | eye
    forward = word_attn.masked_fill(blocked, float("-inf")).argmax(-1)
    backward = word_attn.transpose(-1, -2).masked_fill(blocked, float("-inf")).argmax(-1)
    return torch.stack((forward, backward))


@dataclass
class SyntaxOptions:
    """Options of the ``syntax`` analysis."""

    relation_collapse: bool = option(False, help="Collapse relation subtypes into their universal relation "
                                     "(obl:tmod -> obl) for the syntax tables.")
    held_out_fraction: float = option(0.5, help="With a single treebank (or silver parses), the share of "
                                      "examples held out for scoring the heads picked on the rest.")


@register
class SyntaxHeads(Analysis):
    """Accuracy of every head at finding each dependent's head word, per relation and direction."""

    name = "syntax"
    description = "heads that track dependency relations, vs. fixed-offset baselines (Clark et al. s4)"
    Options = SyntaxOptions
    uses_words = True

    def wants(self, example: Example) -> bool:
        return example.has_tree

    def start(self, ctx: Any) -> None:
        self.n_layers_ = int(ctx.info.n_layers)
        self.n_heads_ = int(ctx.info.n_heads)
        self.device_ = ctx.device
        self.mode_ = ctx.config.word_attention
        self.treebanks_ = [str(t) for t in ctx.config.treebank]
        self.seed_ = int(ctx.config.seed)
        self.relations_: list[str] = []
        # [direction, split, relation, layer, head]: direction first so correct_[d] is a contiguous view.
        self.correct_ = torch.zeros((len(DIRECTIONS), len(SPLITS), 0, self.n_layers_, self.n_heads_),
                                    dtype=torch.int64, device=self.device_)
        self.total_ = np.zeros((len(SPLITS), 0), dtype=np.int64)
        self.offset_correct_ = np.zeros((len(SPLITS), 0, len(OFFSETS)), dtype=np.int64)
        self.n_root_ = 0
        self.n_unaligned_ = 0
        self.n_silver_ = 0
        self.n_examples_ = np.zeros(len(SPLITS), dtype=np.int64)
        self._batch_arcs: _BatchArcs | None = None

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
        arcs, n_root, n_unaligned = batch_arcs(examples, self.options.relation_collapse)
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
        hits = arcs.offset[:, None] == np.asarray(OFFSETS)[None, :]
        np.add.at(self.offset_correct_.reshape(-1, len(OFFSETS)), flat, hits.astype(np.int64))
        dev = batch.input_ids.device
        n_units = int(batch.n_units.max())
        self._batch_arcs = _BatchArcs(
            row=torch.from_numpy(arcs.row).to(dev), dep=torch.from_numpy(arcs.dep_unit).to(dev),
            head=torch.from_numpy(arcs.head_unit).to(dev), index=torch.from_numpy(flat).to(dev),
            is_word=word_unit_mask(examples, n_units, dev))

    def update_words(self, batch: Batch, layer: int, words: torch.Tensor) -> None:
        """Score one layer's heads on the batch's arcs; ``words`` of shape [batch, head, unit, unit]."""
        arcs = self._batch_arcs
        if arcs is None:
            return
        # The engine sizes the map for the whole batch; units past this sub-batch's are empty slots.
        n = int(arcs.is_word.shape[1])
        predicted = most_attended_words(words[:, None, :, :n, :n], arcs.is_word)  # [dir, batch, 1, head, unit]
        for d in range(len(DIRECTIONS)):
            correct = (predicted[d, :, 0][arcs.row, :, arcs.dep] == arcs.head[:, None]).to(torch.int64)
            # [arc, head] into this layer's counts; the strided view writes through to correct_.
            self.correct_[d].view(-1, self.n_layers_, self.n_heads_)[:, layer].index_add_(0, arcs.index, correct)

    def end_batch(self, batch: Batch) -> None:
        self._batch_arcs = None

    def merge(self, other: Analysis) -> SyntaxHeads:
        assert isinstance(other, SyntaxHeads)
        ids = torch.from_numpy(self._relation_ids(other.relations_)).to(self.correct_.device)
        self.correct_.index_add_(2, ids, other.correct_.to(self.correct_.device))
        ids_np = ids.cpu().numpy()
        np.add.at(self.total_, (slice(None), ids_np), other.total_)
        np.add.at(self.offset_correct_, (slice(None), ids_np), other.offset_correct_)
        self.n_root_ += other.n_root_
        self.n_unaligned_ += other.n_unaligned_
        self.n_silver_ += other.n_silver_
        self.n_examples_ += other.n_examples_
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

    def finalize(self, ctx: Any, results: dict[str, AnalysisResult]) -> AnalysisResult:
        relations, correct, total, offset_correct = self.counts()
        table = accuracy_table(relations, correct, total)
        best = best_heads(relations, correct, total, offset_correct)
        silver = self.n_silver_ > 0
        summary = {
            "relations": len(relations) - 1,
            "arcs": {s: int(total[i, -1]) for i, s in enumerate(SPLITS)},
            "examples": {s: int(self.n_examples_[i]) for i, s in enumerate(SPLITS)},
            "root_arcs_excluded": self.n_root_,
            "unaligned_arcs_excluded": self.n_unaligned_,
            "silver_examples": self.n_silver_,
            "silver": silver,
            "relation_collapse": bool(self.options.relation_collapse),
            "split": split_description(self.treebanks_, self.options.held_out_fraction,
                                       ("selection", "held-out")),
        }
        return AnalysisResult(name=self.name, tables={"syntax": table, "syntax_best": best}, summary=summary)

    @staticmethod
    def report(run: Any, figures: Path) -> Any:
        if "syntax_best" not in run.tables or "syntax" not in run.tables:
            return None
        return syntax_report(run, figures)


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


def _pick(correct: np.ndarray, n: int) -> tuple[int, int, int, float]:
    """(direction, layer, head, accuracy) of the best head; ``correct`` of shape (n_directions, L, H)."""
    flat = int(np.argmax(correct.reshape(-1)))
    d, layer, head = np.unravel_index(flat, correct.shape)
    return int(d), int(layer), int(head), float(correct[d, layer, head] / n)


def best_heads(relations: list[str], correct: np.ndarray, total: np.ndarray,
               offset_correct: np.ndarray) -> pd.DataFrame:
    """``syntax_best.csv``: per relation, the best head and offset picked on the selection split and scored
    on the held-out split, and (``same_data_*``) picked and scored on the held-out split (Clark et al.)."""
    sel, held = SPLITS.index("selection"), SPLITS.index("held_out")
    rows = []
    for r, relation in enumerate(relations):
        n_sel, n_held = int(total[sel, r]), int(total[held, r])
        row: dict[str, Any] = {"relation": relation, "n_selection": n_sel, "n_held_out": n_held}
        if n_sel and n_held:
            d, layer, head, acc_sel = _pick(correct[sel, :, r], n_sel)
            o = int(np.argmax(offset_correct[sel, r]))
            row.update(direction=DIRECTIONS[d], layer=layer, head=head, head_name=head_name(layer, head),
                       selection_accuracy=acc_sel, accuracy=correct[held, d, r, layer, head] / n_held,
                       baseline_offset=OFFSETS[o], baseline_accuracy=offset_correct[held, r, o] / n_held)
        if n_held:
            d, layer, head, acc = _pick(correct[held, :, r], n_held)
            o = int(np.argmax(offset_correct[held, r]))
            row.update(same_data_direction=DIRECTIONS[d], same_data_layer=layer, same_data_head=head,
                       same_data_head_name=head_name(layer, head), same_data_accuracy=acc,
                       same_data_baseline_offset=OFFSETS[o],
                       same_data_baseline_accuracy=offset_correct[held, r, o] / n_held)
        rows.append(row)
    columns = ["relation", "n_selection", "n_held_out", "direction", "layer", "head", "head_name",
               "selection_accuracy", "accuracy", "baseline_offset", "baseline_accuracy",
               "same_data_direction", "same_data_layer", "same_data_head", "same_data_head_name",
               "same_data_accuracy", "same_data_baseline_offset", "same_data_baseline_accuracy"]
    best = pd.DataFrame(rows).reindex(columns=columns)
    for c in ("layer", "head", "baseline_offset", "same_data_layer", "same_data_head",
              "same_data_baseline_offset"):
        best[c] = best[c].astype("Int64")
    return best


def syntax_report(run: Any, figures: Path) -> Any:
    """The report section: the best-head table and one layer x head heat map per frequent relation."""
    from headscope.report.figures import head_grid, layer_head_heatmap, save_figure
    from headscope.report.section import ReportSection, figure_html, percent

    best = run.tables["syntax_best"]
    table = run.tables["syntax"]
    summary = run.run.get("analyses", {}).get("syntax", {})
    ordered = best.sort_values("n_held_out", ascending=False)
    ordered = pd.concat([ordered[ordered.relation == "all"], ordered[ordered.relation != "all"]])

    def cell(x: Any) -> str:
        return "" if pd.isna(x) else html.escape(str(x))

    def signed(x: Any) -> str:
        return "" if pd.isna(x) else f"{int(x):+d}"

    rows = "".join(
        f"<tr><td>{html.escape(str(b.relation))}</td><td>{b.n_held_out}</td><td>{cell(b.head_name)}</td>"
        f"<td>{cell(b.direction)}</td><td>{percent(b.accuracy)}</td><td>{signed(b.baseline_offset)}</td>"
        f"<td>{percent(b.baseline_accuracy)}</td><td>{cell(b.same_data_head_name)}</td>"
        f"<td>{percent(b.same_data_accuracy)}</td></tr>" for b in ordered.itertuples())
    notes = [f"Split: {html.escape(str(summary.get('split', '?')))}."]
    if summary.get("silver"):
        notes.append("<b>Parses are silver</b> (spaCy en_core_web_sm), not gold annotation.")
    if summary.get("relation_collapse"):
        notes.append("Relation subtypes are collapsed (obl:tmod counts as obl).")
    notes.append(f"Arcs to ROOT are left out ({summary.get('root_arcs_excluded', '?')}).")
    body = (
        "<p>Per relation, the head whose most-attended word (self and special tokens excluded) is most often "
        "the dependent's gold head, picked on the selection split and scored on the held-out split, against "
        "the best fixed offset (-3..+3) picked the same way. The last two columns are Clark et al.'s way: "
        "picked and scored on the same held-out data (optimistic). Accuracies in %.</p>"
        f"<p>{' '.join(notes)}</p>"
        "<table><tr><th>relation</th><th>n</th><th>head</th><th>direction</th><th>accuracy</th>"
        "<th>offset</th><th>baseline</th><th>same-data head</th><th>same-data accuracy</th></tr>"
        f"{rows}</table>")
    held = table[table["split"] == "held_out"]
    names = []
    captions = []
    for b in ordered.itertuples():
        if b.n_held_out < REPORT_MIN_DEPENDENTS or pd.isna(b.direction):
            continue
        sub = held[(held.relation == b.relation) & (held.direction == b.direction)]
        safe = "".join(c if c.isalnum() else "_" for c in str(b.relation))
        name = f"syntax_{safe}"
        fig = layer_head_heatmap(head_grid(sub, "accuracy"), f"{b.relation} ({b.direction})",
                                 label="held-out accuracy", vmin=0.0, vmax=1.0)
        save_figure(fig, figures, name)
        names.append(name)
        captions.append(f"{b.relation}, {b.direction}, n = {b.n_held_out}")
    body += (f"<p>Held-out accuracy of every head, for relations with at least {REPORT_MIN_DEPENDENTS} held-out "
             "dependents, in the direction of the best head.</p>")
    body += "".join(figure_html(n, c) for n, c in zip(names, captions, strict=True))
    return ReportSection(key="syntax", title="Syntax heads", html=body, figures=names, order=30)
