"""What an analysis declares of its results for others to read, so that no reader names an analysis.

Three declarations, class attributes of :class:`~headscope.analyses.base.Analysis`:

- ``ranking``, a :class:`Ranking`: a per-head score of its results (higher: a stronger behaviour), which
  ``pruning`` prunes by, weakest first (roles' largest t, syntax's and coref's best accuracy, head_effects'
  measured effect);
- ``behaviour``, a :class:`Behaviour`: the heads in which it identified a behaviour (a held role, a distance
  pattern other than ``mixed``, a best head of a relation or of coreference), which pruning's seed claim tests;
- ``atlas_labels``, an :class:`AtlasLabels`: the head atlas's groups it gives, their thresholds, and the rule
  that adds its rows (:mod:`headscope.analyses.labels`, one module per analysis; ``headscope.atlas`` runs them).

Each has an ``order``, where the analysis comes among those that declare the same thing (pruning's orders and
seed claim, the atlas's groups), lower first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from headscope.analyses.registry import REGISTRY

if TYPE_CHECKING:
    from headscope.analyses.base import AnalysisResult


def _frame(result: AnalysisResult, table: str | None) -> pd.DataFrame | None:
    """The analysis's per-head columns (``table`` None) or one of its tables; None when it has not that."""
    return result.heads if table is None else result.tables.get(table)


@dataclass(frozen=True)
class Ranking:
    """A per-head score of an analysis's results, higher for a stronger behaviour (pruning's order by it prunes
    the weakest first)."""

    column: str
    """The column holding the score."""
    table: str | None = None
    """The table it is in (None: the analysis's per-head columns, ``heads.csv``)."""
    per_head: Literal["max"] | None = None
    """How a head's several rows combine (``max``: roles' largest t over the head's roles); None: one row each."""
    measured: bool = False
    """A measurement of its own rather than a behaviour (head_effects): never named as absent when it did not
    run."""
    order: int = 50
    """Position among the rankings (pruning's orders, its summary), lower first."""
    describe: str = ""
    """What the score is, in a few words."""

    def scores(self, result: AnalysisResult, n_layers: int, n_heads: int) -> np.ndarray | None:
        """The score of every head, shape (n_layers * n_heads,), ``-inf`` for a head without one; None when the
        result has no such column."""
        frame = _frame(result, self.table)
        if frame is None or self.column not in frame:
            return None
        if self.per_head == "max":
            frame = frame.groupby(["layer", "head"], as_index=False)[self.column].max()
        out = np.full(n_layers * n_heads, -np.inf)
        frame = frame.dropna(subset=[self.column])
        out[frame["layer"].to_numpy(int) * n_heads + frame["head"].to_numpy(int)] = frame[self.column].to_numpy(float)
        return out


@dataclass(frozen=True)
class Behaviour:
    """The heads in which an analysis identified a behaviour: the (layer, head) of rows of one of its tables."""

    table: str | None = None
    """The table (None: the analysis's per-head columns)."""
    where: Callable[[pd.DataFrame], pd.Series] | None = None
    """Which rows count (a boolean Series of the table); None: every row with a head."""
    order: int = 50
    """Position among the behaviours (pruning's seed claim), lower first."""

    def heads(self, result: AnalysisResult) -> set[tuple[int, int]] | None:
        """The heads, or None when the result has not the table."""
        frame = _frame(result, self.table)
        if frame is None:
            return None
        if self.where is not None:
            frame = frame[self.where(frame)]
        frame = frame.dropna(subset=["layer", "head"])
        return {(int(la), int(he)) for la, he in zip(frame["layer"], frame["head"], strict=True)}


def fmt(value: float) -> str:
    """A value in three significant digits, as the atlas writes its evidence."""
    return "nan" if value is None or not math.isfinite(float(value)) else f"{float(value):.3g}"


def fmt_p(p: float) -> str:
    """A p-value as the atlas writes it."""
    if p is None or not math.isfinite(float(p)):
        return "p = nan"
    return "p < 1e-10" if p < 1e-10 else f"p = {p:.2g}"


def ranks(values: pd.Series) -> tuple[pd.Series, int]:
    """Rank of each value among the defined ones (1 = highest, ties share the best rank), and how many."""
    return values.rank(ascending=False, method="min"), int(values.notna().sum())


def is_true(column: pd.Series) -> pd.Series:
    """A flag column read back from a CSV (``True``/``true``/``1.0`` as text or bool) as booleans."""
    return column.astype(str).str.lower().eq("true")


