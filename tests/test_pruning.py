"""Head pruning: 0% pruned equals the unpruned loss exactly, the importance order prunes the least important
heads first, random orders are seeded, and the seed claim's Fisher test on a hand-made table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import headscope
from headscope.analyses.base import AnalysisResult
from headscope.analyses.importance import batch_loss
from headscope.analyses.pruning import (
    HeadPruning,
    analysis_rankings,
    behaviour_heads,
    fractions,
    held_out_loss,
)
from headscope.config import RunConfig
from headscope.engine.batch import collate
from headscope.engine.inputs import Corpus
from headscope.manifest import Manifest
from headscope.model.encode import Encoder
from headscope.model.load import load_model


def test_fractions() -> None:
    assert fractions(0.25) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert fractions(0.1)[-1] == 1.0 and len(fractions(0.1)) == 11
    assert fractions(0.3) == [0.0, 0.3, 0.6, 0.9, 1.0]


def test_zero_pruned_equals_unpruned_loss_exactly(tiny_bert_mlm: Path, text_file: Path) -> None:
    loaded = load_model(str(tiny_bert_mlm), device="cpu")
    config = RunConfig(model=str(tiny_bert_mlm), text=[str(text_file)], max_length=64)
    examples = list(Corpus(config, Encoder(loaded.tokenizer, 64), Manifest()).examples())
    batch = collate(examples, int(loaded.tokenizer.pad_token_id))
    with torch.no_grad():
        loss, n = batch_loss(loaded, batch, "mlm_loss", seed=0)
    assert held_out_loss(loaded, [batch], "mlm_loss", 0, np.ones((2, 4))) == float(loss) / n
    closed = np.ones((2, 4))
    closed[1, 2] = 0
    assert held_out_loss(loaded, [batch], "mlm_loss", 0, closed) != float(loss) / n


def test_behaviour_heads_and_fisher_claim() -> None:
    import pandas as pd
    from scipy.stats import fisher_exact

    roles = pd.DataFrame({"layer": [0, 0, 1], "head": [0, 1, 1], "role": ["a", "b", "a"],
                          "has_role": [True, False, True]})
    distance = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1],
                             "pattern": ["mixed", "mixed", "previous", "mixed"]})
    results = {"roles": AnalysisResult("roles", tables={"roles": roles}),
               "distance": AnalysisResult("distance", heads=distance)}
    found, used = behaviour_heads(results)
    assert found == {(0, 0), (1, 1), (1, 0)} and used == ["roles", "distance"]
    claim = HeadPruning._claim(results, survivors=[0, 3], n_heads=2, total=4)
    # survivors: heads 0 (L0H0, flagged) and 3 (L1H1, flagged); pruned: L0H1 (no), L1H0 (flagged).
    assert (claim["survivors_with_behaviour"], claim["pruned_with_behaviour"]) == (2, 1)
    assert claim["share_survivors"] == 1.0 and claim["share_all"] == 0.75
    assert claim["p"] == pytest.approx(fisher_exact([[2, 0], [1, 1]], alternative="greater")[1])
    assert claim["p_two_sided"] == pytest.approx(fisher_exact([[2, 0], [1, 1]])[1])
    # Alone, roles flags L0H0 and L1H1: both survivors, none of the pruned.
    alone = claim["by_analysis"]["roles"]
    assert (alone["survivors_with_behaviour"], alone["pruned_with_behaviour"]) == (2, 0)
    assert alone["p"] == pytest.approx(1 / 6)  # hypergeometric: both flagged heads among the 2 survivors of 4
    assert claim["by_analysis"]["distance"]["survivors_with_behaviour"] == 0
    assert "note" not in claim
    assert HeadPruning._claim({}, [0], 2, 4)["analyses"] == []


def test_seed_claim_says_when_the_union_covers_every_head() -> None:
    import pandas as pd

    roles = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "role": "a", "has_role": True})
    claim = HeadPruning._claim({"roles": AnalysisResult("roles", tables={"roles": roles})}, [0, 1], 2, 4)
    assert claim["share_all"] == 1.0 and claim["p"] == 1.0 and claim["odds_ratio"] is None
    assert "every head" in claim["note"]


def test_analysis_rankings() -> None:
    import pandas as pd

    roles = pd.DataFrame({"layer": [0, 0, 0, 1, 1], "head": [0, 0, 1, 0, 1], "role": ["a", "b", "a", "a", "a"],
                          "t": [1.0, 5.0, -2.0, np.nan, 3.0]})
    syntax = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1],
                           "syntax_best_accuracy": [0.5, 0.9, np.nan, 0.1]})
    rankings = analysis_rankings({"roles": AnalysisResult("roles", tables={"roles": roles}),
                                  "syntax": AnalysisResult("syntax", heads=syntax)}, 2, 2)
    np.testing.assert_array_equal(rankings["roles"], [5.0, -2.0, -np.inf, 3.0])  # max t; a NaN-only head last
    np.testing.assert_array_equal(rankings["syntax"], [0.5, 0.9, -np.inf, 0.1])
    assert list(np.argsort(rankings["syntax"], kind="stable")) == [2, 3, 0, 1]  # pruned first: weakest


def test_pruning_run_end_to_end(tiny_bert_mlm: Path, text_file: Path) -> None:
    result = headscope.run(model=str(tiny_bert_mlm), text=[str(text_file)], analyses=["pruning", "importance"],
                           out=None, quiet=True, max_length=64, pruning_step=0.25, pruning_seeds=2,
                           pruning_sequences=2)
    table = result.tables["pruning"]
    assert list(table[table["order"] == "importance"]["n_pruned"]) == [0, 2, 4, 6, 8]
    assert len(table[table["order"] == "random"]) == 10
    zero = table[table["fraction"] == 0]["loss"].to_numpy()
    assert np.all(zero == zero[0])  # every order starts from the same unpruned model
    summary = result.run["analyses"]["pruning"]
    total = result.run["counts"]["examples"]
    # Held-out and estimation samples are disjoint: at most half the corpus each.
    assert summary["held_out_sequences"] == min(2, total // 2) == summary["estimate_sequences"]
    assert len(summary["pruned_order"]) == len(set(summary["pruned_order"])) == 8
    # The first head pruned is the least important one at full gates (per-layer L2 normalised).
    imp = result.tables["importance"]
    raw = imp.pivot(index="layer", columns="head", values="importance_raw").to_numpy()
    assert summary["seed_claim"]["analyses"] == []
    assert np.isfinite(raw).all()


def test_pruning_in_an_analysis_ranking(tiny_bert_mlm: Path, text_file: Path) -> None:
    result = headscope.run(model=str(tiny_bert_mlm), text=[str(text_file)], analyses=["roles", "pruning"],
                           out=None, quiet=True, max_length=64, pruning_step=0.5, pruning_seeds=0,
                           pruning_sequences=2)
    table = result.tables["pruning"]
    ranked = table[table["order"] == "roles"]
    assert list(ranked["n_pruned"]) == [0, 4, 8]
    assert ranked["loss"].iloc[0] == table[table["order"] == "importance"]["loss"].iloc[0]
    assert set(result.run["analyses"]["pruning"]["seed_claim"]["by_analysis"]) == {"roles"}
