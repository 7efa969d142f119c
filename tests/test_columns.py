"""Every output file and column is declared once, in ``headscope.columns`` (the site's output reference is
generated from it): tiny runs of every analysis, on an encoder (treebank, coreference) and a decoder LM,
write exactly the declared columns — none undeclared, none declared and never written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import headscope
from headscope import columns
from headscope.analyses.registry import REGISTRY
from test_coref import _random_corefud
from test_streaming import _treebank

TEXT = ("The dog saw the cat.\nThe cat ran to the house.\nShe said it was red.\nThe king ate a book.\n\n"
        "A man and a woman saw the river.\nThe city was big and old.\nHe ran, she ran.\n\n"
        "It was new. The queen saw the old car.\nThe big dog ran to the city, and the cat ate.\n")

ENCODER = ["surface", "examples", "syntax", "probe", "coref", "similarity", "distance", "ablation", "importance",
           "pruning", "head_effects", "sep_gradient", "roles"]
DECODER = ["surface", "decoder_heads", "span", "retrieval", "importance", "head_effects", "sep_gradient"]


def written_columns(out: Path) -> dict[str, list[str]]:
    """``{file name: its columns}`` for every CSV a run wrote to ``out`` (not the report's assets)."""
    return {p.name: list(pd.read_csv(p, nrows=0).columns) for p in sorted(out.glob("*.csv"))}


@pytest.fixture(scope="module")
def runs(tiny_bert_mlm: Path, tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("columns")
    rng = np.random.default_rng(7)
    (d / "train.conllu").write_text(_treebank(rng, 14, "train"), encoding="utf-8")
    (d / "dev.conllu").write_text(_treebank(rng, 10, "dev"), encoding="utf-8")
    (d / "coref.conllu").write_text(_random_corefud(rng, n_docs=2, n_sentences=6), encoding="utf-8")
    (d / "text.txt").write_text(TEXT * 3, encoding="utf-8")
    encoder, decoder = d / "encoder", d / "decoder"
    headscope.run(model=str(tiny_bert_mlm), analyses=ENCODER, text=[str(d / "text.txt")],
                  treebank=[str(d / "train.conllu"), str(d / "dev.conllu")], coref=[str(d / "coref.conllu")],
                  out=str(encoder), quiet=True, report=False, max_length=48, distance_clusters=2,
                  similarity_sample=1.0, ablation_sequences=4, ablation_top=1, probe_epochs=1,
                  importance_sequences=4, pruning_sequences=2, pruning_seeds=1, pruning_step=0.5,
                  pruning_bootstrap=10, head_effects_sequences=3, head_effects_mean_sequences=3,
                  head_effects_bootstrap=20, head_effects_atp_star=True, sep_gradient_sequences=4)
    headscope.run(model=str(tiny_llama), analyses=DECODER, text=[str(d / "text.txt")], out=str(decoder),
                  quiet=True, report=False, max_length=48, decoder_induction_probe=2, decoder_induction_length=6,
                  span_lengths="16,24", span_window=4, span_coverage=0.3, span_texts=2, span_check_texts=2,
                  span_resamples=10,
                  retrieval_prompts=1, retrieval_haystack_tokens=30, retrieval_new_tokens=4,
                  retrieval_needle="the old dog was big.", retrieval_question="what was the old dog?",
                  importance_sequences=4, head_effects_sequences=3, head_effects_mean_sequences=3,
                  head_effects_bootstrap=20, sep_gradient_sequences=4)
    return [encoder, decoder]


def test_the_runs_cover_every_analysis() -> None:
    assert set(ENCODER) | set(DECODER) == set(REGISTRY), set(REGISTRY) ^ (set(ENCODER) | set(DECODER))


def test_every_written_column_is_declared_and_every_declared_column_is_written(runs: list[Path]) -> None:
    written: dict[str, set[str]] = {}
    for out in runs:
        for name, cols in written_columns(out).items():
            written.setdefault(name, set()).update(cols)
    undeclared = {f: sorted(c for c in cols if columns.find(f, c) is None) for f, cols in written.items()}
    assert {f: c for f, c in undeclared.items() if c} == {}, "written but not declared in headscope/columns.py"
    never = {f: sorted(name for name, c in cols.items() if not any(c.pattern().match(w) for w in written.get(f, ())))
             for f, cols in columns.by_file().items()}
    assert {f: c for f, c in never.items() if c} == {}, "declared in headscope/columns.py but never written"
    assert set(columns.FILES) == set(written), set(columns.FILES) ^ set(written)


def test_a_column_pattern_matches_only_its_own_names() -> None:
    assert columns.find("heads.csv", "role_local") is not None
    assert columns.find("heads.csv", "span_coverage_1024") is not None
    assert columns.find("heads.csv", "role_") is None  # the placeholder is never empty
    assert columns.find("heads.csv", "no_such_column") is None
    assert columns.find("roles.csv", "role_local") is None  # a pattern holds for its own file only


def test_every_declared_column_has_a_type_and_a_meaning() -> None:
    for column in columns.COLUMNS:
        assert column.dtype in columns.DTYPES, column
        assert len(column.meaning) > 10, column
        assert column.file.endswith(".csv"), column
    keys = [(c.file, c.name) for c in columns.COLUMNS]
    assert len(keys) == len(set(keys)), "a column is declared twice"


def test_declared_dtypes_match_what_is_written(runs: list[Path]) -> None:
    """A column declared numeric reads back numeric (or empty); one declared bool reads back as booleans."""
    for out in runs:
        for path in out.glob("*.csv"):
            table = pd.read_csv(path)
            for name in table.columns:
                series = table[name].dropna()
                if series.empty:
                    continue
                column = columns.find(path.name, name)
                assert column is not None, (path.name, name)
                dtype = column.dtype
                if dtype in ("int", "float"):
                    assert pd.api.types.is_numeric_dtype(series), (path.name, name, series.head(3).tolist())
                if dtype == "int":
                    assert np.allclose(series, series.round()), (path.name, name)
                if dtype == "bool":
                    assert set(series.astype(str)) <= {"True", "False"}, (path.name, name)


def test_the_json_files_named_in_the_declaration_exist(runs: list[Path]) -> None:
    names = {p.name for out in runs for p in out.glob("*.json")}
    assert set(columns.DOCUMENTS) == names, set(columns.DOCUMENTS) ^ names
    for out in runs:
        json.loads((out / "run.json").read_text(encoding="utf-8"))


def test_columns_imports_neither_torch_nor_pandas() -> None:
    import subprocess
    import sys

    code = "import sys, headscope.columns; print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
