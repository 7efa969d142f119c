"""Gu et al. (ICLR 2025)'s sink rate as their released eval_sink_open_source.py computes it (issue 36).

Hand-computed numbers on hand-made maps, invariance under blocks, batches and shards, and the released formula
(transcribed below) on a tiny model's eager ``output_attentions`` under ``--conventions gu``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import headscope
from contexts import analysis_context
from headscope.analyses.decoder_heads import DecoderHeads, DecoderHeadsOptions
from headscope.engine.batch import collate
from headscope.engine.context import AnalysisContext
from headscope.runner.feed import feed_attention
from test_decoder_heads import _example, _padded


def _ctx(n_layers: int, n_heads: int, max_length: int = 8) -> AnalysisContext:
    return analysis_context(n_layers, n_heads, causal=True, max_length=max_length)


def _maps() -> list[np.ndarray]:
    """Three sequences (n = 4, 3, 4), one layer, two heads; rows sum to 1 over keys 0..i."""
    a = np.zeros((1, 2, 4, 4))
    a[0, 0] = [[1, 0, 0, 0], [.5, .5, 0, 0], [.2, .4, .4, 0], [.1, .2, .3, .4]]
    a[0, 1] = np.tril(np.ones((4, 4))) / np.arange(1, 5)[:, None]           # uniform over the keys it sees
    b = np.zeros((1, 2, 3, 3))
    b[0, 0] = [[1, 0, 0], [.9, .1, 0], [.5, .3, .2]]
    b[0, 1] = np.eye(3)                                                      # each token on itself
    c = np.zeros((1, 2, 4, 4))
    c[0, 0] = [[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]       # previous token
    c[0, 1] = np.eye(4)
    return [a, b, c]


def _run(maps: list[np.ndarray], block_rows: int | None = None, batch_size: int | None = None,
         **options: object) -> DecoderHeads:
    options.setdefault("induction_length", 4)  # the probe fits the run's 8 tokens
    analysis = DecoderHeads(DecoderHeadsOptions(**options))  # type: ignore[arg-type]
    analysis.start(_ctx(*maps[0].shape[:2]))
    examples = [_example(k, list(range(1, m.shape[-1] + 1))) for k, m in enumerate(maps)]
    size = batch_size or len(maps)
    for start in range(0, len(maps), size):
        feed_attention([analysis], collate(examples[start:start + size], pad_id=0), _padded(maps[start:start + size]),
                       block_rows=block_rows)
    return analysis


# alpha_k = sum_{i >= k} A[i, k] / (n - k), by hand (epsilon 0.3; "+" marks alpha_k > 0.3):
#   sequence a, head 0: (1+.5+.2+.1)/4 = .45+  (.5+.4+.2)/3 = .367+  (.4+.3)/2 = .35+  .4/1 = .4+
#   sequence a, head 1: (1+1/2+1/3+1/4)/4 = .521+  (1/2+1/3+1/4)/3 = .361+  (1/3+1/4)/2 = .292  (1/4)/1 = .25
#   sequence b, head 0: (1+.9+.5)/3 = .8+  (.1+.3)/2 = .2  .2/1 = .2
#   sequence b, head 1: 1/3 = .333+  1/2 = .5+  1/1 = 1+
#   sequence c, head 0: 2/4 = .5+  1/3 = .333+  1/2 = .5+  0
#   sequence c, head 1: 1/4 = .25  1/3 = .333+  1/2 = .5+  1/1 = 1+
# k = 0: heads 0, 1 hit in 3 and 2 of the 3 sequences: sink_share (1, 2/3), sink rate 5/6.
# The curve: k = 0: 5 of 6; k = 1: 2 + 3 of 6; k = 2: 2 + 2 of 6; k = 3 (sequences a, c only): 1 + 1 of 4.
# The per-head corpus means of A[i, 0] are (.45+.8+.5)/3 = .583 and (.521+.333+.25)/3 = .368: both above
# 0.3, so the threshold of the mean says 100%.
CURVE = [5 / 6, 5 / 6, 4 / 6, 2 / 4]


@pytest.mark.parametrize(("block_rows", "batch_size"), [(None, None), (1, 1), (2, 2)])
def test_hand_computed_sink_rate_and_curve(block_rows: int | None, batch_size: int | None) -> None:
    analysis = _run(_maps(), block_rows, batch_size)
    result = analysis.finalize(_ctx(1, 2), {})
    summary = result.summary
    assert summary["sink_rate"] == pytest.approx(5 / 6)
    assert summary["sink_rate_of_means"] == pytest.approx(1.0)
    assert summary["sink_rate_sequences"] == 3
    np.testing.assert_allclose(result.heads["sink_share"], [1.0, 2 / 3])
    np.testing.assert_allclose(result.heads["sink_first"], [(.45 + .8 + .5) / 3, (25 / 48 + 1 / 3 + .25) / 3])
    curve = result.tables["sink_curve"]
    assert list(curve["position"]) == [0, 1, 2, 3] and list(curve["sequences"]) == [3, 3, 3, 2]
    np.testing.assert_allclose(curve["sink_rate"], CURVE)


def test_epsilon_is_strict_and_moves_the_rate() -> None:
    # Sequence b's head 1 has alpha_0 = 1/3 exactly: above 0.33, not above 1/3 (float32 rounding aside: 0.34).
    summary = _run(_maps(), sink_epsilon=0.34).finalize(_ctx(1, 2), {}).summary
    # k = 0 above 0.34: head 0 in a, b, c (.45, .8, .5); head 1 in a only (.521).
    assert summary["sink_rate"] == pytest.approx(4 / 6)


def test_shards_merge_to_one_pass() -> None:
    maps = _maps()
    whole = _run(maps).finalize(_ctx(1, 2), {})
    first, second = _run(maps[:1]), _run(maps[1:])
    first.merge(second)
    merged = first.finalize(_ctx(1, 2), {})
    assert merged.summary["sink_rate"] == pytest.approx(whole.summary["sink_rate"])
    np.testing.assert_allclose(merged.tables["sink_curve"]["sink_rate"], whole.tables["sink_curve"]["sink_rate"])
    # The state round-trips through a checkpoint as plain arrays.
    again = DecoderHeads(DecoderHeadsOptions(induction_length=4))
    again.start(_ctx(1, 2))
    again.load_state_dict(*first.state_dict())
    np.testing.assert_allclose(again.finalize(_ctx(1, 2), {}).tables["sink_curve"]["sink_rate"], CURVE)


# --- the released formula on a tiny model ----------------------------------------------------------------------

def released_metric(attentions: np.ndarray, epsilon: float) -> np.ndarray:
    """``compute_attention_sink`` of sail-sg/Attention-Sink's eval_sink_open_source.py (commit af49727),
    transcribed: attentions of shape (samples, layers, heads, T, T) -> metric per key position, in percent."""
    scores = torch.from_numpy(attentions)
    num_samples, num_layers, num_heads, t1, t2 = scores.shape
    assert t1 == t2
    ratios = torch.arange(t1, 0, -1)[None, None, None, :].expand(num_samples, num_layers, num_heads, t1, t2).to(scores)
    importance = (scores / ratios).sum(dim=-2)
    return ((importance > epsilon).to(torch.float).mean(dim=(0, 1, 2)) * 100).numpy()


def _documents(tmp_path: Path) -> tuple[Path, list[str]]:
    docs = [["The dog saw the cat near the old river bank.", "The cat ran away into the dark green woods."],
            ["A man and a woman walked to the city market on a cold and rainy day.",
             "They bought bread, apples and a small blue jug."],
            ["Short one."],  # fewer than T tokens: left out, as the released script asserts
            ["He said that the weather would change soon, and everyone in the village believed him at once."],
            ["Ships sailed from the harbour at dawn while the gulls cried over the grey water of the bay."]]
    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")
    # A document is read as its lines joined by one space (docs/inputs.md).
    return path, [" ".join(d) for d in docs]


def test_conventions_gu_equals_the_released_script_on_a_tiny_model(tiny_llama: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    T = 12
    path, texts = _documents(tmp_path)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation="eager").eval()
    maps, kept = [], 0
    for text in texts:
        inputs = tok(text, return_tensors="pt")  # special tokens as the released script (BOS for Llama)
        if inputs["input_ids"].shape[1] < T:
            continue
        kept += 1
        with torch.no_grad():
            out = model(input_ids=inputs["input_ids"][:, :T], output_attentions=True)
        maps.append(torch.cat(list(out.attentions), dim=0).numpy())  # (layers, heads, T, T)
    attentions = np.stack(maps).astype(np.float64)
    alpha0 = (attentions[..., 0] / T).sum(-1)  # (samples, layers, heads)
    epsilon = float(np.median(alpha0))  # a tiny random model: pick epsilon where both sides of it occur
    expected = released_metric(attentions, epsilon) / 100
    assert 0 < expected[0] < 1

    result = headscope.run(model=str(tiny_llama), analyses=["decoder_heads"], text=[str(path)], quiet=True,
                           conventions="gu", max_length=T, decoder_sink_epsilon=epsilon,
                           decoder_induction_probe=2, decoder_induction_length=6, out=None)
    summary = result.run["analyses"]["decoder_heads"]
    assert summary["conventions"] == "gu" and summary["sink_rate_sequences"] == kept == 4
    assert summary["sink_rate"] == pytest.approx(expected[0])
    curve = result.tables["sink_curve"]
    assert list(curve["position"]) == list(range(T)) and (curve["sequences"] == kept).all()
    np.testing.assert_allclose(curve["sink_rate"], expected, atol=1e-12)
    # The threshold of the mean is another number, reported under its own name.
    means = attentions[..., 0].sum(-1).mean(0) / T
    assert summary["sink_rate_of_means"] == pytest.approx(float((means > epsilon).mean()))
    skipped = result.run["events"]["skipped"]["listed"]
    assert any("fewer than --max-length" in e["reason"] for e in skipped)
