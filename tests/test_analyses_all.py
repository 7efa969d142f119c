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


def test_all_leaves_pruning_out_for_a_model_without_the_loss_it_was_trained_on() -> None:
    config = RunConfig(analyses=["all"])
    names, skipped = applicable_analyses(config, is_causal=False, loss_kind="contrastive_loss")
    assert "pruning" not in names and "contrastive loss" in skipped["pruning"]
    for kind in ("mlm_loss", "lm_loss"):
        names, skipped = applicable_analyses(config, is_causal=kind == "lm_loss", loss_kind=kind)
        assert "pruning" in names and "pruning" not in skipped


def test_the_plan_and_its_cost_are_said_before_the_main_pass(tiny_bert: Path, text_file: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="headscope.progress")
    result = headscope.run(model=str(tiny_bert), analyses=["all", "pruning"], text=[str(text_file)], out=None,
                           max_length=32, max_segments=3, importance_sequences=4, ablation_sequences=3, ablation_top=1,
                           sep_gradient_sequences=4, pruning_sequences=2, pruning_seeds=1, pruning_step=0.5,
                           pruning_bootstrap=10)
    said = [r.getMessage() for r in caplog.records if r.name == "headscope.progress"]
    plan = next(k for k, m in enumerate(said) if m.startswith("--analyses all runs: "))
    first_pass = next(k for k, m in enumerate(said) if m.startswith("main pass"))
    assert plan < first_pass
    cost = said[plan + 1]
    # importance: 3 of the 3 sequences, a forward and a backward each; ablation: 3 sequences x (baseline + at most
    # 10 clusters x 3 conditions).
    assert "(~3 sequences)" in cost and "importance ~9" in cost and "ablation ~93" in cost, cost
    assert "x the main pass" in cost
    # Named, pruning runs on tiny BERT's contrastive loss, and the run says up front what it will make of it.
    assert "pruning" in result.run["config"]["analyses"]
    warned = [e["reason"] for e in result.run["events"]["warning"]["listed"]]
    assert any(w.startswith("pruning needs the loss the model was trained on") for w in warned), warned


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
    from headscope.comparison import compare

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
