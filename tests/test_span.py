"""The span analysis: distance buckets from hand-made maps, classification, the KV budget, and a tiny Llama
whose one head is built to look only at its last few tokens (streaming), masked without changing the loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import headscope
from headscope.analyses.span import loss_change, parse_lengths
from headscope.analyses.span_masses import (
    BEYOND,
    BUCKETS,
    FAR,
    LOCAL,
    budget_document,
    budget_windows,
    classify,
    cumulative_masses,
    fractions,
    histogram_bins,
    span_edges,
)
from headscope.engine.batch import collate
from headscope.engine.forwards import KVBudget, Loss, run_forward
from headscope.model.encode import probe_example
from reference import random_attention
from test_decoder_heads import _NAMES


def _reference(A: np.ndarray, window: int) -> dict[str, float]:
    """Buckets of one head's causal map by plain loops over rows and keys (shares of the summed attention)."""
    n = A.shape[0]
    out = dict.fromkeys((*BUCKETS, "coverage"), 0.0)
    for i in range(n):
        for j in range(i + 1):
            d = i - j
            if j == 0:
                out["sink"] += A[i, j]
                out["coverage"] += A[i, j]
                continue
            out["local" if d < LOCAL else "mid" if d < FAR else "far"] += A[i, j]
            if d < window:
                out["coverage"] += A[i, j]
    total = A.sum()
    return {k: v / total for k, v in out.items()}


@pytest.mark.parametrize("rows", [1, 7, None])
def test_fractions_sum_to_one_and_equal_plain_loops(rows: int | None) -> None:
    rng = np.random.default_rng(0)
    lengths = [600, 90, 530]  # rows past 64 and past 512: every bucket has mass
    n = max(lengths)
    A = np.zeros((len(lengths), 2, n, n), dtype=np.float32)
    for b, length in enumerate(lengths):
        for h in range(2):
            A[b, h, :length, :length] = random_attention(rng, length, causal=True)
    window = 5
    edges = span_edges(n, window)
    weights = torch.as_tensor(A)
    masses = torch.zeros(2, len(edges), dtype=torch.float64)
    step = rows or n
    for q0 in range(0, n, step):
        masses += cumulative_masses(weights[:, :, q0:q0 + step], q0, torch.as_tensor(edges))
    bins = histogram_bins(edges, n)
    shares = fractions(masses.numpy(), edges, window, bins)
    np.testing.assert_allclose(sum(shares[b] for b in BUCKETS), 1.0, atol=1e-6)
    np.testing.assert_allclose(shares["sink"] + sum(shares[f"bin:{lo}"] for lo, _ in bins), 1.0, atol=1e-6)
    assert bins[0] == (0, 1) and bins[1] == (1, 2) and bins[-1][1] == BEYOND and bins[-1][0] == 512
    for h in range(2):
        # The shares pool every row of every sequence: pool the references the same way, weighted by mass.
        parts = [(_reference(A[b, h, :length, :length].astype(np.float64), window), float(length))
                 for b, length in enumerate(lengths)]
        total = sum(w for _, w in parts)
        for key in (*BUCKETS, "coverage"):
            expected = sum(p[key] * w for p, w in parts) / total
            assert shares[key][h] == pytest.approx(expected, abs=2e-6), key
    assert (shares["far"] > 0).all() and (shares["mid"] > 0).all()


def test_classify_budget_and_document() -> None:
    coverage = np.array([[[0.99, 0.5]], [[0.96, 0.97]], [[np.nan, np.nan]]])  # 3 lengths, 1 layer, 2 heads
    streaming = classify(coverage, 0.95)
    assert streaming.tolist() == [[True, False]]  # head 1 is below at the first length; NaN length left out
    assert budget_windows(streaming, 64).tolist() == [[64, 0]]
    doc = budget_document(streaming, 64, model="m")
    assert doc["layers"] == [[{"sink": 1, "window": 64}, "full"]] and doc["streaming_heads"] == 1
    assert parse_lengths("1024, 256,256") == [256, 1024]
    for bad in ("", "a,b", "1"):
        with pytest.raises(ValueError, match="span_lengths"):
            parse_lengths(bad)


