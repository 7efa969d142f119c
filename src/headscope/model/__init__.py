"""Model loading and tokenisation with piece-to-word alignment.

The names below are imported on first use (PEP 562): ``headscope.model.packaged`` alone loads no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headscope.lazy import lazy_exports

if TYPE_CHECKING:
    from headscope.model.encode import Encoder, Example
    from headscope.model.load import AttentionUnavailableError, LoadedModel, ModelInfo, load_model
    from headscope.model.packaged import PACKAGED_MODELS

_EXPORTS = {"Encoder": "headscope.model.encode", "Example": "headscope.model.encode",
            "AttentionUnavailableError": "headscope.model.load", "LoadedModel": "headscope.model.load",
            "ModelInfo": "headscope.model.load", "load_model": "headscope.model.load",
            "PACKAGED_MODELS": "headscope.model.packaged"}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


__all__ = ["PACKAGED_MODELS", "AttentionUnavailableError", "Encoder", "Example", "LoadedModel", "ModelInfo",
           "load_model"]
