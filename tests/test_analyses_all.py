"""``--analyses all``: every analysis that applies to the model and corpus, and why the others are left out."""

from __future__ import annotations

from pathlib import Path

import pytest

import headscope
from headscope.analyses import REGISTRY
from headscope.analyses.registry import applicable_analyses
from headscope.config import RunConfig


def test_all_follows_what_each_analysis_needs() -> None:
    names, skipped = applicable_analyses(RunConfig(analyses=["all"]), is_causal=True)
    assert "decoder_heads" in names and "retrieval" in names and "surface" in names
    assert "treebank" in skipped["syntax"] and "coref" in skipped["coref"]
    assert set(names) | set(skipped) == set(REGISTRY)

    names, skipped = applicable_analyses(RunConfig(analyses=["all"], treebank=["t.conllu"]), is_causal=False)
    assert "syntax" in names and "probe" in names
    assert "decoder_heads" in skipped and "retrieval" in skipped


def test_all_on_a_causal_model_runs_the_decoder_head_types(tiny_llama: Path, text_file: Path) -> None:
    result = headscope.run(model=str(tiny_llama), analyses=["surface", "all"], text=[str(text_file)], quiet=True,
                           out=None, max_length=24, decoder_induction_probe=2, decoder_induction_length=6,
                           retrieval_prompts=1, retrieval_haystack_tokens=30, retrieval_new_tokens=4,
                           retrieval_needle="the old dog was big.", retrieval_question="what was the old dog?",
                           importance_sequences=4)
    ran = result.run["config"]["analyses"]
    assert ran[0] == "surface" and "decoder_heads" in ran and "all" not in ran
    assert "previous_token" in result.heads.columns
    noted = result.run["notes"]["analyses_all"]
    assert noted["ran"] == ran and "syntax" in noted["skipped"]


def test_compare_a_base_and_a_tuned_decoder_of_the_same_shape(tmp_path: Path, text_file: Path) -> None:
    from conftest import make_tiny_llama
    from headscope.compare import compare

    # Two seeds stand for a base model and its instruction-tuned copy: same shape, other weights.
    common = dict(analyses=["decoder_heads"], text=[str(text_file)], quiet=True, max_length=24,
                  decoder_induction_probe=2, decoder_induction_length=6, report=False)
    runs = []
    for seed in (0, 1):
        model = make_tiny_llama(tmp_path / f"llama{seed}", seed=seed)
        runs.append(headscope.run(model=str(model), out=str(tmp_path / f"run{seed}"), **common))
    comparison = compare(tmp_path / "run0", tmp_path / "run1")
    assert {"previous_token", "induction", "sink_first"} <= set(comparison.heads["statistic"])
    row = comparison.heads.query("statistic == 'induction' and layer == 1 and head == 2").iloc[0]
    a, b = (run.heads.query("layer == 1 and head == 2")["induction"].iloc[0] for run in runs)
    # The runs are read back from their CSV files, written to 6 significant digits.
    assert row["a"] == pytest.approx(a, rel=1e-5) and row["b"] == pytest.approx(b, rel=1e-5)
    assert row["delta"] == pytest.approx(row["b"] - row["a"])
    assert "decoder_heads" in comparison.tables
