"""Attention-based probing classifiers: feature extraction, ROOT alignment, planted heads, baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from contexts import analysis_context
from headscope.analyses.probe import (
    AttentionProbe,
    AttnProbe,
    DistanceProbe,
    FeatureStore,
    ProbeOptions,
    ProbeSentences,
    masked_scores,
    pad_batch,
    right_branching,
    sentence_features,
    train_probe,
    uas,
)
from headscope.corpus.types import Sentence
from headscope.corpus.vectors import WordVectors
from headscope.engine.batch import collate
from headscope.model.encode import Example
from headscope.runner.feed import feed_attention
from reference import word_attention_reference

SMALL_TREEBANK = """# sent_id = a
1	the	the	DET	_	_	2	det	_	_
2	dog	dog	NOUN	_	_	3	nsubj	_	_
3	saw	see	VERB	_	_	0	root	_	_
4	the	the	DET	_	_	5	det	_	_
5	cat	cat	NOUN	_	_	3	obj	_	_
6	.	.	PUNCT	_	_	3	punct	_	_

# sent_id = b
1	a	a	DET	_	_	2	det	_	_
2	man	man	NOUN	_	_	3	nsubj	_	_
3	ran	run	VERB	_	_	0	root	_	_
4	.	.	PUNCT	_	_	3	punct	_	_

