"""Declared state (``Analysis.add_state``): merge, reset and checkpoints follow from the declarations; observers
declare what they read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from headscope.analyses.base import Analysis, AnalysisResult
from headscope.analyses.stats import mean_or_nan, means_or_nan
from headscope.engine.state import Keyed, Serializer, StateError, pack, reduce_state, unpack


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
    with pytest.raises(StateError, match="must be one of"):
        a.add_state("x_", 0, reduce=None)  # type: ignore[arg-type]  # no analysis merges by hand any more
    with pytest.raises(StateError, match="not a state declared before it"):
        a.add_state("x_", np.zeros((2, 0)), reduce=Keyed("labels_", axis=1))  # its keys are not declared
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


def test_no_analysis_writes_its_own_merge_or_state_dict() -> None:
    """Every analysis's merge and checkpoint come from its declared state (reductions, keys, serializers)."""
    from headscope.analyses import REGISTRY

    for method in ("merge", "state_dict", "load_state_dict"):
        own = {name for name, cls in REGISTRY.items() if getattr(cls, method) is not getattr(Analysis, method)}
        assert own == set(), method
    assert not any(hasattr(cls, "uses_words") for cls in REGISTRY.values())  # flags are reads_pieces/reads_words


class Labelled(Analysis):
    """Counts indexed by labels in the order a shard meets them, as syntax's by relation."""

    name = "labelled"

    def start(self, ctx: Any) -> None:
        self.add_state("labels_", [], reduce="keys")
        self.add_state("hits_", torch.zeros(2, 0, dtype=torch.int64), reduce=Keyed("labels_", axis=1))
        self.add_state("seen_", np.zeros(0, dtype=np.int64), reduce=Keyed("labels_", axis=0))
        self.add_state("rows_", 0)

    def add(self, labels: list[str], split: int) -> None:
        ids = self.grow_keys("labels_", labels)
        self.hits_[split].index_add_(0, torch.from_numpy(ids), torch.ones(len(ids), dtype=torch.int64))
        np.add.at(self.seen_, ids, 1)
        self.rows_ += 1

    def table(self) -> dict[str, tuple[list[int], int]]:
        return {label: (self.hits_[:, k].tolist(), int(self.seen_[k])) for k, label in enumerate(self.labels_)}

    def finalize(self, ctx: Any, results: dict[str, AnalysisResult]) -> AnalysisResult:
        return AnalysisResult(self.name)


def _labelled(*parts: tuple[list[str], int]) -> Labelled:
    a = Labelled()
    a.start(None)
    for labels, split in parts:
        a.add(labels, split)
    return a


def test_keyed_state_merges_by_key_whatever_order_the_shards_met_the_keys() -> None:
    first = _labelled((["obj", "nsubj", "obj"], 0))
    second = _labelled((["amod"], 1), (["nsubj", "amod", "obj"], 1))
    assert first.labels_ == ["nsubj", "obj"] and second.labels_ == ["amod", "nsubj", "obj"]
    merged = first.merge(second)
    # By hand: obj twice in split 0 and once in split 1; nsubj once in each; amod twice in split 1.
    expected = {"obj": ([2, 1], 3), "nsubj": ([1, 1], 2), "amod": ([0, 2], 2)}
    assert merged.table() == expected and merged.rows_ == 3
    assert merged.labels_ == ["nsubj", "obj", "amod"]  # keys new here appended, the arrays grown to match
    whole = _labelled((["obj", "nsubj", "obj"], 0), (["amod"], 1), (["nsubj", "amod", "obj"], 1))
    assert whole.table() == expected
    # The other order gives the same counts by key (and a checkpoint of the merge loads back).
    other = _labelled((["amod"], 1), (["nsubj", "amod", "obj"], 1)).merge(_labelled((["obj", "nsubj", "obj"], 0)))
    assert other.table() == expected
    states, _ = unpack(pack({"labelled": merged.state_dict()}))
    loaded = _labelled()
    loaded.load_state_dict(*states["labelled"])
    assert loaded.table() == expected and loaded.labels_ == merged.labels_


@dataclass
class Record:
    name: str
    values: np.ndarray


def _save_records(records: list[Record]) -> tuple[dict[str, np.ndarray], Any]:
    return {f"values.{k}": r.values for k, r in enumerate(records)}, [r.name for r in records]


def _load_records(arrays: dict[str, np.ndarray], meta: Any, current: list[Record]) -> list[Record]:
    return [*current, *(Record(name, arrays[f"values.{k}"]) for k, name in enumerate(meta))]


class Keeper(Analysis):
    """A state of objects, saved by its declared serializer."""

    name = "keeper"

    def start(self, ctx: Any) -> None:
        self.add_state("records_", [], reduce="cat", serializer=Serializer(_save_records, _load_records))
        self.add_state("n_", 0)

    def finalize(self, ctx: Any, results: dict[str, AnalysisResult]) -> AnalysisResult:
        return AnalysisResult(self.name)


def test_a_declared_serializer_round_trips() -> None:
    a = Keeper()
    a.start(None)
    a.records_ = [Record("x", np.arange(3.0)), Record("y", np.ones((2, 2), dtype=np.float16))]
    a.n_ = 2
    arrays, meta = a.state_dict()
    assert sorted(arrays) == ["records_.values.0", "records_.values.1"]
    assert meta == {"records_": {"__serialized__": ["x", "y"]}, "n_": 2}
    states, _ = unpack(pack({"keeper": (arrays, meta)}))
    b = Keeper()
    b.start(None)
    b.load_state_dict(*states["keeper"])
    assert [r.name for r in b.records_] == ["x", "y"] and b.n_ == 2
    assert np.array_equal(b.records_[0].values, np.arange(3.0))
    assert b.records_[1].values.dtype == np.float16 and np.array_equal(b.records_[1].values, np.ones((2, 2)))


def test_only_declared_state_is_saved_and_loaded() -> None:
    a = Keeper()
    a.start(None)
    a.scratch_ = np.zeros(2)  # ends in "_" but is not declared: not state
    arrays, meta = a.state_dict()
    assert "scratch_" not in arrays and "scratch_" not in meta
    b = Keeper()
    b.start(None)
    with pytest.raises(StateError, match="not declared: scratch_"):
        b.load_state_dict({"scratch_": np.zeros(2)}, meta)
    with pytest.raises(StateError, match="missing: n_"):
        b.load_state_dict(arrays, {"records_": meta["records_"]})
