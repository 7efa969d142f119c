"""Every analysis, end to end: layer-by-layer streaming gives the numbers of 0.1's all-layers path.

The reference is ``capture="stacked"`` (eager attention, every layer returned at once, as headscope 0.1 did).
It is compared with the streamed capture, with query blocks of a few rows and batches of one sequence (a
tiny ``attention_memory``), and with left padding, on tiny random BERT, RoBERTa, MPNet-style (hooks) and
Llama (grouped-query, rotary) models, over raw text, two treebanks and a coreference file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import headscope
from test_coref import _random_corefud
from tolerances import STANDARDISED_ATOL, STATISTIC_RTOL

ANALYSES = ["surface", "examples", "syntax", "probe", "coref", "similarity", "distance", "roles", "ablation"]
#: Columns that standardise features across heads before a distance (tolerance: tests/tolerances.py).
STANDARDISED = {"cluster_distance"}
#: A variance of ~1e-11 across sequences (random tiny models) and the t statistic divided by its root: their
#: relative error is that of the sums divided by the variance, so they get a relative tolerance of 1e-3.
ILL_CONDITIONED = {"score_var", "t"}


def _treebank(rng: np.random.Generator, sentences: int, prefix: str) -> str:
    words = ["the", "dog", "saw", "a", "cat", "and", "ran", "to", "house", "she", "said", "it", "was", "red"]
    rels = ["det", "nsubj", "obj", "amod", "advmod", "case", "nmod"]
    out = []
    for s in range(sentences):
        n = int(rng.integers(3, 9))
        out.append(f"# sent_id = {prefix}{s}")
        for k in range(n):
            head = 0 if k == 0 else int(rng.integers(1, k + 1))
            rel = "root" if k == 0 else rels[int(rng.integers(len(rels)))]
            out.append(f"{k + 1}\t{words[int(rng.integers(len(words)))]}\t_\tX\t_\t_\t{head}\t{rel}\t_\t_")
        out.append("")
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    d = tmp_path_factory.mktemp("streaming-corpus")
    rng = np.random.default_rng(7)
    (d / "train.conllu").write_text(_treebank(rng, 14, "train"), encoding="utf-8")
    (d / "dev.conllu").write_text(_treebank(rng, 10, "dev"), encoding="utf-8")
    (d / "coref.conllu").write_text(_random_corefud(rng, n_docs=2, n_sentences=6), encoding="utf-8")
    (d / "text.txt").write_text(
        "The dog saw the cat.\nThe cat ran to the house.\nShe said it was red.\nThe king ate a book.\n\n"
        "A man and a woman saw the river.\nThe city was big and old.\nHe ran, she ran.\n\n"
        "It was new. The queen saw the old car.\nThe big dog ran to the city, and the cat ate.\n", encoding="utf-8")
    return {"text": [str(d / "text.txt")], "treebank": [str(d / "train.conllu"), str(d / "dev.conllu")],
            "coref": [str(d / "coref.conllu")]}


def _run(model: Path, corpus: dict[str, list[str]], **kwargs: object) -> headscope.RunResult:
    return headscope.run(model=str(model), analyses=ANALYSES, out=None, quiet=True, max_length=48, distance_clusters=2,
                         similarity_sample=1.0, ablation_sequences=6, ablation_top=1, probe_epochs=1,
                         **corpus, **kwargs)  # type: ignore[arg-type]


def _assert_same(reference: headscope.RunResult, other: headscope.RunResult, what: str) -> None:
    def frames_equal(a: pd.DataFrame, b: pd.DataFrame, name: str) -> None:
        assert list(a.columns) == list(b.columns), name
        assert len(a) == len(b), name
        for column in a.columns:
            x, y = a[column], b[column]
            if pd.api.types.is_float_dtype(x) and pd.api.types.is_float_dtype(y):
                atol = STANDARDISED_ATOL if column in STANDARDISED else 1e-5
                rtol = 1e-3 if column in ILL_CONDITIONED else STATISTIC_RTOL
                np.testing.assert_allclose(y.to_numpy(float), x.to_numpy(float), atol=atol, rtol=rtol,
                                           err_msg=f"{what}: {name}.{column}")
            else:
                assert x.astype(str).tolist() == y.astype(str).tolist(), f"{what}: {name}.{column}"

    frames_equal(reference.heads, other.heads, "heads")
    assert set(reference.tables) == set(other.tables)
    for name, table in reference.tables.items():
        if name == "mds":  # a 2-D embedding fitted from the JS distances, compared through them
            continue
        frames_equal(table, other.tables[name], name)
    probe_ref, probe = reference.documents["probe"], other.documents["probe"]
    for variant, uas in probe_ref["uas"].items():
        assert probe["uas"][variant] == pytest.approx(uas, abs=1e-6), f"{what}: probe {variant}"
    maps_ref = reference.documents["examples"]["examples"]
    maps = other.documents["examples"]["examples"]
    assert [m["index"] for m in maps_ref] == [m["index"] for m in maps]
    for run in (reference, other):
        assert not run.run["notes"].get("analyses_without_input"), what
        assert run.run["analyses"]["ablation"]["examples_used"] == 6


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_roberta", "tiny_mpnet", "tiny_llama"])
def test_streamed_runs_equal_the_all_layers_path(request: pytest.FixtureRequest, name: str,
                                                 corpus: dict[str, list[str]]) -> None:
    model = request.getfixturevalue(name)
    reference = _run(model, corpus, capture="stacked")
    streamed = _run(model, corpus)
    assert streamed.run["notes"]["capture"]["route"] == ("hooks" if name == "tiny_mpnet" else "interface")
    assert reference.run["notes"]["capture"]["route"] == "stacked"
    _assert_same(reference, streamed, f"{name} streamed")
    # A budget of a few rows: every batch holds one sequence and every layer comes in blocks of rows.
    _assert_same(reference, _run(model, corpus, attention_memory="6000"), f"{name} blocks")
    _assert_same(reference, _run(model, corpus, padding_side="left", batch_size=5), f"{name} left padding")
