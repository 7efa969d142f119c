"""Batching, layer-by-layer attention capture, word-level attention and the run loop."""

from headscope.engine.batch import Batch, bucket_batches, collate
from headscope.engine.capture import LayerAttention, capture, capture_stacked
from headscope.engine.context import RunContext
from headscope.engine.results import RunResult
from headscope.engine.runner import NoUsableInputError, run
from headscope.engine.wordlevel import WordAttention, word_attention, word_attention_reference

__all__ = ["Batch", "LayerAttention", "NoUsableInputError", "RunContext", "RunResult", "WordAttention",
           "bucket_batches", "capture", "capture_stacked", "collate", "run", "word_attention",
           "word_attention_reference"]
