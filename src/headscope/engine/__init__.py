"""Batching, layer-by-layer attention capture, word-level attention and the passes (the run itself is
:func:`headscope.runner.orchestrate.run`, one layer above)."""

from headscope.engine.batch import Batch, bucket_batches, collate
from headscope.engine.capture import LayerAttention, capture, capture_stacked
from headscope.engine.context import RunContext
from headscope.engine.results import RunResult
from headscope.engine.wordlevel import WordAttention, word_attention

__all__ = ["Batch", "LayerAttention", "RunContext", "RunResult", "WordAttention", "bucket_batches", "capture",
           "capture_stacked", "collate", "word_attention"]
