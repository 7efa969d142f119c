"""Head-by-head similarity of attention and a 2-D map of the heads (Clark et al. 2019, section 6).

The distance between heads a and b is the Jensen-Shannon divergence of their attention rows, summed over
every query token of the corpus::

    D[a, b] = sum_tokens JS(P_a(token), P_b(token)),   JS(P, Q) = H((P + Q) / 2) - (H(P) + H(Q)) / 2

in nats (so each term lies in [0, log 2]), with every row smoothed as ``0.999 * A + 0.001 / n`` over the
sequence's ``n`` real keys. The heads are then embedded in 2-D by metric MDS on ``D / tokens``.

The cost grows as heads^2 x tokens x length, so by default a seeded sample of query tokens is used
(``--similarity-sample``, the share of query tokens kept; 1 keeps all, as in the paper). The draw for a
sequence depends only on the seed and the sequence's corpus index, so it does not depend on batching;
``run.json`` records how many tokens were used.

With ``--conventions clark`` the distance is computed as Clark et al.'s ``head_distances.py`` does: over every
query token (``--similarity-sample`` is not used), on float16 maps and in float16 arithmetic, as NumPy
evaluates the script's lines on them (each operation rounded to float16, the sum over keys and then over a
sequence's queries each rounded to float16), smoothing ``0.001 / n + 0.999 A`` and
``JS = (sum -p log(m / p) + sum -q log(m / q)) / 2``. See ``docs/conventions.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from headscope.analyses.base import Analysis, AnalysisResult
from headscope.analyses.conventions import as_float16, effective_conventions, float16_constant
from headscope.analyses.registry import register
from headscope.config import option
from headscope.engine.scratch import Scratch
from headscope.seeds import Seeds

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.engine.capture import LayerAttention
    from headscope.engine.context import AnalysisContext

#: Smoothing of attention rows before the JS divergence (Clark et al.): ``(1 - EPS) * A + EPS / n``.
SMOOTHING = 0.001
#: What each ``--conventions`` value means here (``run.json`` and the report).
CONVENTIONS = {
    "headscope": "headscope's definitions (docs/conventions.md)",
    "clark": "as Clark et al.'s head_distances.py: every token, float16 maps and float16 arithmetic",
}


def smooth_rows(rows: torch.Tensor, n_keys: torch.Tensor) -> torch.Tensor:
    """Smooth attention rows over their real keys.

    Parameters
    ----------
    rows : Tensor of shape [token, head, key]
        Attention rows; keys at or beyond ``n_keys`` (padding) must be 0.
    n_keys : Tensor of shape [token]
        Real keys of each row's sequence.

    Returns
    -------
    Tensor of shape [token, head, key]
        ``(1 - SMOOTHING) * rows + SMOOTHING / n`` on real keys, 0 on padding; rows still sum to 1.
    """
    real = torch.arange(rows.shape[-1], device=rows.device)[None, :] < n_keys[:, None]
    uniform = real.to(rows.dtype) / n_keys.to(rows.dtype)[:, None]
    return (1.0 - SMOOTHING) * rows + SMOOTHING * uniform[:, None, :]


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats over the last dimension (0 log 0 = 0)."""
    return -torch.special.xlogy(p, p).sum(-1)


