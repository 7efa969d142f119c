"""The tutorials of the documentation site run as written, on tiny random models.

Each page under ``docs/tutorials/`` opens with a settings block (``NAME = value`` lines: the model, the data,
the sizes); the test replaces exactly those lines with a tiny fixture's path and tiny sizes, then runs every
``python`` code block of the page in order, in one namespace, in a temporary directory. Everything else is
the page's code as the reader sees it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_bert
from test_coref import _random_corefud
from test_streaming import _treebank

TUTORIALS = Path(__file__).resolve().parents[1] / "docs" / "tutorials"
TEXT = ("The dog saw the cat.\nThe cat ran to the house.\nShe said it was red.\nThe king ate a book.\n\n"
        "A man and a woman saw the river.\nThe city was big and old.\nHe ran, she ran.\n\n"
        "It was new. The queen saw the old car.\nThe big dog ran to the city, and the cat ate.\n\n")


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M)


def with_settings(code: str, settings: dict[str, Any], page: str) -> str:
    """``code`` with each ``NAME = ...`` line of ``settings`` replaced; every name must be on the page."""
    for name, value in settings.items():
        code, n = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", code, count=1, flags=re.M)
        assert n == 1, f"{page}: the settings block has no line {name} = ..."
    return code


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, tiny_bert_mlm: Path, tiny_llama: Path) -> dict[str, str]:
    d = tmp_path_factory.mktemp("tutorial-data")
    rng = np.random.default_rng(3)
    ewt = d / "ewt"
    ewt.mkdir()
    (ewt / "en_ewt-ud-train.conllu").write_text(_treebank(rng, 30, "train"), encoding="utf-8")
    (ewt / "en_ewt-ud-dev.conllu").write_text(_treebank(rng, 20, "dev"), encoding="utf-8")
    (d / "gum.conllu").write_text(_random_corefud(rng, n_docs=2, n_sentences=6), encoding="utf-8")
    (d / "book.txt").write_text(TEXT * 12, encoding="utf-8")
    tuned = make_tiny_bert(d / "tuned", lm_head=True, seed=1)
    return {"encoder": str(tiny_bert_mlm), "tuned": str(tuned), "decoder": str(tiny_llama), "ewt": str(ewt),
            "gum": str(d / "gum.conllu"), "text": str(d / "book.txt")}


def settings_of(page: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "clark": {"MODEL": data["encoder"], "EWT": data["ewt"], "GUM": data["gum"], "SENTENCES": 30},
        "decoder": {"MODEL": data["decoder"], "TEXT": data["text"], "WINDOWS": 6, "SPAN_LENGTHS": "16,32",
                    "PROMPTS": 1, "HAYSTACK": 40},
        "compare": {"MODEL_A": data["encoder"], "MODEL_B": data["tuned"], "SEGMENTS": 8},
        "importance": {"MODEL": data["decoder"], "TEXT": data["text"], "SEGMENTS": 8, "SEQUENCES": 3},
        "notebook": {"MODEL": data["encoder"], "TEXT": data["text"]},
    }[page]


PAGES = sorted(p.stem for p in TUTORIALS.glob("*.md") if p.stem != "index")


def test_every_tutorial_is_run_here() -> None:
    assert PAGES == ["clark", "compare", "decoder", "importance", "notebook"], PAGES


@pytest.mark.parametrize("page", PAGES)
def test_tutorial_runs_as_written(page: str, data: dict[str, str], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(TUTORIALS / f"{page}.md")
    assert len(blocks) >= 2, f"{page}: a settings block and at least one block of code"
    code = with_settings("\n".join(blocks), settings_of(page, data), page)
    if page == "decoder":  # the tiny model's vocabulary answers nothing: a needle and question it can tokenize
        code = code.replace("retrieval_haystack_tokens=HAYSTACK,",
                            "retrieval_haystack_tokens=HAYSTACK, retrieval_needle='the old dog was big.', "
                            "retrieval_question='what was the old dog?', span_window=4, span_texts=2, "
                            "span_check_texts=2, span_resamples=10, decoder_induction_probe=2, "
                            "decoder_induction_length=6, retrieval_new_tokens=4,")
    if page == "importance":
        code = code.replace("out=\"runs/matter\",", "out=\"runs/matter\", pruning_bootstrap=20, "
                                                    "head_effects_bootstrap=20,")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": f"tutorial_{page}"}
    exec(compile(code, str(TUTORIALS / f"{page}.md"), "exec"), namespace)  # our own documentation, as written
    assert "result" in namespace or "comparison" in namespace
