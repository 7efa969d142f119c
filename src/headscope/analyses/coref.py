"""Coreference heads: which heads find a mention's antecedent (Clark et al. 2019, section 4.3).

For every evaluated mention (a mention with at least one earlier mention of the same entity in its window,
see :mod:`headscope.corpus.coref_windows` and :mod:`headscope.model.coref_encode`), a head is right
when the mention's head word attends most, in word-level attention, to the head word of one of those
antecedents. The candidates of the arg-max are all other words of the window (special tokens and the word
itself excluded), or with ``--coref-candidates preceding`` only the words before the mention's head word.

Three baselines pick an antecedent among the earlier mentions of the window (they see the gold mentions,
as in the paper) and are right under the same rule:

- ``nearest``: the nearest earlier mention;
- ``head_match``: the nearest earlier mention with the same head word (lowercased); none is a miss;
- ``rule_based``: sieves in order, the first that finds a mention wins, nearest first within a sieve:
  (1) same full text, (2) same head word, (3) agreement in number, gender and person (from the head
  words' morphological features; unknown agrees with anything), (4) any earlier mention.

``coref.csv`` has one row per head and mention type (``method = head``) and one row per baseline and
mention type (``layer``/``head`` empty): ``method, layer, head, mention_type, accuracy, n``. Mention types
are ``pronoun``, ``proper``, ``nominal``, ``other`` (from the head word's part of speech) and ``all``.
``coref_best.csv`` has, per mention type, the best head (chosen on the same data it is scored on, as in the
paper) next to every baseline. A best head is named only for a mention type with at least ``--coref-min-n``
evaluated mentions (default 20); below that the type is listed with its ``n``, ``below_min_n`` True and no
best head (the baselines, fixed rules rather than picks, stay). The summary records ``min_n``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import torch

from headscope.analyses.base import Analysis, AnalysisResult, head_frame, head_name
from headscope.analyses.findings import Behaviour, Ranking
from headscope.analyses.labels.coref import LABELS as ATLAS_LABELS
from headscope.analyses.registry import register
from headscope.config import check_choices, option

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.engine.context import AnalysisContext
    from headscope.model.coref_encode import WindowMention
    from headscope.model.encode import Example

#: Baselines, in table order.
BASELINES = ("nearest", "head_match", "rule_based")
#: Mention types, in table order: those the corpus gives a mention (``WindowMention.mention_type``, from
#: ``headscope.corpus.mentions.MENTION_TYPES``; the analysis imports no corpus module, tests/test_coref.py checks
#: the two agree).
MENTION_TYPES = ("pronoun", "proper", "nominal", "other")
#: Mention types of the table, ``all`` last.
TYPES = (*MENTION_TYPES, "all")
#: Default of ``--coref-min-n``: fewest evaluated mentions of a type for a best-head claim.
MIN_N = 20


def _agrees(a: WindowMention, b: WindowMention) -> bool:
    return all(x is None or y is None or x == y for x, y in (
        (a.number, b.number), (a.gender, b.gender), (a.person, b.person)))


def baseline_predictions(mentions: list[WindowMention], i: int) -> dict[str, int]:
    """Each baseline's antecedent for mention ``i`` of a window.

    Parameters
    ----------
    mentions : list of WindowMention
        The window's mentions, ordered by head word (as :func:`carried_mentions` gives them).
    i : int
        The mention to resolve.

    Returns
    -------
    dict of str to int
        Per baseline, the index in ``mentions`` of the chosen mention, -1 when it chooses none.
    """
    m = mentions[i]
    # Nearest first: earlier head words the model can see, from right to left.
    candidates = [j for j in range(i - 1, -1, -1) if mentions[j].word < m.word and mentions[j].unit >= 0]

    def first(test: Any) -> int:
        return next((j for j in candidates if test(mentions[j])), -1)

    nearest = candidates[0] if candidates else -1
    head_match = first(lambda c: c.head_text == m.head_text)
    rule = first(lambda c: c.text == m.text)
    if rule < 0:
        rule = head_match
    if rule < 0:
        rule = first(lambda c: _agrees(c, m))
    if rule < 0:
        rule = nearest
    return {"nearest": nearest, "head_match": head_match, "rule_based": rule}


def carried_mentions(example: Example) -> list[WindowMention]:
    """The mentions a window carries, ordered by head word, with their antecedents in the window.

    The corpus side computes them once, when it builds the window (``WindowExample`` of
    :mod:`headscope.model.coref_encode`); the analysis only reads them.

    Raises
    ------
    ValueError
        For a window that carries none (one encoded by hand: wrap it with ``WindowExample.from_example``).
    """
    mentions: list[WindowMention] | None = getattr(example, "mentions", None)
    if mentions is None:
        raise ValueError(f"coref: window {example.index} ({example.file}:{example.line}) carries no mentions; "
                         "windows come from headscope.model.coref_encode (iter_coref_examples, or "
                         "WindowExample.from_example for one encoded by hand)")
    return mentions


@dataclass
class MentionQueries:
    """The evaluated mentions of one batch: which word-level rows to read and which picks are right."""

    row: torch.Tensor
    """int64 [mention]: batch row of the mention's window."""
    query: torch.Tensor
    """int64 [mention]: unit of the mention's head word."""
    types: torch.Tensor
    """int64 [mention]: index of its type in :data:`MENTION_TYPES`."""
    target: torch.Tensor
    """bool [mention, unit]: the head words of its antecedents in the window."""
    allowed: torch.Tensor
    """bool [mention, unit]: the words a head's arg-max may pick."""
    baseline_correct: torch.Tensor
    """float64 [baseline, type]: the baselines' right answers for these mentions (CPU)."""


