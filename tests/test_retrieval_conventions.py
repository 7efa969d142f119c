"""Wu et al. (2024)'s retrieval score as their released retrieval_head_detection.py computes it (issue 36).

Hand-built traces with hand-computed scores, a transcription of their ``retrieval_calculate`` loop on random
traces, their ``find_needle_idx`` span and ROUGE, and ``--conventions wu`` end to end on a tiny model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import headscope
from headscope.analyses.retrieval import (
    copy_scores,
    rouge1_recall,
    rouge1_recall_stemmed,
    wu_scores,
)
from headscope.analyses.retrieval_prompts import wu_needle_span
from headscope.engine.codec import TokenCodec
from test_decoder_heads import _text

#: Prompt positions 0..8; the needle is positions 3..6 (ids 20 21 22 23); id 21 also sits at 8, outside it.
PROMPT = torch.tensor([10, 11, 12, 20, 21, 22, 23, 13, 21])
GENERATED = torch.tensor([20, 21, 99, 21, 23])
ARGMAX = torch.tensor([
    # step: [[L0H0, L0H1], [L1H0, L1H1]]
    [[3, 0], [4, 0]],   # 20: L0H0 on its source; L1H0 on the needle but on 21
    [[4, 0], [3, 8]],   # 21: L0H0 on its source; L1H1 on a 21 outside the needle
    [[0, 0], [5, 9]],   # 99 is in no needle; position 9 is the first generated token, past the prompt
    [[4, 0], [5, 8]],   # 21 again: L0H0 copies position 4 a second time
    [[6, 0], [5, 6]],   # 23: L0H0 and L1H1 on its source
])


def test_hand_built_trace_under_both_definitions() -> None:
    # Wu et al.: every copying step adds 1/4. L0H0 copies at steps 0, 1, 3, 4 (position 4 twice): 4/4;
    # L1H1 at step 4 only: 1/4.
    np.testing.assert_allclose(wu_scores(ARGMAX, GENERATED, PROMPT, (3, 7)).numpy(), [[1.0, 0.0], [0.0, 0.25]])
    # headscope: the share of the needle's positions copied, each once: L0H0 copied 3, 4, 6: 3/4.
    np.testing.assert_allclose(copy_scores(ARGMAX, GENERATED, PROMPT, (3, 7)).numpy(), [[0.75, 0.0], [0.0, 0.25]])
    # Their span (-1, -1) (no window matched): nothing is inside, every head 0.
    assert not wu_scores(ARGMAX, GENERATED, PROMPT, (-1, -1)).any()


def released_retrieval_calculate(attention_argmax: np.ndarray, generated: list[int], prompt_ids: list[int],
                                 needle_start: int, needle_end: int) -> np.ndarray:
    """``retrieval_calculate`` of nightdessert/Retrieval_Head (3ac171a), transcribed, summed over the decoding
    steps as ``decode`` calls it, on each head's top-1 key (``topk=1``: the loop body runs once)."""
    steps, n_layers, n_heads = attention_argmax.shape
    retrieval_score = [[[0, ""] for _ in range(n_heads)] for _ in range(n_layers)]
    for step in range(steps):
        inp = generated[step]
        for layer_idx in range(n_layers):
            for head_idx in range(n_heads):
                i = int(attention_argmax[step, layer_idx, head_idx])
                if needle_start <= i < needle_end and inp == prompt_ids[i]:
                    retrieval_score[layer_idx][head_idx][0] += 1 / (needle_end - needle_start)
    return np.array([[h[0] for h in layer] for layer in retrieval_score], dtype=np.float64)


