"""Batching, attention capture, word-level attention and the run loop."""

from headscope.engine.batch import Batch, bucket_batches, collate
from headscope.engine.capture import capture_attention
from headscope.engine.context import RunContext
from headscope.engine.results import RunResult
from headscope.engine.runner import NoUsableInputError, run
from headscope.engine.wordlevel import word_attention, word_attention_reference

__all__ = ["Batch", "NoUsableInputError", "RunContext", "RunResult", "bucket_batches", "capture_attention",
           "collate", "run", "word_attention", "word_attention_reference"]
