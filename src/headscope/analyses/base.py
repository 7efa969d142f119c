"""The accumulator protocol every analysis implements, its result type, and the registry of analyses.

An analysis consumes the corpus one batch at a time and keeps only running sums:

- ``start(ctx)`` allocates the state (attributes ending in ``_``) for the model in ``ctx``;
- ``update(batch, attn)`` adds one batch, vectorised on the model's device;
- ``merge(other)`` adds another accumulator of the same kind (shards, resumed runs): the result equals one
  run over both parts;
- ``finalize(ctx, results)`` returns an :class:`AnalysisResult` of tidy DataFrames. ``results`` holds the
  results of the analyses named in ``after``, which finalize first.

Like a scikit-learn estimator, the constructor only stores the options.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd
import torch

if TYPE_CHECKING:
    from pathlib import Path

    from headscope.engine.batch import Batch
    from headscope.engine.context import RunContext
    from headscope.engine.results import RunResult
    from headscope.model.encode import Example
    from headscope.report.section import ReportSection


@dataclass
class AnalysisResult:
    """What one analysis found, as tables ready to write and to read back."""

    name: str
    """The analysis's registry name."""
    heads: pd.DataFrame | None = None
    """Per-head columns (with ``layer`` and ``head``) merged into ``heads.csv``."""
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    """Tables written as ``DIR/{key}.csv``."""
    documents: dict[str, Any] = field(default_factory=dict)
    """JSON-serialisable objects written as ``DIR/{key}.json``."""
    summary: dict[str, Any] = field(default_factory=dict)
    """A few numbers for ``run.json`` (sizes, what was used, choices made)."""


class Analysis(ABC):
    """Base class of every analysis (see the module docstring for the protocol)."""

    name: ClassVar[str]
    """Registry name, used by ``--analyses``."""
    description: ClassVar[str] = ""
    """One line for ``headscope list``."""
    Options: ClassVar[type | None] = None
    """Dataclass of the analysis's own options (become ``headscope run`` flags), or None."""
    after: ClassVar[tuple[str, ...]] = ()
    """Analyses whose results ``finalize`` reads; they are run too."""

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None or self.Options is None else self.Options()

    @staticmethod
    def report(run: RunResult, figures: Path) -> ReportSection | None:
        """The report section for this analysis, built from a finished run's tables alone.

        Write figures with :func:`headscope.report.figures.save_figure` into ``figures`` (PNG and SVG).
        Return None when the run has no output of this analysis.
        """
        return None

    def wants(self, example: Example) -> bool:
        """Whether this analysis uses ``example``; others are masked out of its ``update``."""
        return True

    @abstractmethod
    def start(self, ctx: RunContext) -> None:
        """Allocate the running state for the model described by ``ctx.info``."""

    @abstractmethod
    def update(self, batch: Batch, attn: torch.Tensor) -> None:
        """Add one batch; ``attn`` has shape [batch, layer, head, query, key].

        ``attn`` lives in a buffer the next batch overwrites: copy whatever must outlive this call.
        """

    @abstractmethod
    def merge(self, other: Analysis) -> Analysis:
        """Add the state of ``other`` (same kind, same model) into this one and return self."""

    @abstractmethod
    def finalize(self, ctx: RunContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        """Turn the running state into tables."""


REGISTRY: dict[str, type[Analysis]] = {}


def register(cls: type[Analysis]) -> type[Analysis]:
    """Class decorator: make an analysis available by its ``name``."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"two analyses are named {cls.name!r}")
    REGISTRY[cls.name] = cls
    return cls


def head_name(layer: int, head: int) -> str:
    """A head as written everywhere in headscope's outputs: ``L{layer}H{head}``, 0-based."""
    return f"L{int(layer)}H{int(head)}"


def head_frame(values: dict[str, Any], n_layers: int, n_heads: int) -> pd.DataFrame:
    """A per-head table from arrays of shape (n_layers, n_heads), with 0-based ``layer`` and ``head``."""
    layer, head = torch.meshgrid(torch.arange(n_layers), torch.arange(n_heads), indexing="ij")
    data: dict[str, Any] = {"layer": layer.reshape(-1).numpy(), "head": head.reshape(-1).numpy()}
    for key, arr in values.items():
        data[key] = torch.as_tensor(arr).reshape(-1).cpu().numpy()
    return pd.DataFrame(data)
