"""Block maths: one layer's float32 weights from its query and key, a block of query rows at a time.

Every route hands the consumer the same thing, a :class:`LayerAttention`: float32 weights of shape
[batch, head, query, key], right-aligned, padded rows and columns exactly 0, at most ``budget_bytes`` of them at
once. :func:`emit_blocks` computes them from the query and key the model passes to its attention function (the
``interface`` route); :func:`emit_whole` cuts a layer the model computed whole (``hooks`` and ``stacked``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from headscope.engine.batch import BYTES_PER_WEIGHT
from headscope.engine.capture.stream import Stream, gather_positions


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


def emit_blocks(stream: Stream, layer: int, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None,
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
        q = gather_positions(q, stream.align, 2)
        k = gather_positions(k, stream.align, 2)
    if bias is not None:
        bias = bias.float().expand(b, h, n, m)
        if stream.align is not None:
            bias = gather_positions(gather_positions(bias, stream.align, 2), stream.align, 3)
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
              output: torch.Tensor | None, q0: int, scaling: float, real: torch.Tensor | None, stream: Stream) -> None:
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


def _transform(stream: Stream, weights: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
    """The weights as ``--weights`` asks: plain, norm-based (given ``norms``) or the layer's rollout."""
    if norms is not None:
        from headscope.engine.norm_weights import norm_based

        return norm_based(weights, norms)
    if stream.rollout is not None:
        return stream.rollout.step(weights)
    return weights


def head_value_norms(stream: Stream, layer: int, value: torch.Tensor) -> torch.Tensor:
    """``||v_j W_O^h||`` [batch, head, key] of ``layer``, right-aligned; ``value`` has its heads expanded."""
    from headscope.engine.norm_weights import head_output_matrix, value_norms

    assert stream.projections is not None
    if layer >= len(stream.projections):
        raise RuntimeError(f"--weights norm: attention layer {layer} has no output projection (found "
                           f"{len(stream.projections)})")
    norms = value_norms(value, head_output_matrix(stream.projections[layer], int(value.shape[1])))
    if stream.align is not None:
        norms = gather_positions(norms, stream.align, 2)
    return norms


def emit_whole(stream: Stream, layer: int, weights: torch.Tensor) -> None:
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
        w = gather_positions(gather_positions(w, stream.align, 2), stream.align, 3)
    w = _transform(stream, w * real[:, None, :, None] * real[:, None, None, :])
    b, h, n, _ = w.shape
    rows = query_block_rows(b, h, n, stream.budget_bytes)
    for q0 in range(0, n, rows):
        stream.consume(LayerAttention(layer, w[:, :, q0:q0 + rows], q0))

