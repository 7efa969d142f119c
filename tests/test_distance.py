"""Distance features: hand-computed values, a plain-loop reference, padding and merge invariance, and
synthetic heads with known patterns landing in clusters with the right names."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from contexts import analysis_context
from headscope.analyses.distance import (
    BINS,
    FEATURES,
    DistanceOptions,
    DistancePatterns,
    cluster_heads,
    distance_sums,
    name_pattern,
    offset_weights,
)
from headscope.engine.context import AnalysisContext
from headscope.runner.feed import feed_attention


def _reference(A: np.ndarray, special: np.ndarray, punct: np.ndarray, segment: np.ndarray) -> dict[str, list]:
    """Per-row feature values of one head on one sequence, by loops (``A`` of shape (n, n), no padding)."""
    n = A.shape[0]
    pair = bool(segment.any())
    out: dict[str, list] = {f: [] for f in (*FEATURES, "abs_dist_sq")}
    for i in range(n):
        for name, lo, hi in BINS:
            out[name].append(sum(A[i, j] for j in range(n) if lo <= j - i <= hi))
        m1 = sum(A[i, j] * abs(j - i) for j in range(n))
        m2 = sum(A[i, j] * (j - i) ** 2 for j in range(n))
        out["abs_dist_mean"].append(m1)
        out["abs_dist_sq"].append(m2)
        out["special_share"].append(sum(A[i, j] for j in range(n) if special[j]))
        out["punct_share"].append(sum(A[i, j] for j in range(n) if punct[j]))
        ent = -sum(a * math.log(a) for a in A[i] if a > 0)
        out["row_entropy"].append(ent)
        if n > 1:
            out["entropy_ratio"].append(ent / math.log(n))
        if pair:
            out["within_segment"].append(sum(A[i, j] for j in range(n) if segment[j] == segment[i]))
    return out


def _sequences(lengths: list[int], n_layers: int, n_heads: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for k, n in enumerate(lengths):
        a = np.exp(rng.normal(size=(n_layers, n_heads, n, n)) * 2)
        special = np.zeros(n, bool)
        special[[0, n - 1]] = True
        segment = np.zeros(n, np.int64)
        if k % 2 == 0:  # every other sequence is an A/B pair: B from the middle on
            segment[n // 2:] = 1
        out.append({"attn": a / a.sum(-1, keepdims=True), "special": special, "punct": rng.random(n) < 0.2,
                    "segment": segment})
    return out


def _batch(seqs: list[dict[str, np.ndarray]]) -> tuple[SimpleNamespace, torch.Tensor]:
    n = max(s["attn"].shape[-1] for s in seqs)
    n_layers, n_heads = seqs[0]["attn"].shape[:2]
    attn = torch.zeros(len(seqs), n_layers, n_heads, n, n)
    fields = {k: torch.zeros(len(seqs), n, dtype=torch.bool) for k in ("is_cls", "is_sep", "is_punct")}
    segment = torch.zeros(len(seqs), n, dtype=torch.int64)
    for k, s in enumerate(seqs):
        m = s["attn"].shape[-1]
        attn[k, :, :, :m, :m] = torch.as_tensor(s["attn"], dtype=torch.float32)
        fields["is_cls"][k, 0] = True
        fields["is_sep"][k, :m] = torch.as_tensor(s["special"]) & (torch.arange(m) > 0)
        fields["is_punct"][k, :m] = torch.as_tensor(s["punct"])
        segment[k, :m] = torch.as_tensor(s["segment"])
    lengths = torch.tensor([s["attn"].shape[-1] for s in seqs])
    examples = [SimpleNamespace(index=k) for k in range(len(seqs))]
    return SimpleNamespace(lengths=lengths, segment=segment, examples=examples, size=len(seqs), **fields), attn


def _ctx(n_layers: int, n_heads: int, seed: int = 0) -> AnalysisContext:
    return analysis_context(n_layers, n_heads, seed=seed)


def _accumulate(seqs: list[dict[str, np.ndarray]], batch_size: int, options: DistanceOptions | None = None,
                block_rows: int | None = None) -> DistancePatterns:
    n_layers, n_heads = seqs[0]["attn"].shape[:2]
    acc = DistancePatterns(options)
    acc.start(_ctx(n_layers, n_heads))
    for start in range(0, len(seqs), batch_size):
        feed_attention([acc], *_batch(seqs[start:start + batch_size]), block_rows=block_rows)
    return acc


def test_hand_computed_previous_token_head() -> None:
    # [CLS] a b c [SEP]: every row on its previous token; [CLS] (no previous token) on itself.
    n = 5
    A = np.zeros((1, 1, n, n))
    A[0, 0, 0, 0] = 1.0
    for i in range(1, n):
        A[0, 0, i, i - 1] = 1.0
    special = np.array([1, 0, 0, 0, 1], bool)
    seq = {"attn": A, "special": special, "punct": np.zeros(n, bool), "segment": np.zeros(n, np.int64)}
    sums, rows = distance_sums(*_batch_args([seq]))
    assert rows == {"all": 5, "entropy": 5, "pair": 0}
    assert sums["rel_m1"].item() == pytest.approx(4.0)
    assert sums["rel_0"].item() == pytest.approx(1.0)
    assert sums["abs_dist_mean"].item() == pytest.approx(4.0)
    assert sums["abs_dist_sq"].item() == pytest.approx(4.0)
    assert sums["special_share"].item() == pytest.approx(2.0)  # rows 0 and 1 look at [CLS]
    assert sums["row_entropy"].item() == pytest.approx(0.0, abs=1e-6)


def _batch_args(seqs: list[dict[str, np.ndarray]]) -> tuple:
    batch, attn = _batch(seqs)
    return attn, batch.lengths, batch.is_cls | batch.is_sep, batch.is_punct, batch.segment


def test_fast_path_matches_reference_loop_and_ignores_padding() -> None:
    seqs = _sequences([4, 7, 5, 6, 3], n_layers=2, n_heads=3)
    per_row: dict[str, dict[tuple[int, int], list]] = {f: {} for f in (*FEATURES, "abs_dist_sq")}
    for s in seqs:
        for la in range(2):
            for he in range(3):
                ref = _reference(s["attn"][la, he], s["special"], s["punct"], s["segment"])
                for f in per_row:
                    per_row[f].setdefault((la, he), []).extend(ref[f])
    for batch_size in (1, 2, 5):
        means = _accumulate(seqs, batch_size).means()
        for f in FEATURES:
            if f == "abs_dist_std":  # spread of the pooled distribution of |j - i|
                want = np.array([[math.sqrt(np.mean(per_row["abs_dist_sq"][(la, he)])
                                            - np.mean(per_row["abs_dist_mean"][(la, he)]) ** 2)
                                  for he in range(3)] for la in range(2)])
            else:
                want = np.array([[np.mean(per_row[f][(la, he)]) for he in range(3)] for la in range(2)])
            np.testing.assert_allclose(means[f].numpy(), want, rtol=1e-5, atol=1e-5, err_msg=f)


@pytest.mark.parametrize("causal", [False, True])
def test_blocks_of_query_rows_equal_whole_layers(causal: bool) -> None:
    seqs = _sequences([9, 4, 7, 2], n_layers=2, n_heads=3, seed=5)
    results = []
    for block_rows in (None, 1, 3, 4):
        acc = DistancePatterns()
        acc.start(analysis_context(2, 3, causal=causal))
        for start in (0, 2):
            feed_attention([acc], *_batch(seqs[start:start + 2]), block_rows=block_rows)
        results.append(acc)
    whole = results[0]
    assert whole.rows_["all"] == 22 and whole.rows_["pair"] == 9 + 7
    for acc in results[1:]:
        assert acc.rows_ == whole.rows_
        for key in whole.sums_:
            np.testing.assert_allclose(acc.sums_[key].numpy(), whole.sums_[key].numpy(), rtol=1e-6, atol=1e-6,
                                       err_msg=key)


def test_offset_weights_of_a_block_are_rows_of_the_whole() -> None:
    whole = offset_weights(6).reshape(6, 6, -1)
    block = offset_weights(6, query_start=2, rows=3).reshape(3, 6, -1)
    assert torch.equal(block, whole[2:5])
    assert torch.equal(offset_weights(6, query_start=4).reshape(2, 6, -1), whole[4:])


def test_merge_of_two_halves_equals_one_run() -> None:
    seqs = _sequences([5, 6, 4, 7], n_layers=1, n_heads=2, seed=2)
    whole = _accumulate(seqs, 4).means()
    merged = _accumulate(seqs[:1], 1).merge(_accumulate(seqs[1:], 2)).means()
    for f in FEATURES:
        np.testing.assert_allclose(merged[f].numpy(), whole[f].numpy(), atol=1e-9)


def _pattern_maps(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One (n, n) map of a pure pattern, with a little noise so heads of a pattern are not identical."""
    A = np.zeros((n, n))
    for i in range(n):
        if kind == "previous":
            A[i, max(i - 1, 0)] = 1.0
        elif kind == "next":
            A[i, min(i + 1, n - 1)] = 1.0
        elif kind == "sep":
            A[i, n - 1] = 1.0
        else:
            A[i] = 1.0 / n
    A = 0.97 * A + 0.03 * rng.dirichlet(np.ones(n), size=n)
    return A / A.sum(-1, keepdims=True)


