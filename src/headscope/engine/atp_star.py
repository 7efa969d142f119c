"""AtP*'s QK fix (Kramar et al. 2024, arXiv 2403.00745, section 3.1.1): attribution patching for the query and
key nodes of every head with the attention softmax recomputed exactly instead of linearised.

AtP estimates the effect of patching a node ``n`` as ``(n' - n) . dL/dn``. For a query or key the gradient
runs through the head's softmax, which a patch can move far (a saturated softmax has a gradient near 0 where
the patch changes everything). The QK fix computes the head's attention pattern with the patched query or key
exactly and takes the linear estimate only from the pattern on:

    query node (head h, position t, patched to q'):   (softmax(s'_t) - A_t) . dL/dA_t
    key node   (head h, position s, patched to k'):   sum over queries t of (softmax(s_t with s_ts -> s'_ts)
                                                       - A_t) . dL/dA_t

with ``A`` the head's attention weights, ``s`` its scores (``scale * q . k``, soft-capped where the model caps
them, masked as the model masks them) and ``dL/dA`` from one backward of the summed loss. A key node changes one
score of each row, so its new row is the old one rescaled (:func:`key_node_effects`, closed form).

Which nodes head_effects estimates (docs/head_effects.md): a head's *output* ``z`` replaced by ``r`` at every
token. Since every row of ``A`` sums to 1 over the keys it sees, that is exactly the head's *values* replaced
by ``r`` at every key with its queries and keys untouched (:func:`recorded_attention`'s ``value_patch``; tested).
Its query and key nodes are not patched, so their QK-fixed terms are 0 and AtP* for that node is AtP with
GradDrop. :func:`qk_attribution` gives the QK-fixed (and the linear) estimates for any patch of the queries and
keys, for the query/key nodes themselves.

With grouped-query attention a key head serves several query heads; the key node here is the key *as one query
head reads it* (after ``repeat_kv``), as the paper's heads each have their own keys.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.model.load import LoadedModel

#: The transformers attention implementation that records each layer's queries, keys and weights.
IMPLEMENTATION = "headscope_qk"

#: A patch of one layer's queries and keys: ``(layer, query, key) -> (query', key')``, each [batch, head, seq,
#: head_dim] as the attention function receives them (after rotary positions; keys repeated per query head).
Patch = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class AttentionRecord:
    """One call of an attention layer: its queries, keys, how it scores them, and its weights in the graph."""

    query: torch.Tensor
    """[batch, head, query, head_dim], detached, after rotary positions."""
    key: torch.Tensor
    """[batch, head, key, head_dim], detached, repeated to the query heads."""
    mask: torch.Tensor | None
    """Boolean [batch, 1 or head, query, key] (True: seen), or None (every key seen)."""
    scale: float
    softcap: float | None
    weights: torch.Tensor
    """[batch, head, query, key], the softmax in the autograd graph."""


_local = threading.local()


def _boolean(mask: torch.Tensor | None) -> torch.Tensor | None:
    if mask is None or mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2  # an additive mask: 0 where seen, the dtype's minimum where not


def scores(query: torch.Tensor, key: torch.Tensor, scale: float, softcap: float | None, mask: torch.Tensor | None
           ) -> torch.Tensor:
    """The attention scores as the model computes them before its softmax, in float64: ``scale * q . k``,
    soft-capped, and the unseen keys at float64's minimum (a row with no key seen comes out uniform, as the
    model's eager attention gives it). Shapes [batch, head, query, key]."""
    s = torch.matmul(query.double(), key.double().transpose(-1, -2)) * scale
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    if mask is not None:
        s = s.masked_fill(~mask, torch.finfo(torch.float64).min)
    return s


