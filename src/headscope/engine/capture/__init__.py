"""Attention weights handed over one layer at a time, in query chunks, as the model computes them.

Three routes, chosen per model when it is loaded (:func:`choose_route`):

``interface``
    Models whose attention goes through transformers' attention interface (BERT, RoBERTa, Llama, Qwen2,
    Mistral, Gemma, ...). headscope registers its own attention function: the layer's output comes from
    SDPA, as without headscope, and the weights are recomputed in float32 from the query and key the model
    passes in (after rotary embeddings, grouped-query heads expanded) with the model's own mask (causal,
    padding, sliding window), one block of query rows at a time. Each block goes to the consumer and is
    dropped, so no more than one block of one layer exists at any time.
``hooks``
    Models that compute attention in their own code (MPNet today): a forward hook on each attention module
    takes the layer's weights out of its output, hands them over and drops them, so the model never holds
    every layer's weights at once (one layer is computed whole by the model itself).
``stacked``
    headscope 0.1's path, kept as the reference that tests compare against: eager attention with
    ``output_attentions=True``, every layer stacked, then handed over layer by layer.

Whatever the route, the consumer sees float32 weights of shape [batch, head, query, key], right-aligned
(position 0 is each sequence's first real token, whatever the padding side of the forward pass), with padded
query rows and padded key columns exactly 0.

The modules, one job each: :mod:`~headscope.engine.capture.blocks` (the block maths: weights from query and
key, :class:`LayerAttention`), :mod:`~headscope.engine.capture.stream` (one batch's state, the layer of each
attention call), :mod:`~headscope.engine.capture.attention` (the attention function registered in
transformers), :mod:`~headscope.engine.capture.padding` (left and right padding) and
:mod:`~headscope.engine.capture.routes` (driving a batch through the model, choosing the route).
"""

from headscope.engine.capture.attention import IMPLEMENTATION, headscope_attention
from headscope.engine.capture.blocks import CAUSAL_CHUNK, Consumer, LayerAttention, query_block_rows
from headscope.engine.capture.padding import PaddingSide, model_inputs
from headscope.engine.capture.routes import (
    attention_modules,
    capture,
    capture_stacked,
    choose_route,
    eager_attention,
    ensure_route,
    layer_projections,
    probe_batch,
)
from headscope.engine.capture.stream import CallOrder, WeightsKind

__all__ = ["CAUSAL_CHUNK", "IMPLEMENTATION", "CallOrder", "Consumer", "LayerAttention", "PaddingSide", "WeightsKind",
           "attention_modules", "capture", "capture_stacked", "choose_route", "eager_attention", "ensure_route",
           "headscope_attention", "layer_projections", "model_inputs", "probe_batch", "query_block_rows"]