def test_synthetic_heads_land_in_named_clusters() -> None:
    kinds = ["previous", "sep", "uniform", "next"] * 3  # 3 layers x 4 heads
    rng = np.random.default_rng(0)
    seqs = []
    for n in (12, 16, 10, 14):
        attn = np.stack([_pattern_maps(n, kind, rng) for kind in kinds]).reshape(3, 4, n, n)
        special = np.zeros(n, bool)
        special[[0, n - 1]] = True
        seqs.append({"attn": attn, "special": special, "punct": np.zeros(n, bool), "segment": np.zeros(n, np.int64)})
    acc = _accumulate(seqs, 2)
    result = acc.finalize(_ctx(3, 4), {})
    heads = result.heads
    assert result.summary["k"] == 4 and result.summary["k_chosen_by"] == "silhouette"
    expected = {"previous": "previous", "sep": "special-token", "uniform": "broad", "next": "next"}
    assert heads["pattern"].tolist() == [expected[k] for k in kinds]
    assert heads["head_pattern"].tolist() == [expected[k] for k in kinds]
    # One cluster per pattern, both algorithms agree.
    assert heads.groupby("pattern")["cluster"].nunique().eq(1).all()
    assert result.summary["kmeans_vs_agglomerative_ari"] == pytest.approx(1.0)
    clusters = result.tables["clusters"]
    assert sorted(clusters["pattern"]) == ["broad", "next", "previous", "special-token"]
    assert clusters["n_heads"].tolist() == [3, 3, 3, 3]
    assert set(FEATURES) <= set(heads.columns)


