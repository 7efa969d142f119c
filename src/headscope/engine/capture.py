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
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from headscope.config import Route
from headscope.engine.batch import BYTES_PER_WEIGHT

if TYPE_CHECKING:
    from headscope.config import Capture
    from headscope.engine.batch import Batch
    from headscope.model.load import LoadedModel

#: Name under which headscope's attention function and mask are registered in transformers.
IMPLEMENTATION = "headscope"

WeightsKind = Literal["attention", "norm", "rollout"]


@dataclass(frozen=True)
class LayerAttention:
    """One layer's attention for a batch, or one block of its query rows.

    Attributes
    ----------
    layer : int
        0-based layer index.
    weights : Tensor of shape [batch, head, query, key]
        float32; row ``r`` is query position ``query_start + r``; key positions are the whole sequence.
        Padded rows and columns are exactly 0. Valid only during the call it is handed to.
    query_start : int
        Position of the first row of ``weights``.
    """

    layer: int
    weights: torch.Tensor
    query_start: int = 0

    @property
    def query_stop(self) -> int:
        return self.query_start + int(self.weights.shape[-2])

    @property
    def is_first(self) -> bool:
        """True for the block that holds query 0 (count per-sequence things once per layer here)."""
        return self.query_start == 0

    @property
    def is_last(self) -> bool:
        """True for the layer's last block of query rows."""
        return self.query_stop >= int(self.weights.shape[-1])

    def select(self, rows: torch.Tensor) -> LayerAttention:
        """The same block for a subset of the batch's sequences (``rows``: int64 indices)."""
        return LayerAttention(self.layer, self.weights.index_select(0, rows), self.query_start)


Consumer = Callable[[LayerAttention], None]