def recording_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                        **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention function: eager attention (the weights in the autograd graph), each call recorded
    in order (:func:`recorded_attention`)."""
    from transformers.integrations.sdpa_attention import repeat_kv

    if kwargs.get("position_bias") is not None or kwargs.get("sinks") is not None or kwargs.get("s_aux") is not None:
        raise NotImplementedError(f"{type(module).__name__}: the QK fix handles plain scaled dot-product attention")
    records: list[AttentionRecord] = _local.records
    softcap = kwargs.get("softcap")
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    n_rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    raw = torch.matmul(query, key.transpose(2, 3)) * scale
    if softcap is not None:
        raw = torch.tanh(raw / softcap) * softcap
    mask = _boolean(attention_mask)
    if mask is not None:
        raw = raw.masked_fill(~mask, torch.finfo(raw.dtype).min)
    # in float32 at least (as eager attention), in float64 for a float64 model
    weights = torch.softmax(raw, dim=-1, dtype=torch.promote_types(raw.dtype, torch.float32)).to(query.dtype)
    layer = len(records)
    patch = getattr(_local, "value_patch", None)
    if patch is not None:
        value = patch(layer, value)
    records.append(AttentionRecord(query.detach(), key.detach(), mask, scale,
                                   None if softcap is None else float(softcap), weights))
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def recorded_attention(loaded: LoadedModel, value_patch: Callable[[int, torch.Tensor], torch.Tensor] | None = None
                       ) -> Iterator[list[AttentionRecord]]:
    """The model's attention as :func:`recording_attention` for the duration (its own restored after), yielding
    the list each layer's :class:`AttentionRecord` is appended to, in call order.

    ``value_patch(layer, value)``: the values [batch, head, key, head_dim] (repeated per query head) each layer
    uses instead of its own (a value-node patch).
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from headscope.engine.capture.attention import written_mask

    model = loaded.model
    if loaded.route == "hooks" or not hasattr(model, "set_attn_implementation"):
        raise ValueError("the QK fix needs a model whose attention goes through transformers' attention interface "
                         f"(route {loaded.route!r})")
    AttentionInterface.register(IMPLEMENTATION, recording_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, written_mask)
    current = model.config._attn_implementation
    model.set_attn_implementation(IMPLEMENTATION)
    _local.records, _local.value_patch = [], value_patch
    try:
        yield _local.records
    finally:
        _local.records, _local.value_patch = [], None
        model.set_attn_implementation(current)


