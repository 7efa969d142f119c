"""Chance levels and bootstrap intervals of the decoder scores (issue 30), and the atlas labels that rest on them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from headscope.analyses.decoder_heads import TESTED, DecoderHeads, DecoderHeadsOptions
from headscope.analyses.induction_probe import probe_sequences
from headscope.analyses.retrieval import copy_scores
from headscope.analyses.retrieval_prompts import Prompt, decoy_spans
from headscope.analyses.stats import percentile_intervals, poisson_weights
from headscope.atlas import build_atlas
from headscope.engine.batch import collate
from headscope.engine.capture import LayerAttention
from headscope.engine.forwards import ForwardOutput, Observe
from headscope.runner.feed import feed_attention
from reference import random_attention
from test_decoder_heads import _ctx, _example, _padded


def _uniform(n: int) -> np.ndarray:
    A = np.tril(np.ones((n, n)))
    return A / A.sum(1, keepdims=True)


def _run(maps: list[np.ndarray], examples: list, block_rows: int | None = None, batch_size: int | None = None,
         **options: object) -> DecoderHeads:
    n_layers, n_heads = maps[0].shape[:2]
    analysis = DecoderHeads(DecoderHeadsOptions(decoder_min_n=1, **options))  # type: ignore[arg-type]
    analysis.start(_ctx(n_layers, n_heads))
    size = batch_size or len(maps)
    for start in range(0, len(maps), size):
        feed_attention([analysis], collate(examples[start:start + size], pad_id=0), _padded(maps[start:start + size]),
                       block_rows=block_rows)
    return analysis


def _feed_probe(analysis: DecoderHeads, maps: np.ndarray, sequences: list[np.ndarray], has_bos: bool,
                block_rows: int) -> None:
    """The probe's attention (maps: [batch, layer, head, n, n]) handed over as the engine's probe pass would."""
    batch = collate([_example(k, ids, bos=has_bos) for k, ids in enumerate(sequences)], pad_id=0)
    weights = torch.as_tensor(maps, dtype=torch.float32)
    forward = Observe()
    n = weights.shape[-1]
    for layer in range(weights.shape[1]):
        for q0 in range(0, n, block_rows):
            block = LayerAttention(layer, weights[:, layer, :, q0:q0 + block_rows], q0)
            analysis.update_pass_attention(batch, forward, block)
    analysis.update_pass(batch, forward, ForwardOutput())


@pytest.mark.parametrize(("exclude_bos", "exclude_current"), [(False, False), (True, False), (False, True),
                                                              (True, True)])
@pytest.mark.parametrize("block_rows", [None, 2])
def test_chance_of_a_uniform_head_equals_its_score(exclude_bos: bool, exclude_current: bool,
                                                   block_rows: int | None) -> None:
    rng = np.random.default_rng(0)
    lengths = [7, 12, 3, 9]
    seqs = [list(rng.integers(1, 4, size=n)) for n in lengths]  # few ids: repeats for every pattern
    # Head 0 uniform over its keys; head 1 random (its chance level is the same: chance depends on the rows).
    maps = [np.stack([_uniform(n), random_attention(rng, n, causal=True)])[None] for n in lengths]
    examples = [_example(k, ids, bos=True) for k, ids in enumerate(seqs)]
    analysis = _run(maps, examples, block_rows, batch_size=3, exclude_bos=exclude_bos,
                    exclude_current_token=exclude_current)
    probe_len = 5
    probe = probe_sequences(np.arange(3, 40), 3, probe_len, seed=1, bos=0)
    n = len(probe[0])
    probe_maps = np.stack([np.stack([_uniform(n), random_attention(rng, n, causal=True)])[None] for _ in probe])
    _feed_probe(analysis, probe_maps, probe, True, block_rows or n)
    means = {k: v.numpy() for k, v in analysis.means().items()}
    chance = {k: v.numpy() for k, v in analysis.chance().items()}
    for key in TESTED:
        assert np.isfinite(chance[key]).all(), key
        assert chance[key][0, 0] == pytest.approx(means[key][0, 0], rel=1e-6), key
        # Chance is a property of the rows: the same for every head scored on the same sequences.
        if not (exclude_bos and exclude_current):
            assert chance[key][0, 1] == pytest.approx(chance[key][0, 0], rel=1e-9), key
    table = analysis.finalize(_ctx(1, 2), {}).tables["decoder_heads"]
    for key in TESTED:
        assert {f"{key}_chance", f"{key}_low", f"{key}_high", f"{key}_above_chance"} <= set(table.columns)
        assert not table.loc[0, f"{key}_above_chance"]  # a uniform head is never above chance


def test_chance_of_a_hand_computed_sequence() -> None:
    # Tokens 5 7 8 5 7 9: uniform rows i see keys 0..i with weight 1/(i+1).
    ids = [5, 7, 8, 5, 7, 9]
    analysis = _run([_uniform(6)[None, None]], [_example(0, ids, bos=True)])
    chance = {k: float(v[0, 0]) for k, v in analysis.chance().items()}
    n = 6
    assert chance["previous_token"] == pytest.approx(sum(1 / (i + 1) for i in range(1, n)) / n)
    assert chance["duplicate_token"] == pytest.approx((1 / 4 + 1 / 5) / n)  # rows 3 and 4 have an earlier copy
    assert chance["induction"] == pytest.approx((1 / 4 + 1 / 5) / n)
    assert chance["sink_first"] == pytest.approx(sum(1 / (i + 1) for i in range(n)) / n)


def test_interval_of_a_constant_head_has_zero_width_and_covers_the_mean() -> None:
    rng = np.random.default_rng(3)
    n = 8
    prev = np.zeros((n, n))
    prev[0, 0] = 1.0
    for i in range(1, n):
        prev[i, i - 1] = 1.0
    # Head 0 scores the same on every sequence; head 1 (random maps) varies from one sequence to the next.
    maps = [np.stack([prev, random_attention(rng, n, causal=True)])[None] for _ in range(30)]
    examples = [_example(k, list(rng.integers(1, 4, size=n))) for k in range(30)]
    analysis = _run(maps, examples, batch_size=7)
    table = analysis.finalize(_ctx(1, 2), {}).tables["decoder_heads"]
    row = table.iloc[0]
    assert row["previous_token_low"] == pytest.approx(row["previous_token"], abs=1e-12)
    assert row["previous_token_high"] == pytest.approx(row["previous_token"], abs=1e-12)
    assert row["previous_token"] == pytest.approx(7 / 8)
    assert bool(row["previous_token_above_chance"])  # 7/8 against a chance level of about 0.2
    other = table.iloc[1]
    for key in ("previous_token", "induction", "sink_first"):
        assert other[f"{key}_low"] < other[key] < other[f"{key}_high"], key
    # The intervals do not depend on how the sequences were batched, nor on shards merged in any order.
    again = _run(maps, examples, batch_size=30).finalize(_ctx(1, 2), {}).tables["decoder_heads"]
    pd.testing.assert_frame_equal(again, table, rtol=1e-9)
    parts = [_run(maps[a:b], examples[a:b]) for a, b in ((20, 30), (0, 20))]
    merged = parts[0].merge(parts[1]).finalize(_ctx(1, 2), {}).tables["decoder_heads"]
    pd.testing.assert_frame_equal(merged, table, rtol=1e-9)


def test_min_n_and_margin_decide_above_chance() -> None:
    n = 8
    prev = np.zeros((n, n))
    prev[0, 0] = 1.0
    for i in range(1, n):
        prev[i, i - 1] = 1.0
    maps = [prev[None, None]] * 5
    examples = [_example(k, [1, 2, 3, 1, 2, 3, 1, 2]) for k in range(5)]
    analysis = DecoderHeads(DecoderHeadsOptions(decoder_min_n=6))
    analysis.start(_ctx(1, 1))
    feed_attention([analysis], collate(examples, pad_id=0), _padded(maps))
    result = analysis.finalize(_ctx(1, 1), {})
    assert not result.tables["decoder_heads"]["previous_token_above_chance"].any()  # 5 sequences < min_n 6
    assert result.summary["margin"] == 0.1 and "decoder_min_n = 6" in result.summary["significance_rule"]
    wide = DecoderHeads(DecoderHeadsOptions(decoder_min_n=1, decoder_margin=0.8))
    wide.start(_ctx(1, 1))
    feed_attention([wide], collate(examples, pad_id=0), _padded(maps))
    table = wide.finalize(_ctx(1, 1), {}).tables["decoder_heads"]
    # 7/8 = 0.875 against chance ~0.2: clears a margin of 0.1, not one of 0.8.
    assert not table["previous_token_above_chance"].any()
    with pytest.raises(ValueError, match="decoder_margin"):
        DecoderHeads(DecoderHeadsOptions(decoder_margin=1.5)).start(_ctx(1, 1))


def test_poisson_weights_are_keyed_and_intervals_skip_nan() -> None:
    a = poisson_weights([5, 9], 50, [0, 30])
    b = poisson_weights([9, 5, 11], 50, [0, 30])
    np.testing.assert_array_equal(a[:, 0], b[:, 1])  # unit 5's weights whatever the batch
    np.testing.assert_array_equal(a[:, 1], b[:, 0])
    assert a.shape == (50, 2) and (a >= 0).all() and a.mean() == pytest.approx(1.0, abs=0.3)
    low, high = percentile_intervals(np.array([[1.0, np.nan], [3.0, np.nan], [np.nan, np.nan]]))
    assert low[0] == pytest.approx(1.05) and high[0] == pytest.approx(2.95) and np.isnan(low[1])


# --- the atlas: decoder labels need the interval -------------------------------------------------------------

def _decoder_heads(**columns: list) -> pd.DataFrame:
    return pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], **columns})


def _run_info(**decoder: object) -> dict:
    return {"analyses": {"decoder_heads": {"sequences": 40, "probe_sequences": 20, "min_n": 20, "margin": 0.1,
                                           "confidence": 0.95, **decoder}},
            "counts": {"tokens": 1200}, "config": {"atlas_thresholds": []}}


def test_atlas_decoder_labels_need_the_interval() -> None:
    # L0H0 clears chance + 0.1; L0H1 scores as much but its interval is too wide; L1H0 scores only 0.15 (below
    # the old threshold 0.3) but its interval clears chance; L1H1 scores 0.6 on rows where chance is 0.55.
    heads = _decoder_heads(induction=[0.6, 0.6, 0.15, 0.6], induction_chance=[0.01, 0.01, 0.01, 0.55],
                           induction_low=[0.5, 0.05, 0.12, 0.58], induction_high=[0.7, 0.9, 0.18, 0.62],
                           induction_above_chance=[True, False, True, False])
    atlas = build_atlas(heads, {}, _run_info())
    induction = atlas[atlas["group"] == "induction"]
    assert induction["head_name"].tolist() == ["L0H0", "L1H0"]  # 0.15 is labelled: its interval clears chance
    row = induction.iloc[0]
    assert row["evidence"] == "induction 0.6 [0.5, 0.7] vs chance 0.01 (rank 1/4)"
    assert "lower bound > chance (uniform attention) + 0.1" in row["rule"] and "n >= 20" in row["rule"]
    assert "no test" not in row["rule"]
    # Without the interval columns (a run from before the test) the threshold rule stays, and says so.
    old = build_atlas(heads[["layer", "head", "induction"]], {}, _run_info())
    assert old.loc[old["group"] == "induction", "head_name"].tolist() == ["L0H0", "L0H1", "L1H1"]
    assert "no test yet" in old.loc[old["group"] == "induction", "rule"].iloc[0]
    # Too few sequences for decoder_min_n: no decoder label, interval or not.
    assert "induction" not in set(build_atlas(heads, {}, _run_info(sequences=5))["group"])


def test_atlas_sink_needs_epsilon_and_the_interval() -> None:
    heads = _decoder_heads(sink_first=[0.9, 0.25, 0.9, 0.9], sink_first_chance=[0.02] * 4,
                           sink_first_low=[0.85, 0.2, 0.05, 0.8], sink_first_high=[0.95, 0.3, 0.95, 0.95],
                           sink_first_above_chance=[True, True, False, True])
    atlas = build_atlas(heads, {}, _run_info())
    # L0H1 clears chance but is below epsilon 0.3 (Gu et al.'s definition); L1H0's interval does not clear it.
    assert atlas.loc[atlas["group"] == "first-token-sink", "head_name"].tolist() == ["L0H0", "L1H1"]
    assert atlas.loc[atlas["group"] == "first-token-sink", "rule"].iloc[0].startswith("sink_first > 0.3 and ")


def test_atlas_retrieval_needs_the_interval() -> None:
    retrieval = _decoder_heads(retrieval_score=[0.5, 0.5, 0.0, 0.3], retrieval_head=[True, True, False, True],
                               retrieval_score_chance=[0.0, 0.0, 0.0, 0.25], retrieval_score_low=[0.3, 0.05, 0.0, 0.2],
                               retrieval_score_high=[0.7, 0.9, 0.0, 0.4],
                               retrieval_above_chance=[True, False, False, False])
    run = _run_info()
    run["analyses"]["retrieval"] = {"threshold": 0.1, "used": 8, "prompts": 10, "margin": 0.1, "min_n": 5}
    atlas = build_atlas(_decoder_heads(), {"retrieval": retrieval}, run)
    rows = atlas[atlas["group"] == "retrieval"]
    assert rows["head_name"].tolist() == ["L0H0"]
    assert "decoy spans" in rows["rule"].iloc[0] and "vs chance 0" in rows["evidence"].iloc[0]


def test_decoy_spans_avoid_the_needle_and_score_the_same_copies() -> None:
    prompt = Prompt(index=3, needle="n", question="q", depth=0.5, ids=np.arange(40), span=(20, 24), context=(2, 36))
    spans = decoy_spans(prompt, 8, seed=0)
    assert len(spans) == 8 and spans == decoy_spans(prompt, 8, seed=0)
    for start, stop in spans:
        assert stop - start == 4 and start >= 2 and stop <= 36 and (stop <= 20 or start >= 24)
    assert decoy_spans(Prompt(0, "n", "q", 0.5, np.arange(10), (2, 8), (2, 8)), 4, 0) == []
    # A head that copies from wherever the token sits scores on a decoy holding that token as well.
    ids = torch.tensor([1, 2, 3, 4, 9, 9, 1, 2, 3, 4])
    argmax = torch.tensor([[[6]], [[7]]])
    generated = torch.tensor([1, 2])
    assert float(copy_scores(argmax, generated, ids, (0, 4))[0, 0]) == 0.0  # not from the needle (0..3)
    assert float(copy_scores(argmax, generated, ids, (6, 10))[0, 0]) == pytest.approx(0.5)


def test_atlas_induction_rests_on_the_probe_then_the_corpus() -> None:
    heads = _decoder_heads(prefix_matching=[0.9, 0.02, 0.5, 0.02], prefix_matching_chance=[0.014] * 4,
                           prefix_matching_low=[0.88, 0.01, 0.45, 0.01], prefix_matching_high=[0.92, 0.03, 0.55, 0.03],
                           prefix_matching_above_chance=[True, False, True, False],
                           induction=[0.05, 0.3, 0.4, 0.01], induction_chance=[0.01] * 4,
                           induction_low=[0.04, 0.25, 0.35, 0.0], induction_high=[0.06, 0.35, 0.45, 0.02],
                           induction_above_chance=[False, True, True, False])
    atlas = build_atlas(heads, {}, _run_info())
    rows = atlas[atlas["group"] == "induction"].set_index("head_name")
    assert sorted(rows.index) == ["L0H0", "L0H1", "L1H0"]  # one row per head
    assert rows.loc["L0H0", "statistic"] == "prefix_matching" and rows.loc["L0H0", "sample"] == "20 probe sequences"
    assert rows.loc["L1H0", "statistic"] == "prefix_matching"  # the probe's row, not the corpus's
    assert rows.loc["L0H1", "statistic"] == "induction" and rows.loc["L0H1", "sample"] == "40 sequences"
    assert "prefix-matching" not in set(atlas["group"])
    # Too few probe sequences: the corpus score alone.
    few = build_atlas(heads, {}, _run_info(probe_sequences=3))
    assert few.loc[few["group"] == "induction", "head_name"].tolist() == ["L0H1", "L1H0"]