def test_cluster_count_can_be_given() -> None:
    rng = np.random.default_rng(1)
    feats = pd.DataFrame({"a": np.r_[rng.normal(0, 0.1, 5), rng.normal(5, 0.1, 5)], "b": rng.normal(size=10),
                          "constant": np.ones(10)})
    fit = cluster_heads(feats, k=3, method="agglomerative", seed=0)
    assert fit.k == 3 and len(set(fit.labels)) == 3
    assert fit.columns == ["a", "b"]  # the constant column is left out
    assert fit.labels[0] == 0  # numbered in head order
    chosen = cluster_heads(feats[["a"]], seed=0)
    assert chosen.k == 2 and chosen.silhouette[2] == max(chosen.silhouette.values())
    assert set(chosen.labels[:5]) == {0} and set(chosen.labels[5:]) == {1}


@pytest.mark.parametrize(("centroid", "name"), [
    ({"special_share": 0.7, "rel_m1": 0.1}, "special-token"),
    ({"special_share": 0.1, "rel_0": 0.6}, "self"),
    ({"special_share": 0.1, "rel_m1": 0.1, "rel_0": 0.1, "rel_p1": 0.1, "within_segment": 0.95,
      "entropy_ratio": 0.9}, "block"),
    ({"special_share": 0.1, "rel_m1": 0.1, "rel_0": 0.1, "rel_p1": 0.1, "within_segment": math.nan,
      "entropy_ratio": 0.9}, "broad"),
    ({"special_share": 0.3, "rel_m1": 0.3, "rel_0": 0.1, "rel_p1": 0.1, "within_segment": 0.7,
      "entropy_ratio": 0.5}, "mixed"),
])
def test_naming_rules(centroid: dict[str, float], name: str) -> None:
    assert name_pattern(centroid) == name
