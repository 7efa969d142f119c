"""Every input headscope builds itself is written out (issue 36): ``probes/<analysis>.jsonl``, listed in run.json.

Each file decodes to its text, and re-running the model on its ids reproduces the scores of the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import headscope
from headscope.analyses.retrieval import copy_scores, wu_scores
from headscope.engine.batch import collate
from headscope.engine.capture import capture_stacked
from headscope.engine.forwards import greedy_with_attention
from headscope.engine.results import RunResult, read_probes
from headscope.model.encode import probe_example


@pytest.fixture(scope="module")
def llama(tiny_llama: Path):
    from headscope.model.load import load_model

    return load_model(str(tiny_llama), device="cpu")


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    lines = ["The dog saw the cat.  The cat saw the dog.", "The dog ran to the house and the cat ran too.",
             "She said it was red.", "", "A man and a woman saw the river.", "The city was big and old.",
             "He ran, she ran, they ran."] * 6
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _listed(out: Path, name: str) -> list[dict]:
    run = json.loads((out / "run.json").read_text())
    assert f"probes/{name}.jsonl" in run["outputs"]
    return read_probes(out / "probes" / f"{name}.jsonl")


def test_induction_probes_are_written_and_reproduce_prefix_matching(tiny_llama: Path, llama, tmp_path: Path) -> None:
    out = tmp_path / "out"
    length = 6
    result = headscope.run(model=str(tiny_llama), analyses=["decoder_heads"], text=[str(_text(tmp_path))], quiet=True,
                           decoder_induction_probe=3, decoder_induction_length=length, seed=4, out=str(out),
                           report=False)
    records = _listed(out, "decoder_heads")
    assert records == result.probes["decoder_heads"] == RunResult.load(out).probes["decoder_heads"]
    tok = llama.tokenizer
    expected = np.zeros((2, 4))
    for k, r in enumerate(records):
        assert r["index"] == k and r["seed"] == [4, 15, k] and r["text"] == tok.decode(r["ids"])
        a, b = r["first_repeat"]
        c, d = r["second_repeat"]
        assert r["ids"][a:b] == r["ids"][c:d] and r["bos"] == (r["ids"][0] == tok.bos_token_id)
        # The model on exactly these ids, eager: the mean of A[i, i - L + 1] over the second repeat's rows.
        A = capture_stacked(llama, collate([probe_example(0, np.asarray(r["ids"]), r["bos"], tok)], 0))[0].numpy()
        rows = range(c, d)
        expected += np.array([[np.mean([A[la, he, i, i - length + 1] for i in rows]) for he in range(4)]
                              for la in range(2)]) / len(records)
    np.testing.assert_allclose(result.heads["prefix_matching"].to_numpy().reshape(2, 4), expected, rtol=1e-4)


@pytest.mark.parametrize("conventions", ["headscope", "wu"])
def test_retrieval_prompts_are_written_and_reproduce_the_scores(conventions: str, tiny_llama: Path, llama,
                                                                tmp_path: Path) -> None:
    if conventions == "wu":
        pytest.importorskip("rouge_score")
    out = tmp_path / "out"
    result = headscope.run(model=str(tiny_llama), analyses=["retrieval"], text=[str(_text(tmp_path))], quiet=True,
                           out=str(out), report=False, retrieval_haystack_tokens=40, retrieval_prompts=3,
                           retrieval_new_tokens=5, retrieval_needle="the old dog was big and brown.",
                           retrieval_question="what was the old dog?", retrieval_answer="big and brown",
                           retrieval_rouge=-1.0, conventions=conventions)
    records = _listed(out, "retrieval")
    assert records == result.probes["retrieval"] and len(records) == 3
    tok = llama.tokenizer
    total = torch.zeros(2, 4, dtype=torch.float64)
    for r in records:
        assert r["text"] == tok.decode(r["ids"]) and r["conventions"] == conventions and r["used"]
        start, stop = r["needle_span"]
        if conventions == "headscope":
            assert tok.decode(r["ids"][start:stop]).strip() == "the old dog was big and brown."
        # The model on exactly these ids: the same answer, and the same score from its attention.
        generated, argmax = greedy_with_attention(llama, torch.as_tensor(r["ids"]), 5, conventions != "wu")
        assert generated.tolist() == r["generated_ids"]
        scorer = wu_scores if conventions == "wu" else copy_scores
        total += scorer(argmax, generated, torch.as_tensor(r["ids"]), (start, stop))
        for a, b in r["decoy_spans"]:
            assert b - a == stop - start and (b <= start or a >= stop)
    np.testing.assert_allclose(result.heads["retrieval_score"].to_numpy().reshape(2, 4), (total / 3).numpy(),
                               rtol=1e-12)


def test_span_windows_are_written(tiny_llama: Path, llama, tmp_path: Path) -> None:
    result = headscope.run(model=str(tiny_llama), analyses=["span"], text=[str(_text(tmp_path))], quiet=True,
                           out=None, span_lengths="12,20", span_texts=2, span_check_texts=1)
    records = result.probes["span"]  # kept on the result of an in-memory run
    tok = llama.tokenizer
    assert [r["role"] for r in records] == ["measured", "measured", "held_out"]
    for r in records:
        assert len(r["ids"]) == 20 and r["ids"][0] == tok.bos_token_id and r["text"] == tok.decode(r["ids"])
    # Consecutive windows of the text as written (one space between sentences, the double space kept).
    stream = tok.decode([i for r in records for i in r["ids"][1:]])
    lines = [line for line in _text(tmp_path).read_text().splitlines() if line]
    assert " ".join(lines).startswith(stream.strip())