def query_node_effects(record: AttentionRecord, grad: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """QK-fixed estimates of patching each query node: ``(softmax(s'_t) - A_t) . dL/dA_t``.

    Parameters
    ----------
    record : AttentionRecord
    grad : Tensor [batch, head, query, key]
        ``dL/dA``.
    query : Tensor [batch, head, query, head_dim]
        The patched queries (position ``t``'s patch moves row ``t`` only).

    Returns
    -------
    Tensor [batch, head, query], float64
    """
    before = torch.softmax(scores(record.query, record.key, record.scale, record.softcap, record.mask), -1)
    after = torch.softmax(scores(query, record.key, record.scale, record.softcap, record.mask), -1)
    return ((after - before) * grad.double()).sum(-1)


def key_node_effects(record: AttentionRecord, grad: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """QK-fixed estimates of patching each key node alone: ``sum_t (A'_t - A_t) . dL/dA_t``.

    Patching key ``s`` moves one score of each row by ``d = s'_ts - s_ts``; the new row is the old one times
    ``c = 1 / (1 + A_ts (e^d - 1))``, entry ``s`` times ``e^d c`` as well, so that
    ``(A'_t - A_t) . G_t = (c - 1) A_t . G_t + c A_ts G_ts (e^d - 1)``: exact, without a softmax per key.

    Parameters
    ----------
    key : Tensor [batch, head, key, head_dim]
        The patched keys.

    Returns
    -------
    Tensor [batch, head, key], float64
    """
    s = scores(record.query, record.key, record.scale, record.softcap, None)
    moved = scores(record.query, key, record.scale, record.softcap, None) - s
    if record.mask is not None:
        moved = moved.masked_fill(~record.mask, 0.0)  # an unseen key stays unseen
        s = s.masked_fill(~record.mask, torch.finfo(torch.float64).min)
    a, g = torch.softmax(s, -1), grad.double()
    grow = torch.expm1(moved)
    c = 1.0 / (1.0 + a * grow)
    return ((c - 1.0) * (a * g).sum(-1, keepdim=True) + c * a * g * grow).sum(-2)


def linear_effects(record: AttentionRecord, grad: torch.Tensor, query: torch.Tensor, key: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain AtP for the same nodes, ``(q'_t - q_t) . dL/dq_t`` and ``(k'_s - k_s) . dL/dk_s`` with the gradient
    through the softmax (what the QK fix replaces). Returns [batch, head, query] and [batch, head, key]."""
    q, k = record.query.double(), record.key.double()
    raw = torch.matmul(q, k.transpose(-1, -2)) * record.scale
    a = torch.softmax(scores(record.query, record.key, record.scale, record.softcap, record.mask), -1)
    g = grad.double()
    d_scores = a * (g - (a * g).sum(-1, keepdim=True))  # the softmax's backward
    if record.softcap is not None:
        d_scores = d_scores * (1.0 - torch.tanh(raw / record.softcap) ** 2)
    d_query = torch.matmul(d_scores, k) * record.scale
    d_key = torch.matmul(d_scores.transpose(-1, -2), q) * record.scale
    return (((query.double() - q) * d_query).sum(-1), ((key.double() - k) * d_key).sum(-1))


@dataclass
class QKAttribution:
    """Per sequence, layer and head, float64 [batch, n_layers, n_heads]: the query and key nodes' estimates
    summed over positions (each node patched alone, as AtP sums node estimates)."""

    query: np.ndarray
    """QK-fixed, query nodes."""
    key: np.ndarray
    """QK-fixed, key nodes."""
    query_linear: np.ndarray
    """Plain AtP, query nodes."""
    key_linear: np.ndarray
    """Plain AtP, key nodes."""
    loss: float
    terms: int


def qk_attribution(loaded: LoadedModel, batch: Batch, kind: str, seed: int, patch: Patch) -> QKAttribution:
    """AtP* with the QK fix for the query and key nodes of every head of ``batch``: one forward with eager
    attention recorded, one backward of the summed loss to every layer's weights, then per layer the patterns
    with the patched queries (keys) recomputed (:func:`query_node_effects`, :func:`key_node_effects`).

    Raises
    ------
    ValueError
        A loss other than an LM's (the contrastive loss runs the model twice per batch), or a model whose
        attention is not called through transformers' interface.
    """
    from headscope.engine.forwards import LM_LOSSES, batch_loss, differentiable_inputs, plain_batch

    if kind not in LM_LOSSES:
        raise ValueError(f"the QK fix is computed for LM losses; this model's loss is {kind}")
    with (torch.inference_mode(False), torch.enable_grad(), differentiable_inputs(loaded),
          recorded_attention(loaded) as records):
        batch = plain_batch(batch)
        loss, n = batch_loss(loaded, batch, kind, seed)
        grads = torch.autograd.grad(loss, [r.weights for r in records])
        out: dict[str, list[torch.Tensor]] = {"query": [], "key": [], "query_linear": [], "key_linear": []}
        with torch.no_grad():
            for layer, (record, grad) in enumerate(zip(records, grads, strict=True)):
                query, key = patch(layer, record.query, record.key)
                out["query"].append(query_node_effects(record, grad, query).sum(-1))
                out["key"].append(key_node_effects(record, grad, key).sum(-1))
                linear_q, linear_k = linear_effects(record, grad, query, key)
                out["query_linear"].append(linear_q.sum(-1))
                out["key_linear"].append(linear_k.sum(-1))
    arrays = {name: torch.stack(parts, 1).cpu().numpy() for name, parts in out.items()}
    return QKAttribution(**arrays, loss=float(loss.detach()), terms=n)
