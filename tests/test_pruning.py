"""Head pruning: 0% pruned equals the unpruned loss exactly, the importance order prunes the least important
heads first, random orders are seeded, and the seed claim's Fisher test on a hand-made table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import headscope
from headscope.analyses.base import AnalysisResult
from headscope.analyses.pruning import (
    HeadPruning,
    analysis_rankings,
    fractions,
)
from headscope.config import RunConfig
from headscope.engine.batch import collate
from headscope.engine.forwards import batch_loss
from headscope.engine.inputs import Corpus
from headscope.manifest import Manifest
from headscope.model.encode import Encoder
from headscope.model.load import load_model
from reference import behaviour_heads, held_out_loss


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


def test_pruning_finalizes_after_every_ranking_whatever_the_order_given() -> None:
    from headscope.analyses.registry import resolve_analyses

    names = [a.name for a in resolve_analyses(["pruning", "importance", "syntax", "roles"], {})]
    assert names.index("pruning") > max(names.index("syntax"), names.index("roles"))
    assert names[:3] == ["importance", "syntax", "roles"]  # the others keep the order given
    every = [a.name for a in resolve_analyses(["coref", "distance", "pruning", "roles", "surface", "syntax"], {})]
    assert every[-2:] == ["syntax", "pruning"] and every[:2] == ["coref", "distance"]


def test_pruning_uses_rankings_given_after_it_and_names_the_absent(tiny_bert_mlm: Path, text_file: Path) -> None:
    result = headscope.run(model=str(tiny_bert_mlm), text=[str(text_file)], analyses=["pruning", "roles", "distance"],
                           out=None, quiet=True, max_length=64, pruning_step=0.5, pruning_seeds=0,
                           pruning_sequences=2, pruning_bootstrap=50)
    assert "roles" in set(result.tables["pruning"]["order"])
    summary = result.run["analyses"]["pruning"]
    assert summary["rankings"]["used"] == ["roles"]
    assert summary["rankings"]["absent"] == {"syntax": "did not run", "coref": "did not run"}
    assert set(summary["seed_claim"]["by_analysis"]) == {"roles", "distance"}
    assert summary["seed_claim"]["absent"] == ["syntax", "coref"]


def test_loss_check_says_when_the_loss_does_not_rise() -> None:
    from headscope.analyses.pruning import loss_check

    rng = np.random.default_rng(0)
    base = 2.0 + 0.01 * rng.standard_normal(200)
    flat = {("importance", None, 0.0): base, ("importance", None, 1.0): base - 0.05}
    check = loss_check(flat, [0.0, 1.0], "contrastive_loss")
    assert check["rises"] is False and check["difference_high"] < 0
    assert "not measuring the model's quality" in check["note"] and "masked-LM" in check["note"]
    assert "docs/importance.md" in check["note"]
    rising = {("importance", None, 0.0): base, ("importance", None, 1.0): base + 0.5}
    check = loss_check(rising, [0.0, 1.0], "mlm_loss")
    assert check["rises"] is True and "note" not in check and check["difference_low"] > 0


def test_pruning_report_states_a_loss_that_does_not_rise(tmp_path: Path) -> None:
    import pandas as pd

    from headscope.engine.results import RunResult

    table = pd.DataFrame({"fraction": [0.0, 1.0], "order": "importance", "seed": pd.array([pd.NA] * 2, "Int64"),
                          "n_pruned": [0, 8], "loss": [1.98, 1.90], "loss_low": [1.9, 1.8],
                          "loss_high": [2.1, 2.0], "loss_kind": "contrastive_loss"})
    note = "the held-out contrastive_loss does not rise with pruning ... use instead a masked-LM head"
    run = {"analyses": {"pruning": {"loss_check": {"rises": False, "note": note},
                                    "bootstrap": {"resamples": 1000, "confidence": 0.95},
                                    "rankings": {"used": [], "absent": {"roles": "did not run"}},
                                    "seed_claim": {"analyses": []}}}}
    from headscope.report.sections import pruning as pruning_section

    section = pruning_section.section(RunResult(heads=pd.DataFrame(), tables={"pruning": table}, documents={},
                                                run=run), tmp_path)
    assert section is not None
    assert "does not measure pruning here" in section.html and "masked-LM head" in section.html
    assert "no ranking of roles (did not run)" in section.html and "95% bootstrap intervals" in section.html


def test_every_point_of_the_curve_has_a_seeded_bootstrap_interval(tiny_bert_mlm: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = tmp_path / "documents.txt"  # one sentence per document: one sequence each
    corpus.write_text("\n\n".join(["The dog saw the cat.", "The cat ran to the house.", "She said it was red.",
                                   "The king ate a book.", "A man saw the river.", "The city was big and old.",
                                   "He ran, she ran.", "The house was red."]) + "\n", encoding="utf-8")
    kwargs = {"model": str(tiny_bert_mlm), "text": [str(corpus)], "analyses": ["pruning"], "out": None,
              "quiet": True, "max_length": 64, "pruning_step": 0.5, "pruning_seeds": 1, "pruning_sequences": 3,
              "pruning_bootstrap": 200}
    result = headscope.run(**kwargs)
    table = result.tables["pruning"]
    assert table[["loss_low", "loss_high"]].notna().all().all()
    assert (table["loss_low"] <= table["loss"] + 1e-12).all() and (table["loss"] <= table["loss_high"] + 1e-12).all()
    assert (table["loss_high"] > table["loss_low"]).any()  # more than one held-out sequence: a real interval
    summary = result.run["analyses"]["pruning"]
    assert summary["bootstrap"]["resamples"] == 200 and summary["bootstrap"]["confidence"] == 0.95
    assert {"rises", "difference_low", "difference_high", "rule"} <= set(summary["loss_check"])
    assert {"better", "difference_low", "difference_high"} <= set(summary["importance_vs_random"])
    again = headscope.run(**kwargs).tables["pruning"]
    assert again[["loss_low", "loss_high"]].equals(table[["loss_low", "loss_high"]])
    with pytest.raises(ValueError, match="pruning_bootstrap"):
        headscope.run(**{**kwargs, "pruning_bootstrap": 0})

    # The figure draws the intervals as bands.
    import matplotlib.collections

    from headscope.report.sections.pruning import pruning_figure

    figure = pruning_figure(table)
    bands = [c for c in figure.axes[0].collections
             if isinstance(c, matplotlib.collections.PolyCollection)]
    assert len(bands) == table.groupby(["order", "seed"], dropna=False).ngroups
