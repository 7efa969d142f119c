"""What analyses declare for others to read (issue #38): pruning's orders and seed claim and the head atlas take
an analysis's ranking, behaviour and atlas labels from its declaration, not from its name; pruning's
measurements are declared state that a checkpoint restores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import headscope
from headscope.analyses import REGISTRY
from headscope.analyses.base import Analysis, AnalysisResult
from headscope.analyses.findings import AtlasLabels, AtlasRows, Behaviour, Ranking
from headscope.analyses.pruning import HeadPruning, analysis_rankings, behaviour_by_analysis
from headscope.analyses.registry import finalize_order
from headscope.atlas import build_atlas, parse_thresholds, thresholds_for


def _label_wide(atlas: AtlasRows) -> None:
    """A made-up rule: ``wide`` for every head whose ``width`` is above the threshold ``wide_min``."""
    if "width" in atlas.heads.columns:
        atlas.column("width", "wide", atlas.thresholds["wide_min"], f"width > {atlas.thresholds['wide_min']:g}", "-")


class Widths(Analysis):
    """A made-up analysis declaring all three: never registered for good (the tests put it in the registry)."""

    name = "widths"
    report_order = 999
    ranking = Ranking("width", order=25)
    behaviour = Behaviour(where=lambda heads: heads["width"] > 0.5, order=15)
    atlas_labels = AtlasLabels(groups=("wide",), rows=_label_wide, thresholds={"wide_min": 0.6}, order=85)

    def finalize(self, ctx: Any, results: dict[str, AnalysisResult]) -> AnalysisResult:
        raise NotImplementedError


@pytest.fixture
def widths(monkeypatch: pytest.MonkeyPatch) -> AnalysisResult:
    monkeypatch.setitem(REGISTRY, "widths", Widths)
    heads = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "width": [0.9, np.nan, 0.2, 0.7]})
    return AnalysisResult("widths", heads=heads)


def test_pruning_ranks_and_tests_a_declared_analysis_it_does_not_name(widths: AnalysisResult) -> None:
    syntax = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "syntax_best_accuracy": [0.5, 0.9, 0.1, 0.3]})
    results = {"widths": widths, "syntax": AnalysisResult("syntax", heads=syntax)}
    rankings = analysis_rankings(results, 2, 2)
    assert list(rankings) == ["syntax", "widths"]  # in the declarations' order (syntax 20, widths 25)
    np.testing.assert_array_equal(rankings["widths"], [0.9, -np.inf, 0.2, 0.7])  # no score: pruned first
    assert behaviour_by_analysis({"widths": widths}) == {"widths": {(0, 0), (1, 1)}}
    # Survivors L0H0 and L1H0: one of them wide, against one (L1H1) of the pruned.
    claim = HeadPruning._claim({"widths": widths}, survivors=[0, 2], n_heads=2, total=4)
    assert (claim["survivors_with_behaviour"], claim["pruned_with_behaviour"]) == (1, 1)
    assert claim["absent"] == ["roles", "distance", "syntax", "coref"]
    assert "widths" in HeadPruning._claim({}, [0], 2, 4)["note"]


def test_pruning_finalizes_after_every_declaring_analysis(widths: AnalysisResult) -> None:
    assert finalize_order(["pruning", "widths", "surface"]) == ["widths", "pruning", "surface"]
    assert finalize_order(["surface", "pruning"]) == ["surface", "pruning"]


def test_the_atlas_runs_a_declared_rule_with_its_threshold(widths: AnalysisResult) -> None:
    assert widths.heads is not None
    heads = widths.heads.assign(importance=[0.1, 0.2, 0.3, 0.9])
    run = {"config": {"atlas_thresholds": ["wide_min=0.8"]}}
    assert thresholds_for(run)["wide_min"] == 0.8 and parse_thresholds(["wide_min=0.1"]) == {"wide_min": 0.1}
    atlas = build_atlas(heads, {}, run)
    wide = atlas[atlas["group"] == "wide"]
    assert wide["head_name"].tolist() == ["L0H0"] and wide["rule"].iloc[0] == "width > 0.8"
    assert wide["rank"].iloc[0] == "1/3"  # among the three heads with a width
    # Its groups come where its order puts them: after pattern: (80), before important (90).
    assert atlas.loc[atlas["head_name"] == "L1H1", "group"].tolist() == ["important"]
    both = build_atlas(heads.assign(width=[0.9, 0.0, 0.0, 0.9]), {}, {})
    assert both.loc[both["head_name"] == "L1H1", "group"].tolist() == ["wide", "important"]


def test_an_undeclared_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="'wide_min' is not one of"):
        parse_thresholds(["wide_min=0.1"])


def test_pruning_finalizes_from_its_checkpointed_state_alone(tiny_bert_mlm: Path, text_file: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The state a checkpoint keeps (state_dict, packed as arrays + JSON and read back) gives the same curve
    and summary as the analysis that ran the passes."""
    from headscope.engine.state import pack, unpack

    results: dict[str, AnalysisResult] = {}
    original = HeadPruning.finalize

    def finalize(self: HeadPruning, ctx: Any, earlier: dict[str, AnalysisResult]) -> AnalysisResult:
        states, _ = unpack(pack({"pruning": self.state_dict()}))
        fresh = HeadPruning(self.options)
        fresh.start(ctx)
        assert not fresh.rows_ and fresh.counts_["held_sequences"] == 0
        fresh.load_state_dict(*states["pruning"])
        results["restored"] = original(fresh, ctx, earlier)
        results["ran"] = original(self, ctx, earlier)
        return results["ran"]

    monkeypatch.setattr(HeadPruning, "finalize", finalize)
    headscope.run(model=str(tiny_bert_mlm), text=[str(text_file)], analyses=["pruning"], out=None, quiet=True,
                  max_length=64, pruning_step=0.5, pruning_seeds=1, pruning_sequences=2, pruning_bootstrap=20)
    ran, restored = results["ran"], results["restored"]
    table = ran.tables["pruning"]
    pd.testing.assert_frame_equal(restored.tables["pruning"], table)
    assert restored.summary == ran.summary
    assert table["seed"].dtype == "Int64" and list(table["order"].unique()) == ["importance", "random"]
    assert table.loc[table["order"] == "importance", "seed"].isna().all()  # saved as None, read back as NA
    assert table.loc[table["order"] == "random", "seed"].eq(0).all()


