"""Declared state (``Analysis.add_state``): merge, reset and checkpoints follow from the declarations; observers
declare what they read."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from headscope.analyses.base import Analysis, AnalysisResult
from headscope.analyses.stats import mean_or_nan, means_or_nan
from headscope.engine.state import StateError, pack, reduce_state, unpack


class Counter(Analysis):
    """Every kind of declared state, one line each."""

    name = "counter"
    reads_pieces = True

    def start(self, ctx: Any) -> None:
        self.add_state("sums_", torch.zeros(2, 3, dtype=torch.float64))
        self.add_state("peak_", np.zeros(2), reduce="max")
        self.add_state("low_", torch.full((2,), 9.0), reduce="min")
        self.add_state("rows_", {"all": 0, "pair": 0})
        self.add_state("by_key_", {"a": torch.zeros(2)})
        self.add_state("records_", [], reduce="cat")
        self.add_state("kept_", [], reduce=lambda mine, theirs: sorted([*mine, *theirs])[:2])

    def update(self, batch: Any, block: Any) -> None:
        pass

    def finalize(self, ctx: Any, results: dict[str, AnalysisResult]) -> AnalysisResult:
        return AnalysisResult(self.name)


def _shard(k: int) -> Counter:
    a = Counter()
    a.start(None)
    a.sums_ += k
    a.peak_[k % 2] = k
    a.low_[0] = k
    a.rows_["all"] += k
    a.by_key_["a"] += k
    a.by_key_[f"only{k}"] = torch.ones(2) * k
    a.records_.append({"k": k})
    a.kept_ += [10 - k, 20 + k]
    return a


def test_merge_follows_the_declared_reductions() -> None:
    merged = _shard(1).merge(_shard(2))
    assert torch.equal(merged.sums_, torch.full((2, 3), 3.0, dtype=torch.float64))
    assert merged.peak_.tolist() == [2.0, 1.0]
    assert merged.low_.tolist() == [1.0, 9.0]
    assert merged.rows_ == {"all": 3, "pair": 0}
    assert merged.by_key_["a"].tolist() == [3.0, 3.0] and set(merged.by_key_) == {"a", "only1", "only2"}
    assert merged.records_ == [{"k": 1}, {"k": 2}]
    assert merged.kept_ == [8, 9]


def test_reset_restores_the_defaults_and_state_dict_round_trips() -> None:
    a = _shard(3)
    states, _ = unpack(pack({"counter": a.state_dict()}))
    b = Counter()
    b.start(None)
    b.load_state_dict(*states["counter"])
    assert torch.equal(b.sums_, a.sums_) and b.rows_ == a.rows_ and b.records_ == a.records_
    assert set(b.by_key_) == {"a", "only3"}
    a.reset()
    assert float(a.sums_.sum()) == 0 and a.rows_ == {"all": 0, "pair": 0} and a.records_ == [] and a.kept_ == []
    assert set(a.by_key_) == {"a"}


def test_declarations_are_checked() -> None:
    a = Counter()
    with pytest.raises(StateError, match="must end in"):
        a.add_state("sums", 0)
    with pytest.raises(StateError, match="unknown reduction"):
        a.add_state("x_", 0, reduce="mean")  # type: ignore[arg-type]
    with pytest.raises(StateError, match="merge"):
        a.add_state("x_", 0, reduce=None)  # no merge() of its own to combine it
    with pytest.raises(StateError, match="cannot reduce"):
        reduce_state("cat", 1, 2)


def test_an_observer_declares_what_it_reads() -> None:
    with pytest.raises(TypeError, match="reads_pieces"):
        class Sneaky(Analysis):  # defining it is the test
            name = "sneaky"

            def start(self, ctx: Any) -> None: ...

            def update(self, batch: Any, block: Any) -> None: ...

            def finalize(self, ctx: Any, results: dict[str, AnalysisResult]) -> AnalysisResult:
                return AnalysisResult(self.name)


def test_mean_or_nan() -> None:
    total = torch.tensor([2.0, 3.0], dtype=torch.float64)
    assert torch.equal(mean_or_nan(total, 2), torch.tensor([1.0, 1.5], dtype=torch.float64))
    assert mean_or_nan(total, torch.tensor([0.0, 3.0], dtype=torch.float64)).isnan().tolist() == [True, False]
    assert np.isnan(mean_or_nan(np.ones(2), 0)).all()
    assert means_or_nan({"a": total}, {"a": 0})["a"].isnan().all()


def test_only_syntax_writes_its_own_merge() -> None:
    """Every analysis's merge comes from its declared state, but syntax's (relation-indexed arrays, aligned by
    name); a new override needs a reason written in it and a line here."""
    from headscope.analyses import REGISTRY

    own = {name for name, cls in REGISTRY.items() if cls.merge is not Analysis.merge}
    assert own == {"syntax"}
    assert not any(hasattr(cls, "uses_words") for cls in REGISTRY.values())  # flags are reads_pieces/reads_words