def mention_queries(batch: Batch, candidates: str = "all") -> MentionQueries | None:
    """The :class:`MentionQueries` of a batch of windows; None when no mention of it is evaluated.

    Parameters
    ----------
    batch : Batch
        Windows (``Example.kind == "window"``).
    candidates : {"all", "preceding"}
        As the ``coref_candidates`` option.
    """
    rows, queries, types, targets = [], [], [], []
    baseline_correct = torch.zeros(len(BASELINES), len(MENTION_TYPES), dtype=torch.float64)
    for b, example in enumerate(batch.examples):
        mentions = carried_mentions(example)  # computed once, when the window was built
        for i, m in enumerate(mentions):
            if not m.evaluated:
                continue
            antecedent_words = {mentions[a].word for a in m.antecedents}
            t = MENTION_TYPES.index(m.mention_type)
            rows.append(b)
            queries.append(m.unit)
            types.append(t)
            targets.append([mentions[a].unit for a in m.antecedents])
            for k, j in enumerate(baseline_predictions(mentions, i).values()):
                if j >= 0 and mentions[j].word in antecedent_words:
                    baseline_correct[k, t] += 1
    if not rows:
        return None
    dev = batch.input_ids.device
    n_units = int(batch.n_units.max())
    row = torch.tensor(rows, dtype=torch.int64, device=dev)
    query = torch.tensor(queries, dtype=torch.int64, device=dev)
    special_piece = ((batch.is_cls | batch.is_sep) & (batch.unit_of_piece >= 0)).float()
    # Summed, not assigned: padding positions share index 0 with [CLS], and scatter_ keeps any one of them.
    special = torch.zeros(batch.size, n_units, device=dev).scatter_add_(
        1, batch.unit_of_piece.clamp_min(0), special_piece) > 0  # [batch, unit]
    unit_ids = torch.arange(n_units, device=dev)
    allowed = ((unit_ids[None, :] < batch.n_units[row][:, None]) & ~special[row]
               & (unit_ids[None, :] != query[:, None]))  # [mention, unit]
    if candidates == "preceding":
        allowed &= unit_ids[None, :] < query[:, None]
    target = torch.zeros(len(rows), n_units, dtype=torch.bool, device=dev)
    for k, units in enumerate(targets):
        target[k, units] = True
    return MentionQueries(row, query, torch.tensor(types, dtype=torch.int64, device=dev), target, allowed,
                          baseline_correct)


