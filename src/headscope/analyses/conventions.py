"""What several analyses share about ``--conventions``: which one applies, and float16 arithmetic as NumPy does it.

``--conventions clark`` reproduces Clark et al.'s released code, which stores the maps in float16 and
computes on them in float16 (surface, similarity, syntax); :func:`effective_conventions` says whether an
analysis implements the run's choice. The report's line naming the conventions is
:func:`headscope.report.section.conventions_html`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from headscope.engine.context import AnalysisContext


def as_float16(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to the nearest float16 (ties to even), kept in its own dtype: one float16 operation's result."""
    return x.to(torch.float16).to(x.dtype)


def float16_constant(values: Any, device: torch.device | str) -> torch.Tensor:
    """Python floats as NumPy casts them to float16 (straight from double), as float32 on ``device``."""
    return torch.from_numpy(np.asarray(values, dtype=np.float64).astype(np.float16).astype(np.float32)).to(device)


def effective_conventions(ctx: AnalysisContext, supported: tuple[str, ...]) -> str:
    """The run's ``--conventions`` if this analysis implements it, else ``headscope`` (its own definitions)."""
    wanted = ctx.conventions
    return wanted if wanted in supported else "headscope"