def test_loss_change_intervals() -> None:
    base = np.array([10.0, 20.0, 30.0, 40.0])
    terms = np.array([10.0, 10.0, 10.0, 10.0])
    out = loss_change({"base": base, "budget": base.copy(), "random": base + 5.0}, terms, 200, 0)
    assert out["budget"]["change"] == 0.0 and out["budget"]["change_low"] == out["budget"]["change_high"] == 0.0
    assert out["random"]["change"] == pytest.approx(0.5) and out["random"]["change_low"] == pytest.approx(0.5)
    assert out["budget_vs_random"]["change"] == pytest.approx(-0.5)


def test_budget_mask_keeps_the_sink_and_the_window() -> None:
    windows = torch.tensor([[0, 2]])  # one layer: head 0 whole, head 1 the sink and its last 2 keys
    budget = KVBudget(windows, {})
    module = torch.nn.Linear(1, 1)
    query = torch.zeros(1, 2, 5, 4)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    mask = budget.mask(module, causal, query, 5)
    assert mask.shape == (1, 2, 5, 5)
    assert torch.equal(mask[0, 0], causal[0, 0])
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 1, 1, 0], [1, 0, 0, 1, 1]],
                            dtype=torch.bool)
    assert torch.equal(mask[0, 1], expected)
    assert torch.equal(budget.mask(module, None, query, 5)[0, 1], expected)
    additive = torch.zeros(1, 1, 5, 5).masked_fill(~causal, torch.finfo(torch.float32).min)
    float_mask = budget.mask(module, additive, query, 5)
    assert torch.equal(float_mask[0, 1] == 0, expected)


# --- a tiny Llama with a streaming head built into it ------------------------------------------------------------

#: The head built to look only at its last few tokens: layer 0, head 0 (it shares key/value head 0 with head 1).
STREAMING = (0, 0)


def make_streaming_llama(directory: Path) -> Path:
    """The conftest's tiny Llama with L0H0 attending (almost) only to its last 4 keys.

    Every token's embedding gets a large constant in dimension 0, so after the layer's RMSNorm that dimension is
    nearly the same at every position; L0H0's query and key (key/value head 0) read only it, into the rotary pair
    of frequency 0.1 (head dimension 8: dimensions 1 and 5). The score of query i on key j is then
    ``c cos(0.1 (i - j))`` with ``c`` about 2000: on sequences of at most 30 tokens it falls with the distance, by
    about 160 from distance 0 to distance 4, so keys 4 or more back get weights below exp(-150). L0H1, which shares
    the key head, gets a zero query (uniform attention) so that it is no streaming head by accident.
    """
    from transformers import LlamaForCausalLM

    from conftest import make_tiny_llama

    make_tiny_llama(directory)
    model = LlamaForCausalLM.from_pretrained(directory)
    attn = model.model.layers[0].self_attn
    d = model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        attn.q_proj.weight[:2 * d] = 0.0  # query heads 0 and 1
        attn.k_proj.weight[:d] = 0.0  # key head 0
        attn.q_proj.weight[1, 0] = 13.4
        attn.k_proj.weight[1, 0] = 13.4
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def streaming_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_streaming_llama(tmp_path_factory.mktemp("streaming-llama"))