def test_the_packaged_analyses_declare_what_pruning_and_the_atlas_read() -> None:
    """The declarations of the packaged analyses, in their order (what pruning.csv, the seed claim and the atlas
    list); an analysis whose declaration goes missing drops out of all three silently, so they are named here."""
    from headscope.analyses.findings import declared_atlas_labels, declared_behaviours, declared_rankings

    assert [name for name, _ in declared_rankings()] == ["roles", "syntax", "coref", "head_effects"]
    assert [name for name, r in declared_rankings() if r.measured] == ["head_effects"]
    assert [name for name, _ in declared_behaviours()] == ["roles", "distance", "syntax", "coref"]
    assert [name for name, _ in declared_atlas_labels()] == [
        "surface", "decoder_heads", "retrieval", "span", "roles", "syntax", "coref", "distance", "importance",
        "head_effects"]


def test_no_module_is_shadowed_by_a_package_of_its_name() -> None:
    """``x.py`` beside a package ``x/``: Python imports the package, and the module's code is dead."""
    src = Path(__file__).resolve().parents[1] / "src" / "headscope"
    shadowed = sorted(str(p.relative_to(src)) for p in src.rglob("*.py")
                      if (p.with_suffix("") / "__init__.py").is_file())
    assert not shadowed, f"modules shadowed by a package of the same name: {shadowed}"