class AtlasRows:
    """The head atlas being built: what the run measured, and the rows the analyses' rules add.

    Parameters
    ----------
    heads : DataFrame
        The run's per-head table (``heads.csv``), index 0..n-1.
    tables : dict of str to DataFrame
        The run's other tables.
    run : dict
        The run's manifest (``run.json``).
    thresholds : dict of str to float
        The run's thresholds (defaults, then ``--atlas-threshold``).
    """

    def __init__(self, heads: pd.DataFrame, tables: Mapping[str, pd.DataFrame], run: Mapping[str, Any],
                 thresholds: Mapping[str, float]) -> None:
        self.heads, self.tables, self.run, self.thresholds = heads, tables, run, thresholds
        self.rows: list[dict[str, Any]] = []

    def summary(self, analysis: str) -> Mapping[str, Any]:
        """``analysis``'s summary in ``run.json`` (empty when it did not run)."""
        return (self.run.get("analyses", {}) or {}).get(analysis, {}) or {}

    def tokens(self) -> str:
        """", N tokens" of the run, for a sample that is the whole corpus (empty when not counted)."""
        tokens = self.run.get("counts", {}).get("tokens")
        return f", {int(tokens)} tokens" if tokens is not None else ""

    def add(self, layer: int, head: int, group: str, statistic: str, value: float, rank: str, rule: str,
            sample: str, evidence: str) -> None:
        """One row: head ``layer``, ``head`` has the label ``group``, resting on ``statistic``."""
        self.rows.append({"layer": int(layer), "head": int(head), "head_name": f"L{int(layer)}H{int(head)}",
                          "group": group, "statistic": statistic, "value": float(value), "rank": rank,
                          "rule": rule, "sample": sample, "evidence": evidence})

    def tested(self, column: str, group: str, rule: str, sample: str, keep: pd.Series | None = None) -> None:
        """A label for every head whose ``<column>_above_chance`` holds (and ``keep``, when given): the
        evidence gives the value, its interval and its chance level."""
        heads = self.heads
        values = pd.to_numeric(heads[column], errors="coerce")
        rank, n = ranks(values)
        flag = is_true(heads[f"{column}_above_chance"])
        if keep is not None:
            flag &= keep
        for k in values.index[flag]:
            r = f"{int(rank[k])}/{n}"
            low, high, chance = (float(heads.at[k, f"{column}_{part}"]) for part in ("low", "high", "chance"))
            self.add(heads.at[k, "layer"], heads.at[k, "head"], group, column, values[k], r, rule, sample,
                     f"{column} {fmt(values[k])} [{fmt(low)}, {fmt(high)}] vs chance {fmt(chance)} (rank {r})")

    def column(self, column: str, group: str, threshold: float, rule: str, sample: str) -> None:
        """A label for every head whose ``column`` is above ``threshold``."""
        heads = self.heads
        values = pd.to_numeric(heads[column], errors="coerce")
        rank, n = ranks(values)
        for k in values.index[values > threshold]:
            r = f"{int(rank[k])}/{n}"
            self.add(heads.at[k, "layer"], heads.at[k, "head"], group, column, values[k], r, rule, sample,
                     f"{column} {fmt(values[k])} (rank {r})")


@dataclass(frozen=True)
class AtlasLabels:
    """The head atlas's labels an analysis gives (``docs/atlas.md``)."""

    groups: tuple[str, ...]
    """The groups it can give, in the atlas's order; a name ending in ``:`` is a family (``role:``)."""
    rows: Callable[[AtlasRows], None]
    """The rule: adds a row for each head and label from what the run measured (nothing when the analysis's
    columns or tables are absent)."""
    thresholds: Mapping[str, float] = field(default_factory=dict)
    """Thresholds of its rules by name, with their defaults (``--atlas-threshold NAME=VALUE`` overrides one)."""
    shares: tuple[str, ...] = ()
    """Those of :attr:`thresholds` that are a share of the heads, in (0, 1]."""
    from_options: Mapping[str, str] = field(default_factory=dict)
    """Threshold -> the analysis's option whose value in the run (``run.json``'s ``analysis_options``) is its
    default (decoder_heads' ``sink_epsilon`` for ``sink_first``)."""
    order: int = 50
    """Position of its groups in the atlas, lower first."""


def declared_rankings() -> list[tuple[str, Ranking]]:
    """Every registered analysis's ranking, with the analysis's name, in their ``order``."""
    found = [(name, cls.ranking) for name, cls in REGISTRY.items() if cls.ranking is not None]
    return sorted(found, key=lambda item: item[1].order)


def declared_behaviours() -> list[tuple[str, Behaviour]]:
    """Every registered analysis's behaviour, with the analysis's name, in their ``order``."""
    found = [(name, cls.behaviour) for name, cls in REGISTRY.items() if cls.behaviour is not None]
    return sorted(found, key=lambda item: item[1].order)


def declared_atlas_labels() -> list[tuple[str, AtlasLabels]]:
    """Every registered analysis's atlas labels, with the analysis's name, in their ``order``."""
    found = [(name, cls.atlas_labels) for name, cls in REGISTRY.items() if cls.atlas_labels is not None]
    return sorted(found, key=lambda item: item[1].order)
