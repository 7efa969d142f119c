"""Head similarity: JS on hand-made distributions, the accumulated matrix against a plain all-pairs loop,
batching, sampling and merge invariance, and MDS."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from contexts import analysis_context
from headscope.analyses.similarity import (
    SMOOTHING,
    HeadSimilarity,
    SimilarityOptions,
    mds_coordinates,
    pairwise_js_sum,
    smooth_rows,
)
from headscope.engine.context import AnalysisContext
from headscope.runner.feed import feed_attention
from reference import js_divergence

N_LAYERS, N_HEADS = 2, 3


def _random_maps(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    """One [layer, head, n, n] row-stochastic array per sequence, some rows sharply peaked."""
    rng = np.random.default_rng(seed)
    maps = []
    for n in lengths:
        logits = rng.normal(size=(N_LAYERS, N_HEADS, n, n)) * rng.uniform(0.5, 4.0, size=(N_LAYERS, N_HEADS, 1, 1))
        a = np.exp(logits)
        maps.append(a / a.sum(-1, keepdims=True))
    return maps


def _batch(maps: list[np.ndarray], indices: list[int]) -> tuple[SimpleNamespace, torch.Tensor]:
    """Pad maps into [batch, layer, head, n, n] with exact zeros, plus the batch fields similarity reads."""
    n = max(m.shape[-1] for m in maps)
    attn = torch.zeros(len(maps), N_LAYERS, N_HEADS, n, n)
    for k, m in enumerate(maps):
        attn[k, :, :, :m.shape[-1], :m.shape[-1]] = torch.as_tensor(m, dtype=torch.float32)
    lengths = torch.tensor([m.shape[-1] for m in maps])
    mask = torch.arange(n)[None, :] < lengths[:, None]
    batch = SimpleNamespace(input_ids=torch.zeros(len(maps), n, dtype=torch.int64), mask=mask, lengths=lengths,
                            examples=[SimpleNamespace(index=i) for i in indices], size=len(maps))
    return batch, attn


def _ctx(seed: int = 0) -> AnalysisContext:
    return analysis_context(N_LAYERS, N_HEADS, seed=seed)


def _run(maps: list[np.ndarray], batch_size: int, sample: float = 1.0, seed: int = 0,
         block_rows: int | None = None) -> HeadSimilarity:
    sim = HeadSimilarity(SimilarityOptions(similarity_sample=sample))
    sim.start(_ctx(seed))
    for start in range(0, len(maps), batch_size):
        part = maps[start:start + batch_size]
        feed_attention([sim], *_batch(part, list(range(start, start + len(part)))), block_rows=block_rows)
    return sim


def _reference(maps: list[np.ndarray]) -> np.ndarray:
    """Clark et al.'s distance by plain loops: sum over every token of JS between smoothed rows."""
    k = N_LAYERS * N_HEADS
    out = np.zeros((k, k))
    for m in maps:
        n = m.shape[-1]
        rows = (1 - SMOOTHING) * m.reshape(k, n, n) + SMOOTHING / n
        for i in range(n):
            for a in range(k):
                for b in range(k):
                    out[a, b] += jensenshannon(rows[a, i], rows[b, i]) ** 2  # scipy gives the sqrt, in nats
    return out


def test_js_on_hand_made_distributions() -> None:
    p = torch.tensor([1.0, 0.0])
    q = torch.tensor([0.0, 1.0])
    assert js_divergence(p, q).item() == pytest.approx(math.log(2), abs=1e-6)
    assert js_divergence(p, p).item() == pytest.approx(0.0, abs=1e-7)
    half = torch.tensor([0.5, 0.5])
    # M = (0.75, 0.25): H(M) - (H(half) + H(p)) / 2 = 0.5623 - 0.3466
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) - math.log(2) / 2
    assert js_divergence(half, p).item() == pytest.approx(expected, abs=1e-6)
    assert js_divergence(p, half).item() == pytest.approx(expected, abs=1e-6)


def test_smoothing_keeps_padding_zero_and_rows_stochastic() -> None:
    rows = torch.zeros(2, 1, 4)
    rows[0, 0, 1] = 1.0
    rows[1, 0, :2] = 0.5
    out = smooth_rows(rows, torch.tensor([4, 2]))
    assert out[0, 0].tolist() == pytest.approx([0.00025, 0.99925, 0.00025, 0.00025])
    assert out[1, 0].tolist() == pytest.approx([0.5, 0.5, 0.0, 0.0])
    assert out.sum(-1).flatten().tolist() == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize(("block", "budget"), [(8, 1 << 24), (2, 50)])