@dataclass(frozen=True)
class CorefOptions:
    """Options of the ``coref`` analysis."""

    coref_candidates: Literal["all", "preceding"] = option(
        "all", help="Words a head's arg-max may pick for a mention: all (every "
        "other word of the window, special tokens excluded; the paper's reading) "
        "or preceding (only words before the mention's head).")
    coref_min_n: int = option(MIN_N, help="Fewest evaluated mentions of a mention type for coref_best.csv, the "
                              "summary and the report to name its best head (below it the type is listed, flagged "
                              "below_min_n, with no best head) (coref).")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.coref_min_n < 1:
            raise ValueError(f"coref_min_n must be at least 1, got {self.coref_min_n}")


@register
class CorefHeads(Analysis):
    """Antecedent-selection accuracy of every head per mention type, next to three baselines."""

    # declared state (add_state in start)
    correct_: torch.Tensor
    n_: torch.Tensor
    baseline_correct_: torch.Tensor

    name = "coref"
    report_order = 40
    ranking = Ranking("coref_accuracy", order=30, describe="the head's antecedent-selection accuracy")
    behaviour = Behaviour(table="coref_best", order=40)  # a best head of a mention type
    atlas_labels = ATLAS_LABELS
    needs = ("coreference",)
    description = "heads whose mention head word attends most to an antecedent's head word (Clark et al. s4.3)"
    Options = CorefOptions

    reads_words = True

    def wants(self, example: Example) -> bool:
        return example.kind == "window"

    def start(self, ctx: AnalysisContext) -> None:
        shape = (len(MENTION_TYPES), ctx.info.n_layers, ctx.info.n_heads)
        self.add_state("correct_", torch.zeros(shape, dtype=torch.float64, device=ctx.device))
        self.add_state("n_", torch.zeros(len(MENTION_TYPES), dtype=torch.float64))
        self.add_state("baseline_correct_", torch.zeros(len(BASELINES), len(MENTION_TYPES), dtype=torch.float64))
        self._queries: MentionQueries | None = None

    def begin_batch(self, batch: Batch) -> None:
        self._queries = mention_queries(batch, self.options.coref_candidates)
        if self._queries is None:
            return
        # Mentions and baselines do not depend on attention: counted once per batch, not per layer.
        self.n_ += torch.bincount(self._queries.types.cpu(), minlength=len(MENTION_TYPES)).double()
        self.baseline_correct_ += self._queries.baseline_correct

    def update_words(self, batch: Batch, layer: int, words: torch.Tensor) -> None:
        q = self._queries
        if q is None:
            return
        n_units = q.allowed.shape[-1]
        # Mention k's row of its window's word map; unit slots past the batch's longest window are padding.
        scores = words[q.row, :, q.query, :n_units]  # [mention, head, unit]
        scores = scores.masked_fill(~q.allowed[:, None, :], float("-inf"))
        picked = scores.argmax(-1)  # [mention, head]; ties go to the first unit
        hit = q.target.gather(1, picked)
        self.correct_[:, layer].index_add_(0, q.types, hit.to(torch.float64))

    def end_batch(self, batch: Batch) -> None:
        self._queries = None

    def accuracy(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Accuracies with ``all`` appended as the last mention type.

        Returns
        -------
        heads : Tensor of shape (n_types + 1, n_layers, n_heads)
            NaN for a type without mentions.
        baselines : Tensor of shape (n_baselines, n_types + 1)
        n : Tensor of shape (n_types + 1,)
        """
        correct = torch.cat([self.correct_.cpu(), self.correct_.cpu().sum(0, keepdim=True)])
        base = torch.cat([self.baseline_correct_, self.baseline_correct_.sum(1, keepdim=True)], dim=1)
        n = torch.cat([self.n_, self.n_.sum(0, keepdim=True)])
        denominator = torch.where(n > 0, n, torch.nan)
        return correct / denominator[:, None, None], base / denominator[None, :], n

    def finalize(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        heads_acc, base_acc, n = self.accuracy()
        _, n_layers, n_heads = heads_acc.shape
        frames = []
        for t, mention_type in enumerate(TYPES):
            frame = head_frame({"accuracy": heads_acc[t]}, n_layers, n_heads)
            frame.insert(0, "method", "head")
            frame.insert(3, "mention_type", mention_type)
            frame["n"] = int(n[t])
            frames.append(frame)
        baseline_rows = [{"method": method, "layer": None, "head": None, "mention_type": mention_type,
                          "accuracy": float(base_acc[k, t]), "n": int(n[t])}
                         for k, method in enumerate(BASELINES) for t, mention_type in enumerate(TYPES)]
        table = pd.concat([*frames, pd.DataFrame(baseline_rows)], ignore_index=True)
        table["layer"] = table["layer"].astype("Int64")
        table["head"] = table["head"].astype("Int64")
        min_n = int(self.options.coref_min_n)
        best = best_heads(table, min_n)
        per_head = head_frame({"coref_accuracy": heads_acc[-1]}, n_layers, n_heads)
        summary = {
            "mentions": {t: int(n[k]) for k, t in enumerate(TYPES)},
            "candidates": self.options.coref_candidates,
            "min_n": min_n,
            "min_n_rule": (f"a best head is named only for mention types with at least coref_min_n = {min_n} "
                           "evaluated mentions (head null and below_min_n True otherwise)"),
            "below_min_n": [r.mention_type for r in best.itertuples() if r.below_min_n],
            "best": {r.mention_type: {"head": r.best_head or None, "accuracy": _finite(r.accuracy),
                                      **{b: _finite(getattr(r, b)) for b in BASELINES}}
                     for r in best.itertuples()},
        }
        return AnalysisResult(name=self.name, heads=per_head, tables={"coref": table, "coref_best": best},
                              summary=summary)

def _finite(x: float) -> float | None:
    return None if pd.isna(x) else float(x)


def best_heads(table: pd.DataFrame, min_n: int = MIN_N) -> pd.DataFrame:
    """Per mention type, the best head of a ``coref.csv`` table next to the baselines.

    Parameters
    ----------
    table : DataFrame
        ``coref.csv``.
    min_n : int
        Fewest mentions of a type for a best head; below it ``best_head`` is empty, ``layer``, ``head`` and
        ``accuracy`` are missing and ``below_min_n`` is True.

    Returns
    -------
    DataFrame
        Columns ``mention_type, n, below_min_n, best_head`` (``L{layer}H{head}``), ``layer, head, accuracy``
        and one accuracy column per baseline; ties go to the lowest layer, then head.
    """
    rows = []
    heads = table[table["method"] == "head"]
    for mention_type in TYPES:
        part = heads[heads["mention_type"] == mention_type].dropna(subset=["accuracy"])
        base = table[(table["method"] != "head") & (table["mention_type"] == mention_type)]
        row: dict[str, Any] = {"mention_type": mention_type,
                               "n": int(heads.loc[heads["mention_type"] == mention_type, "n"].max())
                               if (heads["mention_type"] == mention_type).any() else 0}
        row["below_min_n"] = row["n"] < min_n
        if part.empty or row["below_min_n"]:
            row.update(best_head="", layer=None, head=None, accuracy=float("nan"))
        else:
            top = part.sort_values(["accuracy", "layer", "head"], ascending=[False, True, True]).iloc[0]
            row.update(best_head=head_name(top["layer"], top["head"]), layer=int(top["layer"]),
                       head=int(top["head"]), accuracy=float(top["accuracy"]))
        for method in BASELINES:
            value = base.loc[base["method"] == method, "accuracy"]
            row[method] = float(value.iloc[0]) if len(value) else float("nan")
        rows.append(row)
    out = pd.DataFrame(rows)
    out["layer"] = out["layer"].astype("Int64")
    out["head"] = out["head"].astype("Int64")
    return out
