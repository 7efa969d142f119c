"""Batching, layer-by-layer attention capture, word-level attention, the passes an analysis declares and how
they run, and what an analysis sees of the run (:class:`~headscope.engine.context.AnalysisContext`). The run
itself, holding the model, the corpus and the analyses, is :mod:`headscope.runner`, above the analyses."""

from headscope.engine.batch import Batch, bucket_batches, collate
from headscope.engine.capture import LayerAttention, capture, capture_stacked
from headscope.engine.results import RunResult
from headscope.engine.wordlevel import WordAttention, word_attention

__all__ = ["Batch", "LayerAttention", "RunResult", "WordAttention", "bucket_batches", "capture",
           "capture_stacked", "collate", "word_attention"]