@pytest.mark.parametrize("seed", range(5))
def test_wu_scores_equal_the_released_loop_on_random_traces(seed: int) -> None:
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, 6, size=30)  # few ids: many chance matches inside and outside the needle
    steps = int(rng.integers(1, 12))
    generated = rng.integers(0, 6, size=steps)
    argmax = rng.integers(0, 30 + steps, size=(steps, 3, 4))  # keys past the prompt too (earlier steps)
    span = (11, 19)
    expected = released_retrieval_calculate(argmax, generated.tolist(), prompt.tolist(), *span)
    got = wu_scores(torch.as_tensor(argmax), torch.as_tensor(generated), torch.as_tensor(prompt), span)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


class _Words:
    """A tokenizer of space-separated integers (``"20 21"`` -> ids 20, 21), to build spans by hand."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        assert not add_special_tokens
        return {"input_ids": [int(w) for w in text.split()]}


def test_their_needle_search_and_its_early_start() -> None:
    tok = TokenCodec(bos_id=None, eos_id=None, sep_id=None, special_ids=(), size=100, has_chat_template=False,
                     _tokenizer=_Words())
    # An answer of 12 distinct ids at positions 3..14. The window starting one token early (position 2) holds
    # 11 of the 12 ids: 11/12 > 0.9, so find_needle_idx returns (2, 14), not (3, 15).
    answer = " ".join(str(i) for i in range(20, 32))
    prompt = np.array([1, 2, 3, *range(20, 32), 4, 5])
    assert wu_needle_span(tok, prompt, answer) == (2, 14)
    # With 5 distinct ids, a window one token early holds 4/5 = 0.8: the span is exact.
    assert wu_needle_span(tok, np.array([1, 2, 20, 21, 22, 23, 24, 3]), "20 21 22 23 24") == (2, 7)
    # The answer nowhere in the prompt: (-1, -1), as their code returns.
    assert wu_needle_span(tok, np.array([1, 2, 3]), "20 21") == (-1, -1)


def test_rouge_with_and_without_the_stemmer() -> None:
    pytest.importorskip("rouge_score")
    # Reference words take, a, walk, in, the, park (6). Stemmed, the candidate's walking -> walk and
    # parks -> park match too: walk, in, park = 3/6. Without stemming only "in": 1/6.
    assert rouge1_recall_stemmed("take a walk in the park", "walking in parks") == pytest.approx(3 / 6)
    assert rouge1_recall("take a walk in the park", "walking in parks") == pytest.approx(1 / 6)


def test_conventions_wu_end_to_end(tiny_llama: Path, tmp_path: Path) -> None:
    pytest.importorskip("rouge_score")
    common = dict(model=str(tiny_llama), analyses=["retrieval"], text=[str(_text(tmp_path))], quiet=True,
                  out=None, retrieval_haystack_tokens=30, retrieval_prompts=3, retrieval_new_tokens=4,
                  retrieval_needle="the old dog was big and brown.", retrieval_question="what was the old dog?",
                  retrieval_answer="big and brown", retrieval_rouge=-1.0)
    result = headscope.run(**common, conventions="wu")
    summary = result.run["analyses"]["retrieval"]
    assert summary["conventions"] == "wu" and summary["used"] == 3
    prompts = result.tables["retrieval_prompts"]
    assert list(prompts["depth"]) == [0.0, 0.5, 1.0]  # their grid, round(linspace(0, 100, 3)) percent
    assert (prompts["reference"] == "big and brown").all()
    # The score is >= 0 and may exceed 1 (a position copied twice counts twice).
    assert (result.heads["retrieval_score"] >= 0).all()
    default = headscope.run(**common)
    assert default.run["analyses"]["retrieval"]["conventions"] == "headscope"
    assert (default.tables["retrieval_prompts"]["reference"] == "the old dog was big and brown.").all()


def test_answer_must_be_part_of_the_needle(tiny_llama: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not part of the needle"):
        headscope.run(model=str(tiny_llama), analyses=["retrieval"], text=[str(_text(tmp_path))], quiet=True,
                      out=None, retrieval_haystack_tokens=30, retrieval_prompts=1, retrieval_needle="a b c.",
                      retrieval_question="what?", retrieval_answer="d")
