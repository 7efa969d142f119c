"""headscope's attention function for transformers' attention interface (the ``interface`` capture route).

Registered as ``attn_implementation="headscope"`` (:func:`register`). While a capture runs on this thread
(:func:`streaming`) it streams each layer's weights to the capture's :class:`~headscope.engine.capture.stream.Stream`
block by block; while a key mask is in force (:func:`masking_keys`, the KV budget of
:mod:`headscope.engine.forwards.kv_budget`) it narrows each layer's mask first. Otherwise it is plain SDPA.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Protocol

import torch

from headscope.engine.capture.blocks import emit_blocks, head_value_norms
from headscope.engine.capture.stream import Stream

#: Name under which headscope's attention function and mask are registered in transformers.
IMPLEMENTATION = "headscope"


class KeyMask(Protocol):
    """A change of each layer's attention mask while a forward runs (the KV budget)."""

    #: Why a left-padded capture is refused while it is in force (it counts positions from the first key).
    refusal: str

    def mask(self, module: torch.nn.Module, mask: torch.Tensor | None, query: torch.Tensor, keys: int
             ) -> torch.Tensor | None:
        """``mask`` as the layer of this call of ``module`` should see it; ``query`` [batch, head, query, dim]."""


class _Channel(threading.local):
    """What the attention function reads while a forward pass runs on this thread.

    The capture's one global, and why it must be one: transformers calls a registered attention function with
    the layer's module, its tensors and the model's own keyword arguments, and nothing the caller of
    ``model(...)`` holds reaches it (not every architecture hands extra keyword arguments down to its
    attention, and the module is the model's own). So the capture and the KV budget put their state here for
    the duration of a forward, through the context managers below that restore the previous state; it is
    per thread, so that two models running on two threads (a notebook, a test) do not see each other's.
    """

    stream: Stream | None = None
    keys: KeyMask | None = None


_channel = _Channel()


@contextlib.contextmanager
def streaming(stream: Stream | None) -> Iterator[Stream | None]:
    """Hand every layer the attention function computes on this thread to ``stream`` for the duration
    (None: compute none, plain SDPA)."""
    previous = _channel.stream
    _channel.stream = stream
    try:
        yield stream
    finally:
        _channel.stream = previous


@contextlib.contextmanager
def masking_keys(keys: KeyMask | None) -> Iterator[None]:
    """Narrow every layer's attention mask on this thread by ``keys`` for the duration."""
    previous = _channel.keys
    _channel.keys = keys
    try:
        yield
    finally:
        _channel.keys = previous


def active_key_mask() -> KeyMask | None:
    """The key mask in force on this thread, if any."""
    return _channel.keys


def headscope_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                        **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention function: the layer's output, and its weights streamed to headscope.

    Registered as ``attn_implementation="headscope"``. The output comes from SDPA, except for a float32
    model whose whole layer is one block, where it is ``weights @ value`` from the weights computed anyway.
    Outside a headscope capture (for example in the ablation pass) it is plain SDPA.
    """
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
        raise NotImplementedError(f"{type(module).__name__}: learned attention sinks are not supported yet")
    softcap = kwargs.pop("softcap", None)
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    n_rep = query.shape[1] // key.shape[1]
    keys = _channel.keys
    if keys is not None:  # a KV budget (engine.forwards.kv_budget): each budgeted head's keys limited in the mask
        with torch.no_grad():
            attention_mask = keys.mask(module, attention_mask, query, int(key.shape[2]))
    stream = _channel.stream
    if stream is not None:
        reuse = query.dtype == torch.float32 and stream.align is None and not (dropout and module.training)
        with torch.no_grad():
            causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", False)))
            layer = stream.layer(module)
            norms = (head_value_norms(stream, layer, repeat_kv(value, n_rep)) if stream.weights == "norm"
                     else None)
            output = emit_blocks(stream, layer, query, repeat_kv(key, n_rep), attention_mask,
                                 scale, softcap, kwargs.get("position_bias"), causal,
                                 repeat_kv(value, n_rep) if reuse else None, norms)
        if output is not None:
            return output, None
    if softcap is None:
        output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                           scaling=scaling, **kwargs)
    else:  # SDPA has no soft-capping: the eager formula, in the model's dtype
        scores = torch.matmul(query, repeat_kv(key, n_rep).transpose(2, 3)) * scale
        scores = torch.tanh(scores / softcap) * softcap
        if attention_mask is None and kwargs.get("is_causal", getattr(module, "is_causal", True)) \
                and scores.shape[-2] > 1:  # the mask was skipped for SDPA's is_causal (:func:`headscope_mask`)
            q, k = int(scores.shape[-2]), int(scores.shape[-1])
            attention_mask = torch.ones(q, k, dtype=torch.bool, device=scores.device).tril(k - q)
        if attention_mask is not None:
            # The dtype's minimum, as transformers' eager attention: a row with every key masked (a left-padded
            # position) is then finite, where -inf would give NaN that the next layer's keys carry into real rows.
            scores = (scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
                      if attention_mask.dtype == torch.bool else scores + attention_mask)
        probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
        output = torch.matmul(probs, repeat_kv(value, n_rep)).transpose(1, 2).contiguous()
    return output, None


def register() -> None:
    """Register :func:`headscope_attention` and its mask as ``attn_implementation="headscope"``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(IMPLEMENTATION, headscope_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, headscope_mask)


def written_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """SDPA's boolean mask, never skipped in favour of ``is_causal``: for attention functions that compute the
    weights themselves (a capture, AtP*'s recording).

    (The mask functions are called with their skip flags set, so a ``functools.partial`` would not hold.)
    """
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    kwargs["allow_is_bidirectional_skip"] = False
    return sdpa_mask(*args, **kwargs)


def headscope_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """headscope's mask: written out (:func:`written_mask`) while a capture or a key mask is in force on this
    thread, as the weights and the KV budget read it; otherwise SDPA's own choice, which skips it for
    ``is_causal`` where the mask is plain causal or full. A forward that reads no weights (each ablation of
    ``head_effects``, the losses) then runs SDPA's causal kernel, as the model's own ``sdpa`` does, skipping
    the blocks above the diagonal."""
    from transformers.masking_utils import sdpa_mask

    if _channel.stream is not None or _channel.keys is not None:
        return written_mask(*args, **kwargs)
    return sdpa_mask(*args, **kwargs)
