"""A real :class:`~headscope.engine.context.AnalysisContext` for tests that feed hand-made maps to analyses."""

from __future__ import annotations

from typing import Any

import torch

from headscope.engine.context import AnalysisContext
from headscope.model.load import ModelInfo
from headscope.seeds import Seeds


def analysis_context(n_layers: int = 1, n_heads: int = 1, *, causal: bool = False, name: str = "hand",
                     model_max_length: int = 1024, has_lm_head: bool = False, seed: int = 0,
                     **facts: Any) -> AnalysisContext:
    """The context of a run of a ``n_layers`` x ``n_heads`` model that no test loads; ``facts``: any other field
    of the context (``max_length`` defaults to the model's, as a run's does when --max-length is not given)."""
    info = ModelInfo(name=name, path=name, revision=None, model_type="hand", n_layers=n_layers, n_heads=n_heads,
                     max_length=model_max_length, is_causal=causal, has_lm_head=has_lm_head)
    facts.setdefault("max_length", model_max_length)
    if "treebanks" in facts:
        facts["treebanks"] = tuple(str(t) for t in facts["treebanks"])
    return AnalysisContext(info=info, device=torch.device("cpu"), seeds=Seeds(seed), **facts)
