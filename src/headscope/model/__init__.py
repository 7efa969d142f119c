"""Model loading and tokenisation with piece-to-word alignment."""

from headscope.model.encode import Encoder, Example
from headscope.model.load import (
    PACKAGED_MODELS,
    AttentionUnavailableError,
    LoadedModel,
    ModelInfo,
    load_model,
)

__all__ = ["PACKAGED_MODELS", "AttentionUnavailableError", "Encoder", "Example", "LoadedModel", "ModelInfo",
           "load_model"]