def test_pairwise_matches_all_pairs_loop(block: int, budget: int) -> None:
    rng = np.random.default_rng(1)
    rows = rng.dirichlet(np.full(5, 0.3), size=(7, 4))  # [token, head, key]
    got = pairwise_js_sum(torch.as_tensor(rows, dtype=torch.float32), block=block, budget=budget).numpy()
    want = np.array([[sum(jensenshannon(rows[t, a], rows[t, b]) ** 2 for t in range(7)) for b in range(4)]
                     for a in range(4)])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.array_equal(got, got.T)
    assert np.all(np.diag(got) == 0)


def test_accumulated_matrix_equals_reference_and_ignores_batching() -> None:
    maps = _random_maps([3, 6, 4, 5, 2])
    want = _reference(maps)
    for batch_size in (1, 2, 5):
        sim = _run(maps, batch_size)
        np.testing.assert_allclose(sim.js_sum_.numpy(), want, atol=2e-4)
        assert sim.tokens_ == sum(m.shape[-1] for m in maps)


@pytest.mark.parametrize("sample", [1.0, 0.4])
def test_blocks_of_query_rows_equal_whole_layers(sample: float) -> None:
    maps = _random_maps([9, 4, 7, 2, 8], seed=6)
    whole = _run(maps, 3, sample=sample, seed=1)
    assert whole.tokens_ > 0
    for block_rows in (1, 3, 4):
        blocks = _run(maps, 3, sample=sample, seed=1, block_rows=block_rows)
        assert (blocks.tokens_, blocks.tokens_seen_) == (whole.tokens_, whole.tokens_seen_)
        np.testing.assert_allclose(blocks.js_sum_.numpy(), whole.js_sum_.numpy(), rtol=1e-6, atol=1e-6)


def test_merge_of_two_halves_equals_one_run() -> None:
    maps = _random_maps([5, 3, 6, 4], seed=3)
    whole = _run(maps, 2)
    first = _run(maps[:2], 2)
    second = HeadSimilarity(SimilarityOptions(similarity_sample=1.0))
    second.start(_ctx())
    feed_attention([second], *_batch(maps[2:], [2, 3]))
    merged = first.merge(second)
    np.testing.assert_allclose(merged.js_sum_.numpy(), whole.js_sum_.numpy(), atol=1e-9)
    assert merged.tokens_ == whole.tokens_


def test_token_sample_is_seeded_per_sequence() -> None:
    maps = _random_maps([30, 25, 40, 35], seed=4)
    a = _run(maps, 1, sample=0.3, seed=7)
    b = _run(maps, 4, sample=0.3, seed=7)
    c = _run(maps, 4, sample=0.3, seed=8)
    assert a.tokens_ == b.tokens_
    np.testing.assert_allclose(a.js_sum_.numpy(), b.js_sum_.numpy(), atol=1e-6)
    assert 0 < a.tokens_ < a.tokens_seen_ == 130
    assert not np.allclose(a.js_sum_.numpy(), c.js_sum_.numpy())
    result = a.finalize(_ctx(7), {})
    assert result.summary["tokens_used"] == a.tokens_
    assert result.summary["tokens_seen"] == 130


def test_finalize_tables() -> None:
    sim = _run(_random_maps([6, 5]), 2)
    result = sim.finalize(_ctx(), {})
    pairs = result.tables["similarity"]
    k = N_LAYERS * N_HEADS
    assert len(pairs) == k * k
    row = pairs[(pairs.layer_a == 0) & (pairs.head_a == 1) & (pairs.layer_b == 1) & (pairs.head_b == 2)]
    assert row["js"].item() == pytest.approx(sim.js_sum_[1, 5].item())
    assert row["js_mean"].item() == pytest.approx(sim.js_sum_[1, 5].item() / 11)
    mds = result.tables["mds"]
    assert list(mds.columns) == ["layer", "head", "x", "y"] and len(mds) == k
    assert np.isfinite(mds[["x", "y"]].to_numpy()).all()


def test_mds_recovers_planar_distances() -> None:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(8, 2))
    dist = np.linalg.norm(points[:, None] - points[None, :], axis=-1)
    xy = mds_coordinates(dist, seed=0)
    got = np.linalg.norm(xy[:, None] - xy[None, :], axis=-1)
    np.testing.assert_allclose(got, dist, atol=1e-2)