def pairwise_js_sum(rows: torch.Tensor, n_keys: torch.Tensor | None = None, block: int = 8,
                    budget: int = 1 << 22) -> torch.Tensor:
    """Sum over tokens of the JS divergence between every pair of heads.

    Parameters
    ----------
    rows : Tensor of shape [token, head, key]
        One (smoothed) attention row per token and head; keys at or beyond ``n_keys`` are ignored.
    n_keys : Tensor of shape [token], optional
        Real keys of each row (default: all).
    block : int
        Heads compared at once against all later heads.
    budget : int
        Largest intermediate tensor, in elements (``token x block x head x key``); tokens are chunked to fit.

    Returns
    -------
    Tensor of shape [head, head], float64
        Symmetric, zero diagonal.

    Notes
    -----
    Computed in float64 from the (float32) rows. Each JS value is a difference of entropies that nearly cancel,
    and its sums run over a padded key axis whose length depends on the batch: in float32 the result moved by
    ~1e-7 relative with the batch size, the padding side and the CPU's SIMD width. In float64 the same rows give
    the same sums to ~1e-15 however they are batched (``tests/test_similarity.py``).
    """
    rows = rows.to(torch.float64)
    t, k, n = rows.shape
    out = torch.zeros(k, k, dtype=torch.float64, device=rows.device)
    if t == 0:
        return out
    if n_keys is None:
        n_keys = torch.full((t,), n, device=rows.device)
    pad = torch.arange(n, device=rows.device)[None, :] >= n_keys[:, None]
    h = entropy(rows.masked_fill(pad[:, None, :], 0.0))  # [token, head]
    # Padded keys set to 1/2: s = a + b is then 1 there and s log s = 0, so they drop out of every sum without
    # a mask. Exact zeros on real keys (unsmoothed rows) become 1e-30 so that 0 log 0 is 0, not NaN.
    rows = rows.clamp_min(1e-30).masked_fill(pad[:, None, :], 0.5)
    chunk = max(1, budget // (block * k * max(n, 1)))
    s_buf = torch.empty(min(chunk, t) * block * k * n, dtype=rows.dtype, device=rows.device)
    log_buf = torch.empty_like(s_buf)
    for t0 in range(0, t, chunk):
        part, hp = rows[t0:t0 + chunk], h[t0:t0 + chunk]
        for a0 in range(0, k, block):
            a1 = min(k, a0 + block)
            # Only pairs (a, b) with b >= a0 are computed; the lower triangle is filled by symmetry below.
            shape = (part.shape[0], a1 - a0, k - a0, n)
            s = s_buf[:math.prod(shape)].view(shape)
            log_s = log_buf[:math.prod(shape)].view(shape)
            torch.add(part[:, a0:a1, None, :], part[:, None, a0:, :], out=s)
            torch.log(s, out=log_s)
            # H(M) with M = s / 2 and sum(s) = 2:  H(M) = log 2 - sum(s log s) / 2.
            h_mix = math.log(2.0) - log_s.mul_(s).sum(-1) / 2
            js = (h_mix - (hp[:, a0:a1, None] + hp[:, None, a0:]) / 2).clamp_min(0.0)
            out[a0:a1, a0:] += js.sum(0).to(torch.float64)
    upper = torch.triu(out, diagonal=1)
    return upper + upper.T


def clark_js_sum(maps: torch.Tensor, budget: int = 1 << 23, block: int = 8, scratch: Scratch | None = None
                 ) -> torch.Tensor:
    """JS divergence between every pair of heads on one sequence, as Clark et al.'s ``head_distances.py``.

    Their loop, on a float16 array ``attns_flat`` of shape [head, query, key] and for each ``head``::

        p = 0.001 / n + attns_flat[head] * 0.999;  q = 0.001 / n + attns_flat * 0.999;  m = (p + q) / 2
        js = (-p * log(m / p) - q * log(m / q)) / 2;  js_distances[head] += js.sum(-1).sum(-1)

    NumPy casts the constants to float16 and rounds each operation to float16; the two sums add in float32 and
    are rounded to float16. Here the same operations on float16 values held in float32, each rounded to
    float16 in place. The result is symmetric, so only pairs ``a <= b`` are computed.

    Parameters
    ----------
    maps : Tensor of shape [head, query, key]
        One sequence's rows (float16 values), no padding.
    budget : int
        Largest intermediate tensor, in elements.
    block : int
        Heads compared at once against all later heads (at most).
    scratch : Scratch, optional
        Work buffers reused across calls.

    Returns
    -------
    Tensor of shape [head, head], float64
    """
    k, q, n = maps.shape
    scratch = scratch or Scratch()
    out = torch.zeros(k, k, dtype=torch.float64, device=maps.device)
    scale = float(np.float16(1.0 - SMOOTHING))
    shift = float16_constant(SMOOTHING / n, maps.device)
    smoothed = as_float16(shift + as_float16(maps * scale))
    step = max(1, min(block, budget // max(k * q * n, 1)))
    size = step * k * q * n
    half = scratch.get("clark_half", (size,), torch.float16, maps.device)

    def rounded(x: torch.Tensor) -> torch.Tensor:
        h = half[:x.numel()].view(x.shape)
        h.copy_(x)
        return x.copy_(h)

    for a0 in range(0, k, step):
        a1 = min(k, a0 + step)
        p = smoothed[a0:a1, None]  # [a, 1, query, key]
        other = smoothed[None, a0:]  # [1, b >= a0, query, key]
        shape = (a1 - a0, k - a0, q, n)
        m = rounded(torch.add(p, other, out=scratch.get("clark_m", shape, maps.dtype, maps.device)))
        m = rounded(m.div_(2))
        js = rounded(torch.div(m, p, out=scratch.get("clark_js", shape, maps.dtype, maps.device)))
        js = rounded(rounded(js.log_()).mul_(p).neg_())  # -p * log(m / p)
        m = rounded(rounded(rounded(m.div_(other)).log_()).mul_(other).neg_())  # -q * log(m / q)
        js = rounded(rounded(js.add_(m)).div_(2))
        # Sums of float16 values are exact in float64; each is then rounded as NumPy's float32 sum is.
        sums = as_float16(js.sum(-1, dtype=torch.float64).to(torch.float32))
        out[a0:a1, a0:] = as_float16(sums.sum(-1, dtype=torch.float64).to(torch.float32)).to(torch.float64)
    upper = torch.triu(out, diagonal=1)
    return upper + upper.T


def sample_queries(batch: Batch, rate: float, seed: int) -> torch.Tensor:
    """The query tokens kept for the similarity, drawn per sequence from (seed, corpus index).

    Returns
    -------
    Tensor of shape [batch, seq], bool
        True at kept real positions.
    """
    b, n = batch.input_ids.shape
    if rate >= 1.0:
        return batch.mask.clone()
    keep = np.zeros((b, n), dtype=bool)
    for row, ex in enumerate(batch.examples):
        length = int(batch.lengths[row])
        keep[row, :length] = Seeds(seed).per_example("similarity.queries", ex.index).random(length) < rate
    return torch.from_numpy(keep).to(batch.input_ids.device)


def mds_coordinates(distance: np.ndarray, seed: int) -> np.ndarray:
    """2-D metric MDS of a precomputed symmetric distance matrix of shape (n, n); returns (n, 2)."""
    from sklearn.manifold import MDS

    if distance.shape[0] < 3:
        return np.zeros((distance.shape[0], 2))
    # Classical MDS as the start makes SMACOF deterministic and avoids poor random starts.
    mds = MDS(n_components=2, metric_mds=True, metric="precomputed", init="classical_mds", n_init=1,
              max_iter=1000, eps=1e-9, random_state=seed, normalized_stress="auto")
    return mds.fit_transform(distance)


@dataclass(frozen=True)
class SimilarityOptions:
    """Options of the ``similarity`` analysis."""

    similarity_sample: float = option(0.1, help="Share of query tokens used for the head x head JS distance "
                                      "(seeded per sequence; 1 = every token, as in Clark et al.).")

    def __post_init__(self) -> None:
        if not 0 < self.similarity_sample <= 1:
            raise ValueError(f"similarity_sample must be in (0, 1], got {self.similarity_sample}")


@register
class HeadSimilarity(Analysis):
    """Jensen-Shannon distance between every pair of heads, summed over tokens, and its 2-D MDS map."""

    # declared state (add_state in start)
    js_sum_: torch.Tensor
    tokens_: int
    tokens_seen_: int

    name = "similarity"
    report_order = 61
    reads_pieces = True
    description = "head x head Jensen-Shannon distance over tokens, and 2-D MDS of the heads (Clark et al. s6)"
    Options = SimilarityOptions

    def start(self, ctx: AnalysisContext) -> None:
        k = ctx.info.n_layers * ctx.info.n_heads
        self.shape_ = (ctx.info.n_layers, ctx.info.n_heads)
        self.seed_ = ctx.seeds.seed
        self.conventions_ = effective_conventions(ctx, tuple(CONVENTIONS))
        # Clark et al. sum over every token.
        self.sample_ = 1.0 if self.conventions_ == "clark" else float(self.options.similarity_sample)
        self._scratch = Scratch()
        self.add_state("js_sum_", torch.zeros(k, k, dtype=torch.float64, device=ctx.device))
        self.add_state("tokens_", 0)
        self.add_state("tokens_seen_", 0)

    def begin_batch(self, batch: Batch) -> None:
        b, n = batch.input_ids.shape
        keep = sample_queries(batch, self.sample_, self.seed_)  # [batch, seq]
        # Token t of the buffer is the t-th kept (sequence, position) in row-major order, as keep's nonzero.
        self._keep = keep
        self._slot = keep.reshape(-1).cumsum(0).reshape(b, n) - 1
        self._n_keys = batch.lengths[:, None].expand(b, n)[keep]
        n_layers, n_heads = self.shape_
        t = int(keep.sum())
        # Every layer's rows at the sampled positions, since JS compares heads across layers.
        self._rows = torch.zeros(t, n_layers, n_heads, n, dtype=torch.float32, device=keep.device)
        self.tokens_ += t
        self.tokens_seen_ += int(batch.lengths.sum())

    def update(self, batch: Batch, block: LayerAttention) -> None:
        q0, q1 = block.query_start, block.query_stop
        keep = self._keep[:, q0:q1]  # [batch, query]
        slots = self._slot[:, q0:q1][keep]
        self._rows[slots, block.layer] = block.weights.permute(0, 2, 1, 3)[keep]  # [token, head, key]

    def end_batch(self, batch: Batch) -> None:
        t, n_layers, n_heads, n = self._rows.shape
        rows = self._rows.reshape(t, n_layers * n_heads, n)  # [token, layer * head, key]
        if self.conventions_ == "clark":
            # Every token is kept, sequence by sequence in order: sequence r's rows are one run of tokens.
            start = 0
            for length in batch.lengths.tolist():
                one = rows[start:start + length, :, :length].transpose(0, 1)  # [head, query, key]
                self.js_sum_ += clark_js_sum(as_float16(one), scratch=self._scratch)
                start += length
        else:
            self.js_sum_ += pairwise_js_sum(smooth_rows(rows, self._n_keys), self._n_keys)
        del self._rows, self._keep, self._slot, self._n_keys

    def finalize(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        n_layers, n_heads = self.shape_
        js = self.js_sum_.cpu().numpy()
        mean = js / max(self.tokens_, 1)
        layer = np.repeat(np.arange(n_layers), n_heads)
        head = np.tile(np.arange(n_heads), n_layers)
        k = n_layers * n_heads
        pairs = pd.DataFrame({
            "layer_a": np.repeat(layer, k), "head_a": np.repeat(head, k),
            "layer_b": np.tile(layer, k), "head_b": np.tile(head, k),
            "js": js.reshape(-1), "js_mean": mean.reshape(-1),
        })
        xy = mds_coordinates(mean, self.seed_) if self.tokens_ else np.full((k, 2), np.nan)
        mds = pd.DataFrame({"layer": layer, "head": head, "x": xy[:, 0], "y": xy[:, 1]})
        return AnalysisResult(
            name=self.name, tables={"similarity": pairs, "mds": mds},
            summary={"tokens_used": self.tokens_, "tokens_seen": self.tokens_seen_,
                     "sample": self.sample_, "units": "nats", "conventions": self.conventions_,
                     "definitions": CONVENTIONS[self.conventions_],
                     "mds_input": "js_mean (JS summed over tokens / tokens used)"})