def query_block_rows(batch_size: int, n_heads: int, seq: int, budget_bytes: int) -> int:
    """Query rows per block so that one block of one layer stays within ``budget_bytes``."""
    per_row = batch_size * n_heads * seq * BYTES_PER_WEIGHT
    return max(1, min(seq, budget_bytes // max(per_row, 1)))


# --- the stream a forward pass hands its layers to --------------------------------------------------------

class _Stream:
    """What the attention function and hooks need while one batch goes through the model."""

    def __init__(self, consume: Consumer, layer_of: dict[int, list[int]], budget_bytes: int,
                 align: torch.Tensor | None, real: torch.Tensor, weights: WeightsKind = "attention",
                 projections: list[torch.nn.Module] | None = None) -> None:
        self.consume = consume
        self.order = CallOrder(layer_of)
        self.budget_bytes = budget_bytes
        self.align = align
        self.real = real
        self.seen: list[int] = []
        self.weights = weights
        self.projections = projections
        self.padded = bool((~real).any())
        self._buffers: dict[str, torch.Tensor] = {}
        self._triangular: dict[int, bool] = {}
        self._masks: dict[tuple[int, bool, int, int], tuple[torch.Tensor | None, torch.Tensor | None, bool]] = {}
        self.rollout = None
        if weights == "rollout":
            from headscope.engine.rollout import Rollout

            self.rollout = Rollout(real)

    def buffer(self, numel: int, device: torch.device, name: str = "block") -> torch.Tensor:
        """A flat float32 work buffer of ``numel`` elements, the same memory for every layer of the batch."""
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.device != device:
            self._buffers.pop(name, None)  # free the old one first
            self._buffers[name] = buf = torch.empty(numel, dtype=torch.float32, device=device)
        return buf[:numel]

    def lower_triangular(self, add: torch.Tensor) -> bool:
        """True when the additive mask ``add`` [1, 1, seq, seq] masks every key after its query (causal)."""
        key = id(add)
        if key not in self._triangular:
            upper = torch.ones(add.shape[-2:], dtype=torch.bool, device=add.device).triu(1)
            self._triangular[key] = bool(torch.isneginf(add[0, 0][upper]).all())
        return self._triangular[key]

    def additive_mask(self, mask: torch.Tensor | None, causal: bool, n: int, m: int
                      ) -> tuple[torch.Tensor | None, bool]:
        """The model's mask as float32 to add to the scores: 0 where a key is seen, -inf where it is not.

        Shape [batch or 1, head or 1, query, key], right-aligned, padded keys masked; None when every key is
        seen. The flag is True when the values are 0 and -inf only (a boolean mask), False for a model's
        own float mask (added as it is). The layers of a forward pass share one mask object, so it is built
        once per object (kept alive here, so its ``id`` cannot be reused within the batch).
        """
        cache_key = (id(mask), causal, n, m)
        hit = self._masks.get(cache_key)
        if hit is not None and hit[0] is mask:
            return hit[1], hit[2]
        device = self.real.device
        add: torch.Tensor | None = None
        if mask is None and causal:
            mask = torch.ones(n, m, dtype=torch.bool, device=device).tril()[None, None]
            source = None
        else:
            source = mask
        if mask is not None:
            mask = mask.expand(mask.shape[0], mask.shape[1], n, m)
            if self.align is not None:
                full = mask.expand(self.real.shape[0], -1, n, m)
                mask = _gather_positions(_gather_positions(full, self.align, 2), self.align, 3)
            if mask.dtype == torch.bool:
                add = torch.zeros(mask.shape, dtype=torch.float32, device=device).masked_fill_(~mask, float("-inf"))
            else:
                add = mask.float().clone()
        if self.padded and (mask is None or mask.dtype != torch.bool):
            keys = ~self.real[:, None, None, :]
            add = (torch.zeros(keys.shape[0], 1, n, m, dtype=torch.float32, device=device) if add is None
                   else add.expand(keys.shape[0], -1, -1, -1).clone()).masked_fill_(keys, float("-inf"))
        exact = mask is None or mask.dtype == torch.bool
        self._masks[cache_key] = (source, add, exact)
        return add, exact

    def layer(self, module: torch.nn.Module) -> int:
        """The layer index of this call of ``module`` (:class:`CallOrder`)."""
        layer = self.order.layer(module)
        self.seen.append(layer)
        return layer


class CallOrder:
    """The layer of each call of an attention module, in call order: a module called k times in one forward pass
    (ALBERT's one shared layer; any weight-shared attention) is k layers, its i-th call the i-th of them.

    ``layer_of`` maps ``id(module)`` to the layers of its calls in one forward pass. It is learnt from the first
    forward pass that meets it empty (the route's probe pass): there, the n-th attention call of the pass is
    layer n. Later passes read it: the i-th call of a module within the pass (counted modulo its number of
    calls, so one object may span several forward passes, as a KV budget does) is its i-th layer.
    """

    def __init__(self, layer_of: dict[int, list[int]], cycle: int | None = None) -> None:
        self.layer_of = layer_of
        self.learning = not layer_of
        self.cycle = cycle  # learning across forward passes: a pass has this many calls
        self.calls: dict[int, int] = {}
        self.total = 0

    def layer(self, module: torch.nn.Module) -> int:
        key = id(module)
        k = self.calls.get(key, 0)
        self.calls[key] = k + 1
        self.total += 1
        if self.learning:
            if self.cycle is None or self.total <= self.cycle:
                self.layer_of.setdefault(key, []).append(self.total - 1)
                return self.total - 1
            self.learning = False  # one whole forward pass learnt: read it from now on
        layers = self.layer_of.get(key)
        if not layers:
            raise RuntimeError(f"{type(module).__name__}: an attention module the probe pass did not call "
                               f"(known: {len(self.layer_of)} modules)")
        return layers[k % len(layers)]


_local = threading.local()


def _active() -> _Stream | None:
    return getattr(_local, "stream", None)


@contextlib.contextmanager
def _streaming(stream: _Stream | None) -> Iterator[_Stream | None]:
    previous = _active()
    _local.stream = stream
    try:
        yield stream
    finally:
        _local.stream = previous


def _gather_positions(x: torch.Tensor, align: torch.Tensor, dim: int) -> torch.Tensor:
    """Reorder dimension ``dim`` (the sequence) of ``x`` [batch, ...] by ``align`` [batch, seq] per sequence."""
    shape = [1] * x.dim()
    shape[0], shape[dim] = align.shape
    return x.gather(dim, align.view(shape).expand(x.shape))


def _emit_blocks(stream: _Stream, layer: int, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None,
                 scaling: float, softcap: float | None, bias: torch.Tensor | None, causal: bool,
                 value: torch.Tensor | None = None, norms: torch.Tensor | None = None) -> torch.Tensor | None:
    """Compute float32 weights from ``query`` [batch, head, seq, dim] and ``key`` block by block.

    With ``value`` (a float32 model, right padding), also return the layer's output ``weights @ value``
    [batch, seq, head, dim], block by block: the weights exist anyway, so a second attention kernel would
    only compute them again. With ``norms`` [batch, head, key] (right-aligned), the blocks handed over are
    norm-based weights (:mod:`headscope.engine.norm_weights`); with ``--weights rollout`` the layer is one
    block and is handed over as its rollout (:mod:`headscope.engine.rollout`). The layer's output is always
    computed from the plain weights.

    The work per block is one kernel for the masked scores (``baddbmm`` onto the additive mask, which is built
    once per forward pass and shared by the layers), the scaling and a softmax in place and, with ``value``,
    one ``matmul`` for the output; long causal layers skip the masked keys chunk by chunk (:func:`_triangle`).
    The blocks live in one buffer reused by every layer of the batch (a fresh buffer of this size costs the
    CPU as much as the matmul: page faults), which is why a block is valid only during the call it is handed
    to.
    """
    b, h, n, d = query.shape
    m = int(key.shape[2])
    q = query.float()
    k = key.float()
    if stream.align is not None:
        q = _gather_positions(q, stream.align, 2)
        k = _gather_positions(k, stream.align, 2)
    if bias is not None:
        bias = bias.float().expand(b, h, n, m)
        if stream.align is not None:
            bias = _gather_positions(_gather_positions(bias, stream.align, 2), stream.align, 3)
    real = stream.real  # [batch, seq] after alignment
    padded = stream.padded
    # [batch or 1, head or 1, seq, key] or None; ``exact``: its values are 0 and -inf only, so adding it before
    # the scaling gives the same numbers as after (0 * s = 0, -inf * s = -inf).
    add, exact = stream.additive_mask(mask, causal, n, m)
    k_t = k.transpose(-1, -2)
    # Rollout multiplies whole layers, so it takes the layer in one block whatever the budget.
    rows = n if stream.rollout is not None else query_block_rows(b, h, n, stream.budget_bytes)
    flat = stream.buffer(b * h * min(rows, n) * m, q.device)
    fused = softcap is None and bias is None and add is not None and exact
    one_call = add is not None and add.shape[0] == 1 and add.shape[1] == 1
    triangle = (add is not None and fused and one_call and n == m >= 2 * CAUSAL_CHUNK
                and stream.lower_triangular(add))
    output = None if value is None else torch.empty(b, h, n, d, dtype=torch.float32, device=q.device)
    for q0 in range(0, n, rows):
        q1 = min(n, q0 + rows)
        r = q1 - q0
        scores = flat[:b * h * r * m].view(b, h, r, m)
        if triangle and add is not None:
            _triangle(scores, add, q, k, value, output, q0, scaling, real if padded else None, stream)
            stream.consume(LayerAttention(layer, _transform(stream, scores, norms), q0))
            continue
        # (The scaling stays after the product: a scaled GEMM rounds differently from 0.1's matmul then mul.)
        if fused and add is not None and one_call:  # the mask in the matmul
            torch.baddbmm(add[0, :, q0:q1], q[:, :, q0:q1].reshape(b * h, r, d), k_t.reshape(b * h, d, m),
                          out=scores.view(b * h, r, m)).mul_(scaling)
        elif fused and add is not None:
            for i in range(b):
                torch.baddbmm(add[i, :, q0:q1], q[i, :, q0:q1], k_t[i], out=scores[i])
            scores.mul_(scaling)
        else:
            torch.matmul(q[:, :, q0:q1], k_t, out=scores).mul_(scaling)
            if bias is not None:
                scores += bias[:, :, q0:q1]
            if softcap is not None:
                torch.tanh(scores.div_(softcap), out=scores).mul_(softcap)
            if add is not None:
                scores += add[:, :, q0:q1]
        weights = _softmax_(scores)
        if padded:
            # Padded query rows hold NaN where every key is masked for them (left-padded causal masks,
            # sliding windows past the end) or else a softmax over real keys: zero them, so no statistic
            # can see them.
            weights.nan_to_num_(0.0).mul_(real[:, None, q0:q1, None])
        if output is not None:
            assert value is not None
            if r == n:
                torch.matmul(weights, value, out=output)
            else:
                output[:, :, q0:q1] = torch.matmul(weights, value)
        stream.consume(LayerAttention(layer, _transform(stream, weights, norms), q0))
        del weights, scores
    return None if output is None else output.transpose(1, 2).contiguous()


#: Causal layers of at least twice this many tokens are computed in chunks of this many query rows, each against
#: the keys up to its last row (the later keys are masked for all of its rows): about 40% less matmul and
#: softmax at 1,024 tokens and more beyond.
CAUSAL_CHUNK = 256


def _triangle(scores: torch.Tensor, add: torch.Tensor, q: torch.Tensor, k: torch.Tensor, value: torch.Tensor | None,
              output: torch.Tensor | None, q0: int, scaling: float, real: torch.Tensor | None, stream: _Stream) -> None:
    """Fill the block ``scores`` [batch, head, rows, key] (rows from ``q0``) with a causal layer's weights.

    ``add`` [1, 1, seq, key] is lower-triangular (every key after a query masked). Each chunk of rows is computed
    against the keys up to its last row in a buffer of its own, copied in, and the rest of its rows set to 0.
    With ``value``, also its rows of ``output`` [batch, head, seq, dim]. ``real``: zero padded rows (given when
    the batch is padded).
    """
    b, h, r, m = scores.shape
    d = q.shape[-1]
    chunks = stream.buffer(b * h * min(CAUSAL_CHUNK, r) * m, q.device, "chunk")  # the largest chunk's size
    for c0 in range(q0, q0 + r, CAUSAL_CHUNK):
        c1 = min(q0 + r, c0 + CAUSAL_CHUNK)
        c = c1 - c0
        part = chunks[:b * h * c * c1].view(b * h, c, c1)
        torch.baddbmm(add[0, :, c0:c1, :c1], q[:, :, c0:c1].reshape(b * h, c, d),
                      k[:, :, :c1].reshape(b * h, c1, d).transpose(1, 2), out=part).mul_(scaling)
        weights = _softmax_(part).view(b, h, c, c1)
        if real is not None:
            weights.nan_to_num_(0.0).mul_(real[:, None, c0:c1, None])
        rows = scores[:, :, c0 - q0:c1 - q0]
        rows[..., :c1].copy_(weights)
        rows[..., c1:].zero_()
        if output is not None and value is not None:
            output[:, :, c0:c1] = torch.matmul(weights, value[:, :, :c1])


def _softmax_(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension, in place on the CPU (a new tensor of this size costs as much again)."""
    if scores.device.type == "cpu":
        return torch.ops.aten._softmax.out(scores, -1, False, out=scores)
    return torch.softmax(scores, dim=-1)


def _transform(stream: _Stream, weights: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
    """The weights as ``--weights`` asks: plain, norm-based (given ``norms``) or the layer's rollout."""
    if norms is not None:
        from headscope.engine.norm_weights import norm_based

        return norm_based(weights, norms)
    if stream.rollout is not None:
        return stream.rollout.step(weights)
    return weights


def _value_norms(stream: _Stream, layer: int, value: torch.Tensor) -> torch.Tensor:
    """``||v_j W_O^h||`` [batch, head, key] of ``layer``, right-aligned; ``value`` has its heads expanded."""
    from headscope.engine.norm_weights import head_output_matrix, value_norms

    assert stream.projections is not None
    if layer >= len(stream.projections):
        raise RuntimeError(f"--weights norm: attention layer {layer} has no output projection (found "
                           f"{len(stream.projections)})")
    norms = value_norms(value, head_output_matrix(stream.projections[layer], int(value.shape[1])))
    if stream.align is not None:
        norms = _gather_positions(norms, stream.align, 2)
    return norms


# --- per-head KV budgets: each head sees the first position and its last W keys only ----------------------------

class _Budget:
    """The key windows of every head while a budgeted forward runs (:func:`kv_budget`)."""

    def __init__(self, windows: torch.Tensor, layer_of: dict[int, list[int]]) -> None:
        self.windows = windows  # int64 [layer, head]; 0: every key
        self.order = CallOrder(layer_of, cycle=int(windows.shape[0]))

    def mask(self, module: torch.nn.Module, mask: torch.Tensor | None, query: torch.Tensor, keys: int
             ) -> torch.Tensor | None:
        """``mask`` with each budgeted head of ``module``'s layer limited to key 0 and its last W keys.

        The result is [batch or 1, head, query, key]: a boolean mask stays boolean (True: seen), a float mask
        gets the dtype's minimum where the budget hides a key. Query ``r`` is position ``keys - n + r`` (right
        padding: position 0 is each sequence's first token, the sink).
        """
        layer = self.order.layer(module)
        if layer >= self.windows.shape[0]:
            raise RuntimeError(f"kv_budget: attention layer {layer} has no row in windows of shape "
                               f"{tuple(self.windows.shape)}")
        windows = self.windows[layer].to(query.device)
        if not bool((windows > 0).any()):
            return mask
        n = int(query.shape[2])
        heads = int(query.shape[1])
        if windows.shape[0] != heads:
            raise RuntimeError(f"kv_budget: {heads} heads in attention layer {layer}, windows give {windows.shape[0]}")
        pos = torch.arange(keys - n, keys, device=query.device)[:, None]
        key = torch.arange(keys, device=query.device)[None, :]
        window = windows[:, None, None]
        # [head, query, key]: the sink, the last W keys (the query itself included), or every key (W = 0)
        seen = (key == 0)[None] | ((pos - key)[None] < window) | (window <= 0)
        if mask is None:
            causal = (key <= pos)[None, None]
            return causal & seen[None]
        mask = mask[..., :keys]
        if mask.dtype == torch.bool:
            return mask & seen[None]
        return mask.expand(mask.shape[0], heads, n, keys).masked_fill(~seen[None], torch.finfo(mask.dtype).min)


@contextlib.contextmanager
def kv_budget(loaded: LoadedModel, windows: Any) -> Iterator[None]:
    """For the duration, head ``(layer, head)`` with ``windows[layer, head] = W > 0`` attends only to the first
    position (the attention sink) and to its last ``W`` keys (itself included), as a streaming KV cache of one
    sink and a window of ``W`` would let it (Xiao et al. 2024); ``W = 0`` leaves the head whole.

    Works through headscope's attention function (the ``interface`` capture route), for the model's own
    forward (losses) and for a capture alike; inputs right-padded (position 0 is the first token).

    Parameters
    ----------
    loaded : LoadedModel
    windows : array-like of shape (n_layers, n_heads)
        Non-negative integers.
    """
    route = ensure_route(loaded)
    if route != "interface":
        raise ValueError(f"a KV budget needs headscope's attention function (the 'interface' capture route); "
                         f"{loaded.info.name} is captured by the {route!r} route")
    values = torch.as_tensor(np.asarray(windows), dtype=torch.int64)
    shape = (loaded.info.n_layers, loaded.info.n_heads)
    if tuple(values.shape) != shape or bool((values < 0).any()):
        raise ValueError(f"kv_budget windows must be non-negative integers of shape {shape}, got "
                         f"{tuple(values.shape)}")
    if not loaded.capture_state.get("layer_of"):  # learn the layer of each attention call first (CallOrder)
        capture(loaded, _probe_batch(loaded), lambda block: None, budget_bytes=1 << 30)
    previous = getattr(_local, "budget", None)
    _local.budget = _Budget(values, loaded.capture_state.setdefault("layer_of", {}))
    try:
        yield
    finally:
        _local.budget = previous


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
    budget: _Budget | None = getattr(_local, "budget", None)
    if budget is not None:  # a KV budget (kv_budget): each budgeted head's keys limited in the mask
        with torch.no_grad():
            attention_mask = budget.mask(module, attention_mask, query, int(key.shape[2]))
    stream = _active()
    if stream is not None:
        reuse = query.dtype == torch.float32 and stream.align is None and not (dropout and module.training)
        with torch.no_grad():
            causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", False)))
            layer = stream.layer(module)
            norms = (_value_norms(stream, layer, repeat_kv(value, n_rep)) if stream.weights == "norm"
                     else None)
            output = _emit_blocks(stream, layer, query, repeat_kv(key, n_rep), attention_mask,
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
        if attention_mask is not None:
            # The dtype's minimum, as transformers' eager attention: a row with every key masked (a left-padded
            # position) is then finite, where -inf would give NaN that the next layer's keys carry into real rows.
            scores = (scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
                      if attention_mask.dtype == torch.bool else scores + attention_mask)
        probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
        output = torch.matmul(probs, repeat_kv(value, n_rep)).transpose(1, 2).contiguous()
    return output, None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(IMPLEMENTATION, headscope_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, _explicit_mask)


def _explicit_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """SDPA's boolean mask, never skipped in favour of ``is_causal``: the weights need it written out.

    (The mask functions are called with their skip flags set, so a ``functools.partial`` would not hold.)
    """
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    kwargs["allow_is_bidirectional_skip"] = False
    return sdpa_mask(*args, **kwargs)


# --- driving one batch through the model ---------------------------------------------------------------

PaddingSide = Literal["right", "left"]


def _shift(batch: Batch, sign: int) -> torch.Tensor:
    """[batch, seq] positions: ``sign=1`` maps right-aligned to left-padded positions, ``-1`` the reverse."""
    n = batch.input_ids.shape[1]
    pad = (n - batch.lengths)[:, None]
    return (torch.arange(n, device=batch.input_ids.device)[None, :] + sign * pad) % n


def model_inputs(loaded: LoadedModel, batch: Batch, padding_side: PaddingSide = "right") -> dict[str, torch.Tensor]:
    """The forward pass's inputs, padded on ``padding_side`` (a :class:`Batch` is always right-padded).

    With left padding, models that number positions from 0 get ``position_ids`` counted from each
    sequence's first real token, so a sequence's result does not depend on its padding; RoBERTa- and
    MPNet-style embeddings count positions from the input ids themselves.
    """
    inputs = batch.model_inputs()
    if padding_side == "right":
        return inputs
    source = _shift(batch, -1)
    inputs = {name: t.gather(1, source) for name, t in inputs.items()}
    if _takes_positions(loaded):
        inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    return inputs


def _takes_positions(loaded: LoadedModel) -> bool:
    import inspect

    embeddings = getattr(loaded.base, "embeddings", None)
    if embeddings is not None and hasattr(embeddings, "padding_idx"):
        return False
    return "position_ids" in inspect.signature(loaded.base.forward).parameters


def capture(loaded: LoadedModel, batch: Batch, consume: Consumer, budget_bytes: int,
            route: Route | None = None, padding_side: PaddingSide = "right",
            weights: WeightsKind = "attention") -> None:
    """Run the model body on ``batch`` and hand every layer's attention to ``consume``, block by block.

    Parameters
    ----------
    loaded : LoadedModel
    batch : Batch
    consume : callable
        Called with a :class:`LayerAttention` for each block of query rows of each layer, layers in order,
        blocks in order within a layer.
    budget_bytes : int
        The most memory one block may take (see :data:`BYTES_PER_WEIGHT`).
    route : {"interface", "hooks", "stacked"}, optional
        Default: the model's own route (``loaded.route``).
    padding_side : {"right", "left"}
        Padding of the forward pass; the blocks are right-aligned either way.
    weights : {"attention", "norm", "rollout"}
        What is handed over (``--weights``, docs/weights.md): the attention weights, norm-based weights
        (Kobayashi et al. 2020; ``interface`` route only) or per-head attention rollout (Abnar & Zuidema
        2020; each layer in one block).
    """
    from headscope.errors import AttentionUnavailableError

    route = route or ensure_route(loaded)
    projections = None
    if weights == "norm":
        if route != "interface":
            raise ValueError(f"--weights norm needs the value vectors, which only the 'interface' capture route "
                             f"sees; {loaded.info.name} is captured by the {route!r} route (--capture {route}). "
                             "Use --weights attention or rollout, or --capture interface where the model "
                             "supports it.")
        projections = loaded.capture_state.get("output_projections")
        if projections is None:
            try:
                projections = layer_projections(loaded)
            except ValueError as exc:
                raise ValueError(f"--weights norm: {exc}") from exc
            loaded.capture_state["output_projections"] = projections
    elif weights not in ("attention", "rollout"):
        raise ValueError(f"weights must be attention, norm or rollout, got {weights!r}")
    if padding_side == "left" and getattr(_local, "budget", None) is not None:
        raise ValueError("a KV budget (kv_budget) counts positions from the first key: capture it right-padded")
    align = _shift(batch, 1) if padding_side == "left" else None
    stream = _Stream(consume, loaded.capture_state.setdefault("layer_of", {}), budget_bytes, align, batch.mask,
                     weights, projections)
    inputs = model_inputs(loaded, batch, padding_side)
    with torch.inference_mode():
        if route == "interface":
            with _streaming(stream):
                loaded.base(**inputs)
        elif route == "hooks":
            with _hooks(loaded, stream):
                loaded.base(**inputs, output_attentions=True)
        else:
            with eager_attention(loaded):
                out = loaded.base(**inputs, output_attentions=True)
            attentions = getattr(out, "attentions", None)
            if not attentions or attentions[0] is None:
                raise AttentionUnavailableError(f"{loaded.info.name}: no attention weights were returned")
            for layer, layer_weights in enumerate(attentions):
                _emit_whole(stream, layer, layer_weights)
            del out, attentions
    if not stream.seen:
        raise AttentionUnavailableError(
            f"{loaded.info.name}: the {route!r} capture route saw no attention layer; try another "
            "--capture route")


def layer_projections(loaded: LoadedModel) -> list[torch.nn.Module]:
    """The self-attention output projection of every layer, in layer order; a projection that several layers
    share (ALBERT) appears once per layer, in the order a forward pass calls it.

    Raises
    ------
    ValueError
        No known projection, or a number of calls that is not the model's number of layers.
    """
    from headscope.model.gates import find_output_projections

    unique = find_output_projections(loaded.base)
    n_layers = loaded.info.n_layers
    if len(unique) == n_layers:
        return unique
    order: list[torch.nn.Module] = []
    handles = [m.register_forward_pre_hook(lambda module, args: order.append(module)) for m in unique]
    try:
        with torch.inference_mode(), _streaming(None):
            loaded.base(**_probe_batch(loaded).model_inputs())
    finally:
        for handle in handles:
            handle.remove()
    if len(order) != n_layers:
        raise ValueError(f"{loaded.info.name}: a forward pass calls the attention output projections "
                         f"{len(order)} times for {n_layers} layers")
    return order


def _emit_whole(stream: _Stream, layer: int, weights: torch.Tensor) -> None:
    """Hand over a layer the model computed whole: align, zero padding, then in blocks of query rows."""
    real = stream.real
    n = int(real.shape[1])
    if weights.dim() != 4 or tuple(weights.shape[-2:]) != (n, n):
        from headscope.errors import UnsupportedModelError

        raise UnsupportedModelError(f"attention layer {layer} has weights of shape {tuple(weights.shape)}, not a "
                                    f"[query, key] map of the {n}-token sequence onto itself")
    stream.seen.append(layer)
    w = weights.float()
    if stream.align is not None:
        w = _gather_positions(_gather_positions(w, stream.align, 2), stream.align, 3)
    w = _transform(stream, w * real[:, None, :, None] * real[:, None, None, :])
    b, h, n, _ = w.shape
    rows = query_block_rows(b, h, n, stream.budget_bytes)
    for q0 in range(0, n, rows):
        stream.consume(LayerAttention(layer, w[:, :, q0:q0 + rows], q0))


@contextlib.contextmanager
def eager_attention(loaded: LoadedModel) -> Iterator[None]:
    """Eager attention for the duration, the model's own restored after: the weights as the model's own
    output (the stacked reference route) and in the autograd graph (gradient analyses)."""
    model = loaded.model
    current = getattr(model.config, "_attn_implementation", None)
    if current in (None, "eager") or loaded.route == "hooks" or not hasattr(model, "set_attn_implementation"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(current)


def attention_modules(loaded: LoadedModel) -> list[torch.nn.Module]:
    """For the hooks route: the innermost module of each layer whose output carries its attention weights, one
    entry per layer in call order (a module called k times, as ALBERT's shared layer, is k entries).

    Found once with a probe pass (children finish before their parents, so the first module to return a
    given weights tensor is the one that computed it; each call returns a new tensor, kept alive by the output).
    """
    cached = loaded.capture_state.get("hook_modules")
    if cached is not None:
        return cached
    producers: dict[int, torch.nn.Module] = {}
    handles = []

    def record(module: torch.nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, tuple) and len(output) > 1 and isinstance(output[1], torch.Tensor) \
                and output[1].dim() == 4:
            producers.setdefault(id(output[1]), module)

    for module in loaded.base.modules():
        handles.append(module.register_forward_hook(record))
    try:
        with torch.inference_mode():
            loaded.base(**_probe_batch(loaded).model_inputs(), output_attentions=True)
    finally:
        for handle in handles:
            handle.remove()
    modules = list(producers.values())  # in the order the weights were made: call order
    loaded.capture_state["hook_modules"] = modules
    return modules


@contextlib.contextmanager
def _hooks(loaded: LoadedModel, stream: _Stream) -> Iterator[None]:
    from headscope.errors import AttentionUnavailableError

    modules = attention_modules(loaded)
    layers: dict[int, list[int]] = {}
    for layer, m in enumerate(modules):
        layers.setdefault(id(m), []).append(layer)
    calls: dict[int, int] = {}

    def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        # The i-th call of a module in this forward pass is its i-th layer (a shared module is several layers).
        mine = layers[id(module)]
        k = calls.get(id(module), 0)
        calls[id(module)] = k + 1
        if k >= len(mine):
            raise AttentionUnavailableError(f"{loaded.info.name}: {type(module).__name__} was called more often "
                                            f"than in the probe pass ({len(mine)})")
        _emit_whole(stream, mine[k], output[1])
        return (output[0], None, *output[2:])  # the model keeps no layer's weights

    handles = [m.register_forward_hook(hook) for m in dict.fromkeys(modules)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _probe_batch(loaded: LoadedModel) -> Batch:
    """Two words through the tokenizer: the input of the probe passes made when a model is loaded."""
    from headscope.engine.batch import probe_batch

    enc = loaded.tokenizer("attention check", return_tensors="np")
    return probe_batch(enc["input_ids"][0], loaded.device)


def ensure_route(loaded: LoadedModel) -> Route:
    """``loaded.route``, chosen now by :func:`choose_route` from the route asked for (``loaded.capture``) when
    the loader left it open: the route is the engine's choice, made where a run opens its context or at the
    first capture."""
    if loaded.route is None:
        loaded.route = choose_route(loaded, loaded.capture)
    return loaded.route


def choose_route(loaded: LoadedModel, requested: Capture = "auto") -> Route:
    """The capture route for a loaded model: ``interface`` where it works, else ``hooks``, else an error.

    ``requested`` is ``auto`` or a route name; ``auto`` tries the attention interface first. A route is taken
    only when its probe pass gives every layer once, in order (a module called several times per forward pass is
    one layer per call), every head, and rows that are distributions over every key of the sequence; on a
    float32 model its weights must also equal the model's own eager ``output_attentions`` (the ``stacked``
    route) on the probe input. Never silently wrong: a model whose weights come through but fail these checks
    is refused (:class:`~headscope.errors.UnsupportedModelError`), one without weights by any route named
    (:class:`~headscope.errors.AttentionUnavailableError`).
    """
    from headscope.errors import AttentionUnavailableError, UnsupportedModelError
    from headscope.model.support import architecture, check_config

    check_config(loaded.model.config, loaded.info.name)  # models built in memory never met the loader's check
    n_layers = loaded.info.n_layers
    batch = _probe_batch(loaded)
    tried: list[str] = []
    inexact: list[str] = []
    candidates = ["interface", "hooks"] if requested == "auto" else [requested]
    reference: dict[int, torch.Tensor] | None = None
    for route in candidates:
        if route == "interface":
            model = loaded.model
            if not model._can_set_attn_implementation():
                tried.append("interface: the model does not use transformers' attention interface")
                continue
            _register()
            model.set_attn_implementation(IMPLEMENTATION)
        elif route == "hooks" and loaded.model.config._attn_implementation != "eager":
            loaded.model.set_attn_implementation("eager")
        loaded.route = route  # type: ignore[assignment]
        loaded.capture_state.clear()
        try:
            layers, maps = _probe_maps(loaded, batch, route)  # type: ignore[arg-type]
        except UnsupportedModelError as exc:
            tried.append(f"{route}: {exc}")
            inexact.append(f"{route}: {exc}")
            continue
        except AttentionUnavailableError as exc:
            tried.append(f"{route}: {exc}")
            continue
        heads = {int(w.shape[1]) for w in maps.values()}
        if layers != list(range(n_layers)) or heads != {loaded.info.n_heads}:
            tried.append(f"{route}: saw {len(layers)} layers x {sorted(heads)} heads, the config says "
                         f"{n_layers} x {loaded.info.n_heads}")
            continue
        problem = _not_a_map(maps, batch)
        if problem is None and route != "stacked" and next(loaded.model.parameters()).dtype == torch.float32:
            if reference is None:
                try:
                    reference = _probe_maps(loaded, batch, "stacked")[1]
                except AttentionUnavailableError:
                    reference = {}  # no eager weights to compare with: the matrix vouches for the families
            if reference:
                diff = max(float((maps[k] - reference[k]).abs().max()) if k in reference else float("inf")
                           for k in maps)
                if diff > 1e-4:
                    problem = f"differs from the model's own eager attention by {diff:.2g}"
        if problem is None:
            return route  # type: ignore[return-value]
        tried.append(f"{route}: {problem}")
        inexact.append(f"{route}: {problem}")
    if requested == "auto" and loaded.model.config._attn_implementation != "eager":
        loaded.model.set_attn_implementation("eager")
    if inexact:
        raise UnsupportedModelError(
            f"{loaded.info.name}: {architecture(loaded.model.config)}: headscope cannot capture this model's "
            f"attention exactly (--capture {requested}): " + "; ".join(inexact) + " (docs/models.md)")
    raise AttentionUnavailableError(
        f"{loaded.info.name}: headscope cannot get attention weights from this model by any route "
        f"(--capture {requested}): " + "; ".join(tried))


def _probe_maps(loaded: LoadedModel, batch: Batch, route: Route) -> tuple[list[int], dict[int, torch.Tensor]]:
    """The layers in the order their first block came (``is_first``) and each layer's whole map, by the index the
    blocks carry (so that two calls given one index, or a layer given none, show)."""
    layers: list[int] = []
    maps: dict[int, list[torch.Tensor]] = {}

    def keep(block: LayerAttention) -> None:
        if block.is_first:
            layers.append(block.layer)
        maps.setdefault(block.layer, []).append(block.weights.clone())

    capture(loaded, batch, keep, budget_bytes=1 << 30, route=route)
    return layers, {k: torch.cat(v, dim=2) for k, v in maps.items()}


def _not_a_map(maps: dict[int, torch.Tensor], batch: Batch) -> str | None:
    """Why the probe's weights are not [batch, head, query, key] distributions over the whole sequence, or None."""
    n = int(batch.input_ids.shape[1])
    for layer, w in sorted(maps.items()):
        if w.dim() != 4 or tuple(w.shape[2:]) != (n, n):
            return (f"layer {layer}'s weights have shape {tuple(w.shape)}, not a [query, key] map of the "
                    f"{n}-token sequence onto itself")
        if not bool(torch.isfinite(w).all()) or float((w.sum(-1) - 1).abs().max()) > 1e-3:
            return f"layer {layer}'s rows are not distributions over the keys (not a [query, key] map)"
    return None


def capture_stacked(loaded: LoadedModel, batch: Batch, route: Route | None = None,
                    padding_side: PaddingSide = "right", weights: WeightsKind = "attention") -> torch.Tensor:
    """Every layer of one (small) batch as one tensor, for the viewer and tests.

    Returns
    -------
    Tensor of shape [batch, layer, head, query, key]
        float32, right-aligned, padding exactly 0. Holds every layer: only for short inputs.
    """
    layers: list[list[torch.Tensor]] = []

    def keep(block: LayerAttention) -> None:
        if block.is_first:
            layers.append([])
        layers[-1].append(block.weights.clone())  # a block's memory is reused by the next one

    capture(loaded, batch, keep, budget_bytes=1 << 62, route=route, padding_side=padding_side, weights=weights)
    return torch.stack([torch.cat(blocks, dim=2) for blocks in layers], dim=1)