SENTENCES = ("the dog saw the cat", "a man and a woman saw the river", "the city was big and old",
             "the queen said the old man ate the red book", "they saw a big house by the river",
             "the king ate a book", "she said it was red", "he ran to the house with his dog")


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "span.txt"
    lines = [f"{SENTENCES[k % len(SENTENCES)]} ." for k in range(60)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_built_head_is_streaming_and_its_budget_changes_nothing(streaming_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = headscope.run(model=str(streaming_llama), text=[str(_text(tmp_path))], analyses=["span"],
                           span_lengths="16,24", span_window=4, span_texts=3, span_check_texts=3, out=str(out),
                           quiet=True, report=False)
    heads = result.heads.set_index(["layer", "head"])
    assert heads.loc[STREAMING, "span_class"] == "streaming"
    assert heads.loc[STREAMING, "span_coverage_24"] > 0.999
    assert (heads["span_class"] == "streaming").sum() == 1  # the random heads attend broadly
    summary = result.run["analyses"]["span"]
    assert summary["lengths"] == [16, 24] and summary["streaming_heads"] == 1 and summary["texts"] == 3
    # The fractions of each head and length sum to 1, in the buckets and in the histogram.
    span = pd.read_csv(out / "span.csv")
    assert set(span["bucket"]) == set(BUCKETS) and set(span["length"]) == {16, 24}
    np.testing.assert_allclose(span.groupby(["layer", "head", "length"])["fraction"].sum(), 1.0, atol=1e-5)
    histogram = pd.read_csv(out / "span_histogram.csv")
    np.testing.assert_allclose(histogram.groupby(["layer", "head", "length"])["fraction"].sum(), 1.0, atol=1e-5)
    budget = json.loads((out / "kv_budget.json").read_text())
    assert budget["layers"][0][0] == {"sink": 1, "window": 4} and budget["layers"][1][0] == "full"
    # The check: masking the streaming head to the sink and its last 4 keys leaves the loss as it was.
    check = pd.read_csv(out / "span_check.csv").set_index("forward")
    assert check.loc["budget", "change"] == pytest.approx(0.0, abs=1e-5)
    assert check.loc["budget", "sequences"] == 3
    assert summary["check"]["budget"]["change"] == pytest.approx(0.0, abs=1e-5)
    atlas = result.tables["atlas"]
    row = atlas[(atlas["head_name"] == "L0H0") & (atlas["group"] == "streaming")]
    assert len(row) == 1 and "coverage" in row["evidence"].iloc[0]
    assert set(atlas.loc[atlas["head_name"] == "L1H0", "group"]) >= {"retrieval-span"}
    # The report's span section: the streaming count, the check in words, and the coverage map.
    from headscope.report.build import build_report

    build_report(out)
    page = (out / "report" / "index.html").read_text()
    assert "Attention span and KV budget" in page and f"1 of {len(heads)} heads are streaming" in page
    assert "sink + window on the streaming heads" in page and (out / "figures" / "span_coverage.png").is_file()


def test_budget_on_the_built_head_changes_nothing_and_on_another_head_it_does(streaming_llama: Path) -> None:
    from headscope.model.load import load_model

    loaded = load_model(str(streaming_llama), device="cpu")
    rng = np.random.default_rng(1)
    bos = int(loaded.tokenizer.bos_token_id)
    examples = [probe_example(k, np.concatenate([[bos], rng.integers(5, 200, size=n - 1)]).astype(np.int64), True,
                              _NAMES, "span") for k, n in enumerate([28, 20])]
    batch = collate(examples, 0)

    def losses(windows: np.ndarray | None) -> np.ndarray:
        out = run_forward(loaded, batch, Loss(per_sequence=True, kv_budget=windows), 0)
        assert out.sequence_loss is not None
        return out.sequence_loss

    base = losses(None)  # summed over each sequence's tokens (about 100 nats: float32 rounding near 1e-5)
    streaming = np.zeros((2, 4), dtype=np.int64)
    streaming[STREAMING] = 4
    still = np.abs(losses(streaming) - base).max()
    assert still <= 1e-5
    # A head of the random model (small weights: each head moves the loss a little) masked alike does change it.
    other = np.zeros((2, 4), dtype=np.int64)
    other[1, 3] = 4
    moved = np.abs(losses(other) - base).max()
    assert moved > 5e-4 and moved > 50 * max(still, 1e-6)
    # The weights of a budgeted capture: the built head already had nothing outside its window.
    from headscope.engine.capture import capture_stacked
    from headscope.engine.forwards import kv_budget

    whole = capture_stacked(loaded, batch)
    with kv_budget(loaded, streaming):
        budgeted = capture_stacked(loaded, batch)
    torch.testing.assert_close(budgeted, whole, atol=1e-6, rtol=1e-5)
    with kv_budget(loaded, other):
        masked = capture_stacked(loaded, batch)[0, 1, 3]
    assert float(masked[20, 1:17].abs().max()) == 0.0 and float(masked[20].sum()) == pytest.approx(1.0)


def test_encoder_refused(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"not a causal language model.*span"):
        headscope.run(model=str(tiny_bert), analyses=["span"], text=[str(_text(tmp_path))], quiet=True, out=None)
