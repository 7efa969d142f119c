"""Decoder-LM head scores: hand-computed maps, plain-loop references, block/batch/padding invariance, runs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import headscope
from contexts import analysis_context
from headscope.analyses.decoder_heads import SCORES, DecoderHeads, DecoderHeadsOptions
from headscope.analyses.decoder_scores import prefix_matching_sums
from headscope.analyses.induction_probe import probe_candidates, probe_sequences
from headscope.analyses.registry import check_model_needs
from headscope.engine.batch import collate
from headscope.engine.capture import LayerAttention, capture_stacked
from headscope.engine.codec import TokenCodec
from headscope.engine.context import AnalysisContext
from headscope.errors import UsageError
from headscope.model.encode import adds_bos, probe_example
from headscope.runner.feed import feed_attention
from reference import random_attention

_NAMES = SimpleNamespace(convert_ids_to_tokens=lambda ids: [f"t{i}" for i in ids])


def _example(index: int, ids: list[int] | np.ndarray, bos: bool = False):
    return probe_example(index, np.asarray(ids, dtype=np.int64), bos, _NAMES)


def _ctx(n_layers: int, n_heads: int, causal: bool = True) -> AnalysisContext:
    return analysis_context(n_layers, n_heads, causal=causal)


def _padded(maps: list[np.ndarray]) -> torch.Tensor:
    """(layer, head, n_i, n_i) maps as one [batch, layer, head, n, n] tensor, zero-padded as the capture gives."""
    n = max(m.shape[-1] for m in maps)
    out = torch.zeros(len(maps), *maps[0].shape[:2], n, n)
    for k, m in enumerate(maps):
        out[k, :, :, :m.shape[-1], :m.shape[-1]] = torch.as_tensor(m, dtype=torch.float32)
    return out


def _scores(maps: list[np.ndarray], examples: list, block_rows: int | None = None, batch_size: int | None = None,
            **options) -> dict[str, np.ndarray]:
    n_layers, n_heads = maps[0].shape[:2]
    analysis = DecoderHeads(DecoderHeadsOptions(**options))
    analysis.start(_ctx(n_layers, n_heads))
    size = batch_size or len(maps)
    for start in range(0, len(maps), size):
        feed_attention([analysis], collate(examples[start:start + size], pad_id=0), _padded(maps[start:start + size]),
                       block_rows=block_rows)
    return {k: v.numpy() for k, v in analysis.means().items()}


# --- hand-computed maps -----------------------------------------------------------------------------------------

#: Positions 0..5 hold tokens 5 7 8 5 7 9: position 3 repeats position 0, position 4 repeats position 1.
IDS = [5, 7, 8, 5, 7, 9]


def _hand_maps() -> np.ndarray:
    n = len(IDS)
    A = np.zeros((1, 4, n, n))
    A[0, 0, 0, 0] = 1.0                              # head 0: previous token (row 0 on itself)
    for i in range(1, n):
        A[0, 0, i, i - 1] = 1.0
    for i in range(n):                               # head 1: induction; rows without a target on position 0
        A[0, 1, i, 0] = 1.0
    A[0, 1, 3] = 0.0
    A[0, 1, 3, 1] = 1.0                              # 5 at 3: the token after the earlier 5 (position 1)
    A[0, 1, 4] = 0.0
    A[0, 1, 4, 2] = 1.0                              # 7 at 4: the token after the earlier 7 (position 2)
    for i in range(n):                               # head 2: duplicate token, half on the earlier copy
        A[0, 2, i, i] = 1.0
    A[0, 2, 3, 3], A[0, 2, 3, 0] = 0.5, 0.5
    A[0, 2, 4, 4], A[0, 2, 4, 1] = 0.5, 0.5
    for i in range(n):                               # head 3: uniform over the keys a causal row sees
        A[0, 3, i, :i + 1] = 1.0 / (i + 1)
    return A


@pytest.mark.parametrize("block_rows", [None, 1, 3])
def test_hand_computed_scores(block_rows: int | None) -> None:
    s = _scores([_hand_maps()], [_example(0, IDS, bos=True)], block_rows=block_rows)
    n = 6
    # TransformerLens's mul score: sum(A * P) / sum(A), and sum(A) is the number of rows without exclusions.
    np.testing.assert_allclose(s["previous_token"][0], [5 / n, 1 / n, 0.0, (1 / 2 + 1 / 3 + 1 / 4 + 1 / 5 + 1 / 6) / n])
    np.testing.assert_allclose(s["duplicate_token"][0], [0.0, 0.0, 1 / n, (1 / 4 + 1 / 5) / n])
    np.testing.assert_allclose(s["induction"][0], [0.0, 2 / n, 0.0, (1 / 4 + 1 / 5) / n])
    harmonic = sum(1 / (i + 1) for i in range(n))
    np.testing.assert_allclose(s["sink_first"][0], [2 / n, 4 / n, 1.5 / n, harmonic / n])
    np.testing.assert_allclose(s["sink_bos"][0], s["sink_first"][0])  # BOS is position 0
    assert np.isnan(s["prefix_matching"]).all()  # no probe pass here


@pytest.mark.parametrize("block_rows", [None, 1, 3])
def test_hand_computed_exclusions(block_rows: int | None) -> None:
    ex = [_example(0, IDS, bos=True)]
    s = _scores([_hand_maps()], ex, block_rows=block_rows, exclude_current_token=True)
    # Head 2 without its diagonal keeps only 0.5 + 0.5 on the earlier copies: all of it duplicate attention.
    assert s["duplicate_token"][0, 2] == pytest.approx(1.0)
    assert s["sink_first"][0, 2] == pytest.approx(1.5 / 6)  # sink scores ignore the exclusions

    s = _scores([_hand_maps()], ex, block_rows=block_rows, exclude_bos=True)
    kept = sum(i / (i + 1) for i in range(6))  # head 3's rows without column 0
    assert s["previous_token"][0, 3] == pytest.approx((1 / 3 + 1 / 4 + 1 / 5 + 1 / 6) / kept)  # A[1, 0] gone
    assert s["duplicate_token"][0, 3] == pytest.approx((1 / 5) / kept)  # A[3, 0] gone
    assert s["induction"][0, 3] == pytest.approx((1 / 4 + 1 / 5) / kept)
    assert s["previous_token"][0, 0] == pytest.approx(4 / 4)  # rows 2..5 of head 0 (rows 0, 1 had only column 0)
    assert s["induction"][0, 1] == pytest.approx(1.0)  # head 1 keeps rows 3, 4, both on their targets

    s = _scores([_hand_maps()], ex, block_rows=block_rows, exclude_bos=True, exclude_current_token=True)
    assert s["duplicate_token"][0, 2] == pytest.approx(0.5 / 0.5)  # only row 4's 0.5 on position 1 is left
    kept = sum(i / (i + 1) for i in range(6)) - sum(1 / (i + 1) for i in range(1, 6))  # A[0, 0] taken once
    assert s["induction"][0, 3] == pytest.approx((1 / 4 + 1 / 5) / kept)


def test_no_bos_and_single_token() -> None:
    s = _scores([_hand_maps(), np.ones((1, 4, 1, 1))], [_example(0, IDS), _example(1, [3])])
    assert np.isnan(s["sink_bos"]).all()  # the tokenizer added no BOS to either sequence
    # The one-token sequence has no score of its own (TransformerLens asserts length > 1), but a sink score.
    np.testing.assert_allclose(s["previous_token"][0], [5 / 6, 1 / 6, 0.0, (1 / 2 + 1 / 3 + 1 / 4 + 1 / 5 + 1 / 6) / 6])
    harmonic = sum(1 / (i + 1) for i in range(6))
    np.testing.assert_allclose(s["sink_first"][0], (np.array([2, 4, 1.5, harmonic]) / 6 + 1.0) / 2)


# --- plain-loop references --------------------------------------------------------------------------------------

def _loop_scores(A: np.ndarray, ids: list[int], exclude_bos: bool, exclude_current: bool) -> dict[str, float] | None:
    """One head on one sequence, by TransformerLens's recipe: patterns by loops, mul score (zero A, then sums).

    None when the exclusions leave no attention (TransformerLens's 0/0).
    """
    n = len(ids)
    A = A.copy()
    if exclude_bos:
        A[:, 0] = 0
    if exclude_current:
        np.fill_diagonal(A, 0)
    prev = np.zeros((n, n))
    dup = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            prev[i, j] = j == i - 1
            dup[i, j] = j < i and ids[j] == ids[i]
    ind = np.zeros((n, n))
    ind[:, 1:] = dup[:, :-1]  # torch.roll one to the right, first column 0, then tril
    ind = np.tril(ind)
    total = A.sum()
    if total < 1e-9:
        return None
    return {"previous_token": (A * prev).sum() / total, "duplicate_token": (A * dup).sum() / total,
            "induction": (A * ind).sum() / total}


@pytest.mark.parametrize(("exclude_bos", "exclude_current"), [(False, False), (True, False), (False, True),
                                                              (True, True)])
def test_scores_equal_plain_loops_over_a_padded_corpus(exclude_bos: bool, exclude_current: bool) -> None:
    rng = np.random.default_rng(0)
    lengths = [7, 3, 12, 1, 9, 12, 2]
    seqs = [list(rng.integers(1, 5, size=n)) for n in lengths]  # few ids: many repeats
    maps = [np.stack([np.stack([random_attention(rng, n, causal=True) for _ in range(3)]) for _ in range(2)])
            for n in lengths]
    examples = [_example(k, ids, bos=k % 2 == 0) for k, ids in enumerate(seqs)]
    options = {"exclude_bos": exclude_bos, "exclude_current_token": exclude_current}
    whole = _scores(maps, examples, **options)
    for block_rows, batch_size in ((1, 3), (3, 2), (5, 1), (None, 4)):
        other = _scores(maps, examples, block_rows=block_rows, batch_size=batch_size, **options)
        for key in SCORES:
            # float32: with both exclusions a row's kept mass is its sum less two entries, so rows left with
            # almost nothing carry a rounding residue that depends on the padded width.
            np.testing.assert_allclose(other[key], whole[key], rtol=1e-5, err_msg=key)
    for key in ("previous_token", "duplicate_token", "induction"):
        expected = np.zeros((2, 3))
        for layer in range(2):
            for head in range(3):
                values = [s[key] for m, ids in zip(maps, seqs, strict=True) if len(ids) > 1
                          and (s := _loop_scores(m[layer, head], ids, exclude_bos, exclude_current)) is not None]
                expected[layer, head] = np.mean(values)
        # (The maps go in as float32; one short sequence keeps only 1e-3 of its attention with both exclusions.)
        np.testing.assert_allclose(whole[key], expected, rtol=1e-4, err_msg=key)
    first = np.mean([m[..., 0].mean(-1) for m in maps], axis=0)
    np.testing.assert_allclose(whole["sink_first"], first, rtol=1e-5)
    with_bos = np.mean([m[..., 0].mean(-1) for k, m in enumerate(maps) if k % 2 == 0], axis=0)
    np.testing.assert_allclose(whole["sink_bos"], with_bos, rtol=1e-5)


def test_merge_equals_one_pass() -> None:
    rng = np.random.default_rng(1)
    lengths = [5, 8, 3, 6]
    maps = [random_attention(rng, n, causal=True)[None, None] for n in lengths]
    examples = [_example(k, rng.integers(0, 3, size=n)) for k, n in enumerate(lengths)]
    parts = []
    for chunk in (slice(0, 1), slice(1, 4)):
        analysis = DecoderHeads()
        analysis.start(_ctx(1, 1))
        feed_attention([analysis], collate(examples[chunk], pad_id=0), _padded(maps[chunk]))
        parts.append(analysis)
    merged = parts[0].merge(parts[1]).means()
    whole = _scores(maps, examples)
    for key in SCORES:
        np.testing.assert_allclose(merged[key].numpy(), whole[key], rtol=1e-6, equal_nan=True)


def test_top_heads_rest_on_min_n_scored_sequences() -> None:
    # Head 0 has a previous-token score only on 2 of 25 sequences (elsewhere it attends to BOS alone, which
    # --decoder-exclude-bos removes), where it is 1; head 1 scores 0.4 on all 25.
    n = 4
    prev, sink, half = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n))
    prev[0, 0] = sink[:, 0] = half[0, 0] = 1.0
    for i in range(1, n):
        prev[i, i - 1] = 1.0
        half[i, i - 1] = half[i, i] = 0.5
    maps = [np.stack([prev if k < 2 else sink, half])[None] for k in range(25)]
    examples = [_example(k, [5, 6, 7, 8]) for k in range(25)]

    def summary(**options) -> dict:
        analysis = DecoderHeads(DecoderHeadsOptions(exclude_bos=True, **options))
        analysis.start(_ctx(1, 2))
        feed_attention([analysis], collate(examples, pad_id=0), _padded(maps))
        return analysis.finalize(_ctx(1, 2), {}).summary

    loose = summary(decoder_min_n=1)["top"]["previous_token"]
    assert [t["head"] for t in loose] == ["L0H0", "L0H1"] and loose[0]["score"] == pytest.approx(1.0)
    s = summary()
    assert s["min_n"] == 20 and "decoder_min_n = 20" in s["top_rule"]
    assert s["scored_sequences"]["previous_token"] == {"min": 2, "max": 25}
    assert s["top"]["previous_token"] == [{"head": "L0H1", "score": pytest.approx(0.4)}]


@pytest.mark.parametrize(("offset", "exclude_bos", "exclude_current"), [(1, False, False), (0, False, False),
                                                                        (1, True, True), (0, False, True)])
def test_prefix_matching_equals_a_plain_loop(offset: int, exclude_bos: bool, exclude_current: bool) -> None:
    rng = np.random.default_rng(2)
    length = 5
    n = offset + 2 * length
    A = np.stack([random_attention(rng, n, causal=True) for _ in range(3)])[None]  # [batch, head, n, n]
    weights = torch.as_tensor(A, dtype=torch.float32)
    for rows in (1, 3, n):
        num = torch.zeros(1, 3, dtype=torch.float64)
        den = torch.zeros_like(num)
        for q0 in range(0, n, rows):
            a, b = prefix_matching_sums(weights[:, :, q0:q0 + rows], q0, length, offset, exclude_bos, exclude_current)
            num += a.double()
            den += b.double()
        for head in range(3):
            M = A[0, head].copy()
            if exclude_bos:
                M[:, 0] = 0
            if exclude_current:
                np.fill_diagonal(M, 0)
            second = range(offset + length, offset + 2 * length)
            expected = sum(M[i, i - length + 1] for i in second) / sum(M[i].sum() for i in second)
            assert float(num[0, head] / den[0, head]) == pytest.approx(expected, rel=1e-5)
            if not (exclude_bos or exclude_current):  # then it is the plain mean of A[i, i-L+1]
                assert expected == pytest.approx(np.mean([A[0, head, i, i - length + 1] for i in second]))


def test_probe_sequences_are_seeded_and_repeat() -> None:
    candidates = np.arange(3, 40)
    a = probe_sequences(candidates, 4, 10, seed=7, bos=0)
    b = probe_sequences(candidates, 6, 10, seed=7, bos=0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b[:4], strict=False))  # more sequences keep the first ones
    assert not np.array_equal(a[0], probe_sequences(candidates, 1, 10, seed=8, bos=0)[0])
    for ids in a:
        assert ids[0] == 0 and len(ids) == 21
        assert np.array_equal(ids[1:11], ids[11:]) and len(set(ids[1:11])) == 10
        assert set(ids[1:]) <= set(candidates)
    with pytest.raises(ValueError, match="induction_length"):
        probe_sequences(candidates, 1, 100, seed=0)


# --- real tiny models -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama(tiny_llama: Path):
    from headscope.model.load import load_model

    return load_model(str(tiny_llama), device="cpu")


def test_planted_induction_head_is_found(llama) -> None:
    # A probe-style sequence (random tokens twice) through the tiny Llama, with one head's map replaced by an
    # induction pattern: each query on the token after the earlier copy of itself, else on position 0.
    tok = llama.tokenizer
    ids = probe_sequences(probe_candidates(TokenCodec.of(tok)), 1, 12, seed=3, bos=int(tok.bos_token_id))[0]
    ex = probe_example(0, ids, True, tok)
    batch = collate([ex], int(tok.pad_token_id or 0))
    attn = capture_stacked(llama, batch)  # [batch, layer, head, query, key]
    n = len(ids)
    planted = torch.zeros(n, n)
    for i in range(n):
        earlier = [j for j in range(i) if ids[j] == ids[i]]
        planted[i, earlier[-1] + 1 if earlier else 0] = 1.0
    attn[0, 1, 2] = planted
    analysis = DecoderHeads()
    analysis.start(_ctx(2, 4))
    feed_attention([analysis], batch, attn, block_rows=5)
    scores = analysis.means()["induction"]
    assert torch.argmax(scores).item() == 1 * 4 + 2
    assert scores[1, 2].item() == pytest.approx(12 / n)  # the 12 rows of the second repeat, of n rows
    num, den = prefix_matching_sums(attn[:, 1], 0, 12, 1)
    assert (num / den)[0, 2].item() == pytest.approx(1.0)
    assert (num / den)[0].argmax().item() == 2


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("The dog saw the cat. The cat saw the dog.\nThe dog ran to the house and the cat ran too.\n"
                    "She said it was red.\n\nA man and a woman saw the river.\nThe city was big and old.\n"
                    "He ran, she ran, they ran.\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_gpt2"])
def test_run_end_to_end(model: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    path = request.getfixturevalue(model)
    common = dict(model=str(path), analyses=["decoder_heads"], text=[str(_text(tmp_path))], quiet=True,
                  decoder_induction_probe=3, decoder_induction_length=8, max_length=24)
    result = headscope.run(**common, out=None)
    heads = result.heads
    assert len(heads) == 8 and set(SCORES) | {"sink"} <= set(heads.columns)
    table = result.tables["decoder_heads"]
    assert list(table["layer"]) == list(heads["layer"])
    for key in ("previous_token", "duplicate_token", "induction", "prefix_matching", "sink_first"):
        assert heads[key].between(0, 1).all(), key
    summary = result.run["analyses"]["decoder_heads"]
    assert summary["probe_sequences"] == 3 and summary["sequences"] > 1
    assert summary["sink_rate_of_means"] == pytest.approx((heads["sink_first"] > 0.3).mean())
    assert summary["sink_rate"] == pytest.approx(heads["sink_share"].mean())
    assert result.run["analysis_options"]["decoder_heads"]["induction_length"] == 8
    if model == "tiny_llama":
        assert summary["tokenizer_adds_bos"] is True
        np.testing.assert_allclose(heads["sink_bos"], heads["sink_first"])
    else:
        assert summary["tokenizer_adds_bos"] is False and heads["sink_bos"].isna().all()
    # Blocks of one query row, one sequence per batch and left padding change nothing.
    other = headscope.run(**common, out=None, attention_memory="1KiB", batch_size=1, padding_side="left")
    for key in SCORES:
        np.testing.assert_allclose(other.heads[key], heads[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_prefix_matching_of_a_run_equals_a_plain_loop(tiny_llama: Path, llama, tmp_path: Path) -> None:
    length, n_probe = 8, 3
    result = headscope.run(model=str(tiny_llama), analyses=["decoder_heads"], text=[str(_text(tmp_path))],
                           quiet=True, decoder_induction_probe=n_probe, decoder_induction_length=length, seed=5,
                           out=None)
    tok = llama.tokenizer
    assert adds_bos(tok)
    seqs = probe_sequences(probe_candidates(TokenCodec.of(tok), llama.model.config.vocab_size), n_probe, length, 5,
                           int(tok.bos_token_id))
    expected = np.zeros((2, 4))
    for ids in seqs:
        A = capture_stacked(llama, collate([probe_example(0, ids, True, tok)], 0))[0].numpy()
        for layer in range(2):
            for head in range(4):
                values = [A[layer, head, i, i - length + 1] for i in range(1 + length, 1 + 2 * length)]
                expected[layer, head] += sum(values) / len(values) / n_probe
    np.testing.assert_allclose(result.heads["prefix_matching"].to_numpy().reshape(2, 4), expected, rtol=1e-4)


def test_files_and_report(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    headscope.run(model=str(tiny_llama), analyses=["decoder_heads"], text=[str(_text(tmp_path))], quiet=True,
                  decoder_induction_probe=2, decoder_induction_length=6, out=str(out), decoder_sink_epsilon=0.2,
                  decoder_exclude_bos=True)
    import json

    import pandas as pd

    table = pd.read_csv(out / "decoder_heads.csv")
    heads = pd.read_csv(out / "heads.csv")
    assert set(SCORES) <= set(table.columns) and set(SCORES) <= set(heads.columns)
    run = json.loads((out / "run.json").read_text())
    assert run["analysis_options"]["decoder_heads"]["exclude_bos"] is True
    assert run["analyses"]["decoder_heads"]["sink_epsilon"] == 0.2
    for name in ("previous_token", "induction", "prefix_matching", "sink_first"):
        assert (out / "figures" / f"decoder_heads_{name}.png").is_file()
        assert (out / "figures" / f"decoder_heads_{name}.svg").is_file()
    page = (out / "report" / "index.html").read_text()
    assert "Decoder-LM heads" in page and "Sink rate" in page
    # The top heads say what minimum of scored sequences they rest on (2 probe sequences: no prefix-matching top).
    assert run["analyses"]["decoder_heads"]["min_n"] == 20 and "decoder_min_n = 20" in page
    assert "prefix_matching" not in run["analyses"]["decoder_heads"]["top"] or not run["analyses"][
        "decoder_heads"]["top"]["prefix_matching"]


def test_encoder_gets_a_clear_error(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"not a causal language model.*decoder_heads"):
        headscope.run(model=str(tiny_bert), analyses=["decoder_heads"], text=[str(_text(tmp_path))], quiet=True,
                      out=None)
    # Declared once (needs = ("causal",)) and checked once the model is read, for every analysis that needs it.
    with pytest.raises(UsageError, match=r"hand is not a causal language model.*the span analysis"):
        check_model_needs(["syntax", "span"], "hand", is_causal=False)
    check_model_needs(["decoder_heads", "retrieval", "span"], "hand", is_causal=True)


def test_options_are_checked(tiny_llama: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="induction_probe"):
        DecoderHeads(DecoderHeadsOptions(induction_probe=0)).start(_ctx(1, 1))
    with pytest.raises(ValueError, match="induction_length"):
        DecoderHeads(DecoderHeadsOptions(induction_length=1)).start(_ctx(1, 1))
    with pytest.raises(ValueError, match="sink_epsilon"):
        DecoderHeads(DecoderHeadsOptions(sink_epsilon=1.5)).start(_ctx(1, 1))
    with pytest.raises(ValueError, match="lower --decoder-induction-length"):
        headscope.run(model=str(tiny_llama), analyses=["decoder_heads"], text=[str(_text(tmp_path))], quiet=True,
                      out=None, max_length=16, decoder_induction_length=10)


def test_previous_token_diagonal_of_a_mid_sequence_block() -> None:
    # A block's diagonal q0 - 1 picks A[i, i-1] for its rows: check on a block that starts mid-sequence.
    A = torch.arange(36, dtype=torch.float32).view(1, 1, 6, 6).tril()
    block = LayerAttention(0, A[:, :, 2:5], 2)
    picked = torch.diagonal(block.weights, block.query_start - 1, dim1=-2, dim2=-1)
    assert picked.flatten().tolist() == [A[0, 0, 2, 1].item(), A[0, 0, 3, 2].item(), A[0, 0, 4, 3].item()]


# --- retrieval heads --------------------------------------------------------------------------------------------

def test_rouge1_recall() -> None:
    from headscope.analyses.retrieval import rouge1_recall

    assert rouge1_recall("The dog saw the cat.", "the cat") == pytest.approx(2 / 5)  # one "the" and "cat" of 5
    assert rouge1_recall("The dog saw the cat.", "the the cat") == pytest.approx(3 / 5)
    assert rouge1_recall("The dog saw the cat.", "THE DOG SAW THE CAT!") == 1.0
    assert rouge1_recall("a b", "c") == 0.0


def test_copy_scores_on_a_hand_made_trace() -> None:
    from headscope.analyses.retrieval import copy_scores
    from test_retrieval_conventions import ARGMAX, GENERATED, PROMPT

    # The trace of test_retrieval_conventions: L0H0 copies positions 3, 4, 4 again and 6 (its second copy of
    # position 4 counts once here), L1H1 position 6 only.
    scores = copy_scores(ARGMAX, GENERATED, PROMPT, (3, 7))
    np.testing.assert_allclose(scores.numpy(), [[3 / 4, 0.0], [0.0, 1 / 4]])
    assert copy_scores(ARGMAX[:0], GENERATED[:0], PROMPT, (3, 7)).shape == (2, 2)


def test_build_prompt_finds_the_needle(llama) -> None:
    from headscope.analyses.retrieval_prompts import build_prompt

    tok = llama.tokenizer
    sentences = ["the king saw a red house.", "the queen ran to the city.", "a man ate a book."]
    counts = [len(tok(" " + s, add_special_tokens=False)["input_ids"]) for s in sentences]
    prompt = build_prompt(TokenCodec.of(tok), sentences, counts, "the old dog was big.", "what was the old dog?",
                          0.5, 0)
    start, stop = prompt.span
    assert tok.decode(prompt.ids[start:stop].tolist()).strip() == "the old dog was big."
    assert prompt.ids[0] == tok.bos_token_id  # the tokenizer's own special tokens are kept
    text = tok.decode(prompt.ids.tolist(), skip_special_tokens=True)
    assert text.index("the queen") > text.index("the old dog") > text.index("the king")  # depth 0.5: after 1


def test_greedy_with_attention_matches_generate_and_capture(llama) -> None:
    from headscope.engine.forwards import greedy_with_attention

    ids = torch.tensor(probe_sequences(probe_candidates(TokenCodec.of(llama.tokenizer)), 1, 10, seed=1, bos=0)[0])
    generated, argmax = greedy_with_attention(llama, ids, 6)
    with torch.inference_mode():
        reference = llama.model.generate(ids[None], max_new_tokens=len(generated), do_sample=False,
                                         attention_mask=torch.ones(1, len(ids), dtype=torch.int64))
    assert generated.tolist() == reference[0, len(ids):].tolist()
    assert llama.model.config._attn_implementation == "headscope"  # put back after the eager steps
    # The step that produced token s attended from position len(ids) - 1 + s of the whole sequence.
    whole = torch.cat([ids, generated[:-1]])
    attn = capture_stacked(llama, collate([probe_example(0, whole.numpy(), True, llama.tokenizer)], 0))[0]
    rows = attn[:, :, len(ids) - 1:]  # [layer, head, step, key]
    np.testing.assert_array_equal(argmax.numpy(), rows.argmax(-1).permute(2, 0, 1).numpy())


def test_retrieval_end_to_end(tiny_llama: Path, tmp_path: Path) -> None:
    text = _text(tmp_path)
    common = dict(model=str(tiny_llama), analyses=["retrieval"], text=[str(text)], quiet=True, out=None,
                  retrieval_haystack_tokens=30, retrieval_prompts=2, retrieval_new_tokens=4,
                  retrieval_needle="the old dog was big.", retrieval_question="what was the old dog?")
    # A random model never reproduces the needle: every prompt is counted and left out, no score is made up.
    result = headscope.run(**common)
    summary = result.run["analyses"]["retrieval"]
    assert summary["prompts"] == 2 and summary["used"] == 0 and summary["left_out"] == 2
    assert result.heads["retrieval_score"].isna().all() and summary["retrieval_heads"] == 0
    prompts = result.tables["retrieval_prompts"]
    assert list(prompts["used"]) == [False, False] and (prompts["rouge1_recall"] <= 0.5).all()
    assert (prompts["generated_tokens"] <= 4).all() and (prompts["needle_tokens"] > 0).all()
    # With the ROUGE filter off every generation is scored.
    result = headscope.run(**common, retrieval_rouge=-1.0)
    assert result.run["analyses"]["retrieval"]["used"] == 2
    assert result.heads["retrieval_score"].between(0, 1).all()


def test_retrieval_refuses_encoders_and_long_haystacks(tiny_bert: Path, tiny_llama: Path, tmp_path: Path) -> None:
    text = [str(_text(tmp_path))]
    with pytest.raises(ValueError, match=r"not a causal language model.*retrieval"):
        headscope.run(model=str(tiny_bert), analyses=["retrieval"], text=text, quiet=True, out=None)
    with pytest.raises(ValueError, match="haystack-tokens"):
        headscope.run(model=str(tiny_llama), analyses=["retrieval"], text=text, quiet=True, out=None)  # 1024 > 128
