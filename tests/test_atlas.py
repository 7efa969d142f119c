"""The head atlas (atlas.csv): labels, ranks, rules and samples from hand-made tables, overrides, and a run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

import headscope
import headscope.runner.orchestrate
from headscope.atlas import THRESHOLDS, build_atlas, parse_thresholds, thresholds_for
from headscope.cli import main
from headscope.config import RunConfig


def two_by_two(**columns: list[float]) -> pd.DataFrame:
    """A 2-layer x 2-head heads table (L0H0, L0H1, L1H0, L1H1) with the given columns."""
    return pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], **columns})


def run_info(**extra: object) -> dict:
    return {"analyses": {"surface": {"sequences": {c: 40 for c in ("prev", "next", "self", "entropy", "cls",
                                                                   "sep", "punct")}}},
            "counts": {"tokens": 1200}, "config": {"atlas_thresholds": []}, **extra}


def labels(atlas: pd.DataFrame, name: str) -> list[str]:
    return atlas.loc[atlas["head_name"] == name, "group"].tolist()


def test_previous_token_head_with_rank_rule_sample_and_evidence() -> None:
    heads = two_by_two(prev=[0.1, 0.9, 0.2, 0.3], next=[0.1, 0.0, 0.2, 0.1], entropy=[1.0, 0.5, 2.0, 1.5])
    atlas = build_atlas(heads, {}, run_info())
    row = atlas[atlas["group"] == "previous-token"].iloc[0]
    assert (row["head_name"], row["layer"], row["head"]) == ("L0H1", 0, 1)
    assert row["statistic"] == "prev" and row["value"] == pytest.approx(0.9)
    assert row["rank"] == "1/4"
    assert row["rule"] == "prev > 0.5 (Clark et al. 2019)"
    assert row["sample"] == "40 sequences, 1200 tokens"
    assert row["evidence"] == "prev 0.9 (rank 1/4)"
    # Every other head is below every threshold: one unlabelled row each, and one row in all for L0H1.
    for name in ("L0H0", "L1H0", "L1H1"):
        assert labels(atlas, name) == ["unlabelled"]
    assert labels(atlas, "L0H1") == ["previous-token"]
    assert list(atlas.columns) == ["layer", "head", "head_name", "group", "statistic", "value", "rank", "rule",
                                   "sample", "evidence"]


def test_only_measured_labels_and_clark_thresholds() -> None:
    heads = two_by_two(sep=[0.61, 0.6, 0.0, 0.9], entropy=[3.9, 3.8, 0.0, 0.0])
    atlas = build_atlas(heads, {}, run_info())
    assert set(atlas["group"]) == {"sep-sink", "broad", "unlabelled"}  # no prev column: no previous-token rows
    assert labels(atlas, "L0H0") == ["broad", "sep-sink"]
    assert labels(atlas, "L0H1") == ["unlabelled"]  # exactly at the bound is not above it
    assert atlas.loc[atlas["group"] == "sep-sink", "rank"].tolist() == ["2/4", "1/4"]
    assert "entropy > 3.8 nats" in atlas.loc[atlas["group"] == "broad", "rule"].iloc[0]


def test_roles_only_significant_tested_rows() -> None:
    heads = two_by_two()
    roles = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "role": ["local"] * 4,
                          "n": [50, 50, 50, 50], "score_mean": [9.0, 4.0, 2.0, 8.0], "t": [85.0, 2.0, -1.0, 40.0],
                          "p": [1e-12, 0.03, 0.8, 1e-5], "p_adjusted": [1e-12, 0.06, 0.8, 2e-5],
                          "significant": [True, False, False, True], "tested": [True, True, True, True]})
    run = run_info(analyses={"roles": {"tau": 3.0, "alpha": 0.05, "correction": "bh", "unit": "sentence"}})
    atlas = build_atlas(heads, {"roles": roles}, run)
    assert labels(atlas, "L0H1") == ["unlabelled"]  # significant False: no label
    row = atlas[atlas["head_name"] == "L0H0"].iloc[0]
    assert row["group"] == "role:local" and row["rank"] == "1/4" and row["sample"] == "n = 50 sentences"
    assert row["rule"] == "one-sided t-test vs tau=3, BH-adjusted p < 0.05 (Pande et al. 2021)"
    assert row["evidence"] == "local score 9 (rank 1/4); t = 85, p < 1e-10"
    assert "p = 2e-05" in atlas.loc[atlas["head_name"] == "L1H1", "evidence"].iloc[0]


def test_untested_role_row_gives_no_label() -> None:
    roles = pd.DataFrame({"layer": [0], "head": [0], "role": ["syntactic"], "n": [3], "score_mean": [9.0],
                          "t": [math.nan], "p": [math.nan], "p_adjusted": [math.nan], "significant": [True],
                          "tested": [False]})
    atlas = build_atlas(pd.DataFrame({"layer": [0], "head": [0]}), {"roles": roles}, run_info())
    assert atlas["group"].tolist() == ["unlabelled"]


def test_syntax_best_relation_needs_min_n_and_the_baseline() -> None:
    heads = two_by_two(syntax_best_relation=["det", "det", "nsubj", ""],
                       syntax_best_accuracy=[0.9, 0.4, 0.8, math.nan], syntax_best_n=[100, 100, 5, math.nan],
                       syntax_best_baseline=[0.5, 0.5, 0.2, math.nan])
    run = run_info(analyses={"syntax": {"min_n": 20}})
    atlas = build_atlas(heads, {}, run)
    assert labels(atlas, "L0H0") == ["syntax:det"]
    assert labels(atlas, "L0H1") == ["unlabelled"]  # below its fixed-offset baseline
    assert labels(atlas, "L1H0") == ["unlabelled"]  # 5 arcs < min_n 20
    row = atlas[atlas["group"] == "syntax:det"].iloc[0]
    assert row["sample"] == "100 arcs" and "n >= 20 arcs" in row["rule"] and "baseline 0.5" in row["evidence"]


def test_coref_best_heads_not_below_min_n() -> None:
    best = pd.DataFrame({"mention_type": ["pronoun", "proper"], "n": [40, 3], "below_min_n": [False, True],
                         "best_head": ["L1H0", ""], "layer": pd.array([1, None], dtype="Int64"),
                         "head": pd.array([0, None], dtype="Int64"), "accuracy": [0.6, math.nan],
                         "nearest": [0.3, 0.2], "head_match": [0.4, 0.5], "rule_based": [0.5, 0.6]})
    atlas = build_atlas(two_by_two(), {"coref_best": best}, run_info(analyses={"coref": {"min_n": 20}}))
    assert labels(atlas, "L1H0") == ["coref:pronoun"]
    assert not atlas["group"].str.startswith("coref:proper").any()
    assert atlas.loc[atlas["group"] == "coref:pronoun", "sample"].iloc[0] == "40 mentions"


def test_decoder_retrieval_pattern_and_importance() -> None:
    heads = two_by_two(induction=[0.0, 0.5, 0.1, 0.2], sink_first=[0.9, 0.1, 0.35, 0.0],
                       pattern=["mixed", "broad", "mixed", "mixed"], cluster=[0, 1, 0, 0],
                       importance=[0.1, 0.2, 1.0, 0.3])
    retrieval = two_by_two(retrieval_score=[0.0, 0.0, 0.0, 0.4], retrieval_head=[False, False, False, True])
    run = run_info(analyses={"decoder_heads": {"sequences": 30, "probe_sequences": 20, "min_n": 20},
                             "retrieval": {"threshold": 0.1, "used": 8, "prompts": 10},
                             "importance": {"terms": 500, "batches": 4}},
                   analysis_options={"decoder_heads": {"sink_epsilon": 0.4}})
    atlas = build_atlas(heads, {"retrieval": retrieval}, run)
    assert labels(atlas, "L0H0") == ["first-token-sink"]
    assert labels(atlas, "L1H0") == ["important"]  # 0.35 is below the run's own sink epsilon 0.4
    assert labels(atlas, "L0H1") == ["induction", "pattern:broad"]
    assert labels(atlas, "L1H1") == ["retrieval"]
    assert "no test yet" in atlas.loc[atlas["group"] == "induction", "rule"].iloc[0]
    assert atlas.loc[atlas["group"] == "retrieval", "sample"].iloc[0] == "8 of 10 prompts scored"
    # Too few sequences for decoder_min_n: no decoder label at all.
    few = run_info(analyses={"decoder_heads": {"sequences": 3, "probe_sequences": 3, "min_n": 20}})
    assert not atlas.empty and "induction" not in set(build_atlas(heads, {}, few)["group"])


def test_threshold_override() -> None:
    heads = two_by_two(prev=[0.1, 0.9, 0.55, 0.3])
    assert labels(build_atlas(heads, {}, run_info()), "L1H0") == ["previous-token"]
    run = run_info(config={"atlas_thresholds": ["prev=0.6"]})
    atlas = build_atlas(heads, {}, run)
    assert labels(atlas, "L1H0") == ["unlabelled"]
    assert atlas.loc[atlas["group"] == "previous-token", "rule"].iloc[0].startswith("prev > 0.6")
    assert thresholds_for(run)["prev"] == 0.6 and THRESHOLDS["prev"] == 0.5
    assert parse_thresholds(["important_fraction=0.05", "entropy=4"]) == {"important_fraction": 0.05,
                                                                          "entropy": 4.0}


@pytest.mark.parametrize("item", ["nope=1", "prev", "prev=abc", "prev=-1", "important_fraction=2"])
def test_bad_override_refused(item: str) -> None:
    with pytest.raises(ValueError, match="atlas"):
        parse_thresholds([item])


def test_bad_override_refused_before_the_model_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(headscope.runner.orchestrate, "open_context", no_load)
    with pytest.raises(ValueError, match="atlas threshold 'nope'"):
        headscope.run(model="minilm", atlas_thresholds=["nope=1"], out=None)
    with pytest.raises(ValueError, match="atlas_thresholds"):
        RunConfig(atlas_thresholds=["prev=high"])
    assert main(["run", "--atlas-threshold", "nope=1", "--out", str(tmp_path / "o"), "--quiet"]) != 0
    assert not (tmp_path / "o" / "run.json").exists()


def test_minilm_run_labels_l0h2_previous_token(minilm: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = headscope.run(model=minilm, analyses=["surface"], max_segments=50, out=str(out), quiet=True,
                           report=False, atlas_thresholds=["entropy=4"])
    atlas = result.tables["atlas"]
    row = atlas[(atlas["head_name"] == "L0H2") & (atlas["group"] == "previous-token")]
    assert len(row) == 1 and row["rank"].iloc[0] == "1/72" and row["value"].iloc[0] > 0.9
    assert set(atlas[["layer", "head"]].itertuples(index=False)) == set(result.heads[["layer", "head"]]
                                                                      .itertuples(index=False))
    written = pd.read_csv(out / "atlas.csv")
    assert len(written) == len(atlas)
    run = json.loads((out / "run.json").read_text())
    assert "atlas.csv" in run["outputs"]
    assert run["atlas"]["labels"]["previous-token"] >= 1
    assert run["atlas"]["thresholds"]["entropy"] == 4.0
    assert run["atlas"]["unlabelled"] == int((atlas["group"] == "unlabelled").sum())


def test_report_and_compare_read_a_run_with_its_atlas(tiny_bert: Path, text_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    headscope.run(model=str(tiny_bert), text=[str(text_file)], analyses=["surface", "distance"], out=str(out),
                  quiet=True, max_length=32)
    assert (out / "atlas.csv").is_file() and (out / "report" / "index.html").is_file()
    assert main(["report", str(out)]) == 0
    assert "atlas" in headscope.RunResult.load(out).tables
    assert main(["compare", str(out), str(out), "--out", str(tmp_path / "cmp")]) == 0


def test_matters_needs_the_interval_of_the_ablation_effect_above_zero() -> None:
    heads = pd.DataFrame({"layer": [0, 0, 1], "head": [0, 1, 0], "effect": [0.5, 0.4, -0.1],
                          "effect_low": [0.2, -0.05, -0.3], "effect_high": [0.8, 0.9, 0.1],
                          "effect_atp": [0.4, 0.1, 0.0]})
    run = {"analyses": {"head_effects": {"ablation": "mean", "loss": "lm_loss",
                                         "bootstrap": {"rests_on": "95% percentile bootstrap over 12 sequences"}}}}
    atlas = build_atlas(heads, {}, run)
    matters = atlas[atlas["group"] == "matters"]
    # L0H1 has the second-largest effect but its interval reaches below 0: no label, as L1H0's
    assert matters["head_name"].tolist() == ["L0H0"]
    row = matters.iloc[0]
    assert row["rank"] == "1/3" and row["value"] == 0.5
    assert "[0.2, 0.8]" in row["evidence"] and "12 sequences" in row["sample"]
    assert set(atlas[atlas["group"] == "unlabelled"]["head_name"]) == {"L0H1", "L1H0"}


def test_a_decoders_cls_is_its_first_token_sink_under_the_decoder_minimum() -> None:
    """A decoder LM has no [CLS]: its surface ``cls`` (attention to the BOS at position 0) labels the
    first-token sink, on at least decoder_min_n sequences, and only when decoder_heads' tested label is absent."""
    heads = two_by_two(cls=[0.9, 0.1, 0.7, 0.6])
    decoder = {"model": {"is_causal": True}}
    atlas = build_atlas(heads, {}, run_info(**decoder))  # 40 sequences >= the default 20
    assert "cls-sink" not in set(atlas["group"])
    assert labels(atlas, "L0H0") == ["first-token-sink"] and labels(atlas, "L1H0") == ["first-token-sink"]
    assert labels(atlas, "L1H1") == ["unlabelled"]  # 0.6 is not above 0.6
    rule = atlas.loc[atlas["group"] == "first-token-sink", "rule"].iloc[0]
    assert "BOS" in rule and "[CLS]" not in rule and "n >= 20" in rule
    # Fewer sequences than decoder_min_n (the default 20, or the run's own): no label.
    few = run_info(**decoder)
    few["analyses"]["surface"]["sequences"]["cls"] = 12
    assert set(build_atlas(heads, {}, few)["group"]) == {"unlabelled"}
    own = run_info(**decoder, analysis_options={"decoder_heads": {"decoder_min_n": 50}})
    assert set(build_atlas(heads, {}, own)["group"]) == {"unlabelled"}
    # decoder_heads ran: its tested sink label is the only one (L1H0's cls 0.7 gives none of its own).
    tested = two_by_two(cls=[0.9, 0.1, 0.7, 0.6], sink_first=[0.9, 0.1, 0.2, 0.1])
    both = build_atlas(tested, {}, run_info(**decoder, analyses={
        "surface": {"sequences": {"cls": 40}}, "decoder_heads": {"sequences": 40, "min_n": 20}}))
    assert both.loc[both["group"] == "first-token-sink", "statistic"].tolist() == ["sink_first"]
    # An encoder keeps Clark et al.'s cls-sink.
    assert labels(build_atlas(heads, {}, run_info()), "L0H0") == ["cls-sink"]


def test_the_atlas_default_decoder_minimum_is_decoder_heads_own() -> None:
    from headscope.analyses.decoder_heads import MIN_N, DecoderHeadsOptions
    from headscope.analyses.labels.decoder_heads import DECODER_MIN_N

    assert DECODER_MIN_N == MIN_N == DecoderHeadsOptions().decoder_min_n