"""


def random_tree(rng: np.random.Generator, n: int) -> np.ndarray:
    order = rng.permutation(n) + 1
    heads = np.zeros(n, dtype=np.int64)
    for k in range(1, n):
        heads[order[k] - 1] = order[rng.integers(0, k)]
    return heads


def planted(seed: int, count: int, n_features: int = 6, planted_feature: int = 2, noise: float = 0.3
            ) -> ProbeSentences:
    """Random trees; feature ``planted_feature`` has word j attend to its gold head (ROOT = candidate 0),
    every other feature is noise."""
    rng = np.random.default_rng(seed)
    data = ProbeSentences(FeatureStore(n_features, 1 << 30))
    for i in range(count):
        n = int(rng.integers(3, 12))
        heads = random_tree(rng, n)
        f = rng.random((n_features, n + 1, n + 1)) * noise
        f[planted_feature, np.arange(1, n + 1), heads] += 1.0
        f /= f.sum(-1, keepdims=True)
        data.add(f, [f"w{h}" for h in heads], heads, np.zeros(n, dtype=bool), (i, 0))
    return data


def test_attn_probe_learns_a_planted_head() -> None:
    train, evaluate = planted(0, 60), planted(1, 30)
    model = AttnProbe(6)
    losses = train_probe(model, train, None, True, epochs=3, lr=0.05, batch_sentences=1, seed=0)
    assert losses[-1] < losses[0]
    score, n = uas(lambda b: masked_scores(model(b), b["valid"]).argmax(-1), evaluate, None, True, 8)
    baseline, _ = uas(lambda b: right_branching(b["heads"]), evaluate, None, False, 8)
    assert n == sum(len(h) for h in evaluate.heads)
    assert score > 0.95 > baseline
    # The planted feature carries the largest dependent->candidate weight.
    assert int(model.w.argmax()) == 2


def test_root_is_candidate_zero() -> None:
    """If ROOT and the words were misaligned by one, the root word could not be found from feature 0."""
    data = planted(3, 40)
    model = AttnProbe(6)
    train_probe(model, data, None, True, epochs=2, lr=0.05, batch_sentences=4, seed=0)
    batch = pad_batch(data, np.arange(len(data)), None, True)
    pred = masked_scores(model(batch), batch["valid"]).argmax(-1)
    roots = batch["heads"] == 0
    assert bool((pred[roots] == 0).all())


class TinyVectors(WordVectors):
    """A 4-d vector table for tests (no GloVe download or load)."""


def tiny_vectors(words: list[str], dim: int = 4, seed: int = 0) -> WordVectors:
    rng = np.random.default_rng(seed)
    return TinyVectors(vectors=rng.normal(size=(len(words), dim)).astype(np.float32),
                       index={w: i for i, w in enumerate(words)}, lowercase=True)


def test_requires_names_the_package_the_corpus_loads_glove_from() -> None:
    # The probe imports no corpus module at run time: it names the package itself for the preflight.
    from headscope.analyses import probe
    from headscope.corpus.vectors import GLOVE_PACKAGE

    assert probe.GLOVE_PACKAGE == GLOVE_PACKAGE
    assert AttentionProbe(ProbeOptions()).requires() == (GLOVE_PACKAGE,)
    assert AttentionProbe(ProbeOptions(probe_variants="attn,right_branching")).requires() == ()


def test_attn_glove_and_distance_probes_learn() -> None:
    # Attn+GloVe on the planted head; Distances+GloVe on a "head = next word" treebank.
    train, evaluate = planted(4, 60), planted(5, 30)
    vectors = tiny_vectors([f"w{k}" for k in range(12)])
    model = AttnProbe(6, vectors.dim)
    train_probe(model, train, vectors, True, epochs=3, lr=0.02, batch_sentences=1, seed=0)
    score, _ = uas(lambda b: masked_scores(model(b), b["valid"]).argmax(-1), evaluate, vectors, True, 8)
    assert score > 0.9

    def chain(count: int) -> ProbeSentences:
        data = ProbeSentences(FeatureStore(1, 1 << 30))
        for i in range(count):
            n = 3 + i % 6
            heads = np.append(np.arange(2, n + 1), 0)
            data.add(np.zeros((1, n + 1, n + 1)), ["w0"] * n, heads, np.zeros(n, bool), (i, 0))
        return data

    model_d = DistanceProbe(vectors.dim, hidden=16)
    train_probe(model_d, chain(40), vectors, False, epochs=3, lr=0.02, batch_sentences=1, seed=0)
    score_d, _ = uas(lambda b: masked_scores(model_d(b), b["valid"]).argmax(-1), chain(12), vectors, False, 4)
    score_rb, _ = uas(lambda b: right_branching(b["heads"]), chain(12), None, False, 4)
    assert score_rb == 1.0  # the treebank is right-branching by construction
    assert score_d > 0.9


def test_right_branching_and_punctuation_excluded_by_hand() -> None:
    data = ProbeSentences(FeatureStore(1, 1 << 30))
    # heads: w1->w2 (right), w2->ROOT (wrong: rb says w3), w3->w2 (wrong: rb says ROOT), punct w3 ignored.
    data.add(np.zeros((1, 4, 4)), ["a", "b", "c"], np.array([2, 0, 2]), np.array([False, False, False]), (0, 0))
    pred = right_branching(torch.tensor([[-1, 2, 0, 2]]))
    assert pred[0, 1:].tolist() == [2, 3, 0]
    score, n = uas(lambda b: right_branching(b["heads"]), data, None, False, 1)
    assert (score, n) == (1 / 3, 3)
    data.punct[0][:] = [False, True, True]
    assert uas(lambda b: right_branching(b["heads"]), data, None, False, 1) == (1.0, 1)


def test_feature_store_spills_to_a_memory_map_and_reads_back_exactly() -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.random((3, m, m)).astype(np.float16) for m in (2, 5, 3, 7)]
    small, spilling = FeatureStore(3, 1 << 30), FeatureStore(3, 100)
    for a in arrays:
        small.append(a)
        spilling.append(a)
    assert spilling.memory_mapped and not small.memory_mapped
    for i, a in enumerate(arrays):
        assert np.array_equal(small[i], a) and np.array_equal(spilling[i], a)
    spilling.close()


def test_sentence_features_put_the_cls_unit_at_root() -> None:
    w = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(1, 2, 5, 5)  # [layer, head, unit, unit]
    f = sentence_features(w, torch.tensor([0, 2, 3]))
    assert f.shape == (2, 3, 3)
    assert f[1, 0, 2].item() == w[0, 1, 0, 3].item()  # ROOT ([CLS]) -> second word
    assert f[0, 1, 0].item() == w[0, 0, 2, 0].item()  # first word -> ROOT
    none = sentence_features(w, torch.tensor([-1, 2, 3]))
    assert none[:, 0].abs().sum() == 0 and none[:, :, 0].abs().sum() == 0
    assert torch.equal(none[:, 1:, 1:], f[:, 1:, 1:])


def make_example(index: int, n: int, pieces: list[int]) -> Example:
    unit_of_piece = [0] + [k + 1 for k in range(n) for _ in range(pieces[k])] + [n + 1]
    seq = len(unit_of_piece)
    heads = [0] + [1] * (n - 1)
    sentence = Sentence(words=[f"w{k}" for k in range(n)], file="tb", line=1, heads=heads,
                        deprels=["root"] + ["dep"] * (n - 1), upos=["NOUN"] * n)
    is_cls = np.zeros(seq, bool)
    is_cls[0] = True
    is_sep = np.zeros(seq, bool)
    is_sep[-1] = True
    return Example(index=index, kind="sentence", input_ids=np.arange(seq), token_type_ids=None,
                   segment=np.zeros(seq, np.int8), is_cls=is_cls, is_sep=is_sep, is_punct=np.zeros(seq, bool),
                   unit_of_piece=np.asarray(unit_of_piece), units=["[CLS]", *sentence.words, "[SEP]"],
                   word_units=np.arange(1, n + 1), sentences=[sentence], word_offsets=[0])


def test_features_do_not_depend_on_batching_or_padding() -> None:
    rng = np.random.default_rng(0)
    examples = [make_example(i, int(n), list(rng.integers(1, 3, size=int(n)))) for i, n in
                enumerate(rng.integers(2, 6, size=6))]
    maps = []
    for ex in examples:
        a = np.exp(rng.normal(size=(1, 2, ex.length, ex.length)))
        maps.append(a / a.sum(-1, keepdims=True))

    def collect(batch_size: int, part: slice = slice(None)) -> AttentionProbe:
        probe = AttentionProbe(ProbeOptions(probe_eval_fraction=0.0, probe_memory_mb=0))
        probe.start(analysis_context(1, 2))
        chosen = examples[part]
        for s in range(0, len(chosen), batch_size):
            exs = chosen[s:s + batch_size]
            n = max(ex.length for ex in exs)
            attn = torch.zeros(len(exs), 1, 2, n, n)
            for r, ex in enumerate(exs):
                attn[r, :, :, :ex.length, :ex.length] = torch.tensor(maps[ex.index], dtype=torch.float32)
            feed_attention([probe], collate(exs, 0), attn)
        return probe

    one = collect(1).data_[0]
    four = collect(4).data_[0]
    merged = collect(4, slice(0, 2)).merge(collect(3, slice(2, None))).data_[0]
    assert len(one) == len(four) == len(merged) == len(examples)
    assert one.features.memory_mapped  # probe_memory_mb=0: everything spilled to the temporary file
    for i in range(len(examples)):
        a = np.asarray(one.features[one.order()[i]], np.float32)
        for other in (four, merged):
            b = np.asarray(other.features[other.order()[i]], np.float32)
            assert np.allclose(a, b, atol=1e-3)
            assert np.array_equal(one.heads[one.order()[i]], other.heads[other.order()[i]])
        # A word's row holds its attention to ROOT ([CLS]) and the words: at most 1 ([SEP] gets the rest).
        assert (a[:, 1:].sum(-1) <= 1.001).all()


def test_features_of_every_layer_whatever_the_blocks_of_query_rows() -> None:
    # Two layers x two heads: feature layer * 2 + head is that head's word-level map at ROOT ([CLS]) and the
    # words, the same whether the layers come whole or in blocks of 1 or 3 query rows.
    rng = np.random.default_rng(1)
    examples = [make_example(i, int(n), list(rng.integers(1, 3, size=int(n)))) for i, n in
                enumerate(rng.integers(2, 6, size=5))]
    maps = []
    for ex in examples:
        a = np.exp(rng.normal(size=(2, 2, ex.length, ex.length)) * 2)
        maps.append(a / a.sum(-1, keepdims=True))

    def collect(block_rows: int | None, batch_size: int) -> ProbeSentences:
        probe = AttentionProbe(ProbeOptions(probe_eval_fraction=0.0))
        probe.start(analysis_context(2, 2))
        for s in range(0, len(examples), batch_size):
            exs = examples[s:s + batch_size]
            n = max(ex.length for ex in exs)
            attn = torch.zeros(len(exs), 2, 2, n, n)
            for r, ex in enumerate(exs):
                attn[r, :, :, :ex.length, :ex.length] = torch.tensor(maps[ex.index], dtype=torch.float32)
            feed_attention([probe], collate(exs, 0), attn, block_rows=block_rows)
        return probe.data_[0]

    whole = collect(None, 3)
    assert [k for k, _ in whole.keys] == [0, 1, 2, 3, 4]  # sentences stored in batch order
    for i, ex in enumerate(examples):
        groups = [list(np.flatnonzero(ex.unit_of_piece == u)) for u in range(ex.n_units)]
        candidates = [0, *ex.word_units.tolist()]  # ROOT is the [CLS] unit
        f = np.asarray(whole.features[i], np.float32)
        assert f.shape == (4, len(candidates), len(candidates))
        for layer in range(2):
            for head in range(2):
                ref = word_attention_reference(maps[i][layer, head], groups)[np.ix_(candidates, candidates)]
                assert np.allclose(f[layer * 2 + head], ref, atol=1e-3)
    for block_rows in (1, 3):
        for batch_size in (1, 3):
            blocked = collect(block_rows, batch_size)
            assert blocked.keys == whole.keys
            for i in range(len(examples)):
                a, b = np.asarray(whole.features[i], np.float32), np.asarray(blocked.features[i], np.float32)
                assert np.allclose(a, b, atol=1e-3, rtol=0), (block_rows, batch_size)


def test_run_on_a_tiny_model_writes_probe_json(tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    import headscope
    from headscope.analyses import probe as probe_module

    vectors = tiny_vectors(["the", "dog", "saw", "cat", ".", "a", "man", "ran"])
    monkeypatch.setattr("headscope.corpus.vectors.load_glove", lambda: vectors)
    assert probe_module.VARIANTS
    train = tmp_path / "train.conllu"
    dev = tmp_path / "dev.conllu"
    train.write_text(SMALL_TREEBANK * 3, encoding="utf-8")
    dev.write_text(SMALL_TREEBANK, encoding="utf-8")
    result = headscope.run(model=str(tiny_bert), treebank=[str(train), str(dev)], analyses=["probe"],
                           probe_epochs=1, out=str(tmp_path / "out"), quiet=True)
    doc = result.documents["probe"]
    assert doc["train"] == {"sentences": 6, "words": 30}
    assert doc["eval"]["sentences"] == 2 and doc["eval"]["scored_words"] == 8
    assert set(doc["uas"]) == {"right_branching", "distances_glove", "attn", "attn_glove"}
    # Right-branching by hand on the dev file (punctuation excluded): the->dog, dog->saw, the->cat right in
    # a (saw, cat wrong); a->man, man->ran right in b (ran wrong): 5 of 8.
    assert doc["uas"]["right_branching"] == pytest.approx(5 / 8)
    assert (tmp_path / "out" / "probe.json").is_file()
