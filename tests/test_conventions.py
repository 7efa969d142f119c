"""``--conventions``: headscope's definitions, Clark et al.'s released code and Pande et al.'s notebooks.

Hand-made maps with values worked out by hand under each convention; block-size invariance of the new code
paths; ``headscope compare`` refusing mixed conventions; and ``--conventions clark`` on the packaged MiniLM
over 100 EWT sentences against a plain transcription of Clark et al.'s notebook cells.
"""

from __future__ import annotations

import collections
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from contexts import analysis_context
from headscope.analyses.roles import HeadRoles, RolesOptions, first_occurrences, one_sided_tests
from headscope.analyses.similarity import HeadSimilarity, SimilarityOptions, clark_js_sum
from headscope.analyses.surface import SurfaceStatistics
from headscope.analyses.syntax import (
    CLARK_OFFSETS,
    DIRECTIONS,
    OFFSETS,
    SyntaxHeads,
    SyntaxOptions,
    best_heads,
    most_attended_words,
    word_unit_mask,
)
from headscope.comparison import MixedConventionsError, compare
from headscope.config import RunConfig
from headscope.corpus.types import Sentence
from headscope.engine.batch import collate
from headscope.engine.context import AnalysisContext
from headscope.engine.results import RunResult
from headscope.model.encode import Example
from headscope.runner.feed import feed_attention

EWT_DEV = "data/ud-english-ewt/en_ewt-ud-dev.conllu"


# ---------------------------------------------------------------------------------------------------------------
# Helpers: hand-built examples and contexts


def example(index: int, words: list[str], heads: list[int] | None = None, deprels: list[str] | None = None,
            pieces: dict[int, int] | None = None, pair_from: int | None = None) -> Example:
    """[CLS] w1 .. wn [SEP] (or [CLS] A [SEP] B [SEP] with B from word ``pair_from``), one piece per word but
    ``pieces[k]`` for word k; a piece's id is its string's, so repeated words share ids."""
    pieces = pieces or {}
    vocab: dict[str, int] = {"[CLS]": 0, "[SEP]": 1}
    strings, units, unit_of_piece, segment, is_cls, is_sep = ["[CLS]"], ["[CLS]"], [0], [0], [True], [False]
    word_units = []
    for k, w in enumerate(words):
        if pair_from is not None and k == pair_from:
            strings.append("[SEP]")
            units.append("[SEP]")
            unit_of_piece.append(len(units) - 1)
            segment.append(0)
            is_cls.append(False)
            is_sep.append(True)
        units.append(w)
        word_units.append(len(units) - 1)
        seg = int(pair_from is not None and k >= pair_from)
        for p in range(pieces.get(k, 1)):
            strings.append(w if p == 0 else f"##{w}{p}")
            unit_of_piece.append(len(units) - 1)
            segment.append(seg)
            is_cls.append(False)
            is_sep.append(False)
    strings.append("[SEP]")
    units.append("[SEP]")
    unit_of_piece.append(len(units) - 1)
    segment.append(int(pair_from is not None))
    is_cls.append(False)
    is_sep.append(True)
    ids = [vocab.setdefault(s, len(vocab)) for s in strings]
    sentence = Sentence(words=words, file="hand.conllu", line=index + 1, heads=heads, deprels=deprels)
    n = len(strings)
    return Example(index=index, kind="sentence" if pair_from is None else "segment",
                   input_ids=np.asarray(ids, np.int64), token_type_ids=None, segment=np.asarray(segment, np.int8),
                   is_cls=np.asarray(is_cls), is_sep=np.asarray(is_sep), is_punct=np.zeros(n, bool),
                   unit_of_piece=np.asarray(unit_of_piece, np.int64), units=units,
                   word_units=np.asarray(word_units, np.int64), sentences=[sentence], word_offsets=[0],
                   pieces=strings)


def context(conventions: str, n_layers: int = 1, n_heads: int = 1, **config: object) -> AnalysisContext:
    run = RunConfig(conventions=conventions, out=None, **config)
    return analysis_context(n_layers, n_heads, conventions=conventions, word_attention=run.word_attention,
                            treebank_input=run.resolved_treebank_input(), seed=run.seed)


def stacked(maps: list[np.ndarray]) -> torch.Tensor:
    """[batch, layer, head, n, n] from per-example maps of shape (n, n), (head, n, n) or (layer, head, n, n)."""
    maps = [m.reshape((1,) * (4 - m.ndim) + m.shape) for m in maps]
    n = max(m.shape[-1] for m in maps)
    out = torch.zeros(len(maps), *maps[0].shape[:2], n, n)
    for r, m in enumerate(maps):
        out[r, :, :, :m.shape[-1], :m.shape[-1]] = torch.as_tensor(m, dtype=torch.float32)
    return out


def fed(analysis: object, ctx: SimpleNamespace, examples: list[Example], maps: list[np.ndarray],
        block_rows: int | None = None, batch_size: int | None = None) -> object:
    analysis.start(ctx)
    size = batch_size or len(examples)
    for k in range(0, len(examples), size):
        feed_attention([analysis], collate(examples[k:k + size], 0), stacked(maps[k:k + size]),
                       block_rows=block_rows)
    return analysis


def f16(x: float) -> float:
    """One float16 operation's result, as NumPy rounds it."""
    return float(np.float16(x))


# ---------------------------------------------------------------------------------------------------------------
# Surface statistics


def sep_prev_map() -> np.ndarray:
    """[CLS] the dog . [SEP]: the [CLS] row on itself; every other row half on [SEP], half on the previous token."""
    a = np.zeros((5, 5))
    a[0, 0] = 1.0
    for i in range(1, 5):
        a[i, 4] += 0.5
        a[i, i - 1] += 0.5
    return a


@pytest.mark.parametrize("block_rows", [None, 2])
def test_surface_hand_computed_under_both_conventions(block_rows: int | None) -> None:
    ex = example(0, ["the", "dog", "."])
    ex.is_punct[3] = True
    means = {}
    for conventions in ("headscope", "clark"):
        analysis = fed(SurfaceStatistics(), context(conventions), [ex], [sep_prev_map()], block_rows)
        means[conventions] = {k: float(v[0, 0]) for k, v in analysis.means().items()}
    ours, clark = means["headscope"], means["clark"]
    # prev/next: 4 x 0.5 and 0.5 (row 3's next token is the [SEP]) over n - 1 = 4 pairs here, over n = 5 there.
    assert ours["prev"] == pytest.approx(2.0 / 4) and clark["prev"] == pytest.approx(2.0 / 5)
    assert ours["next"] == pytest.approx(0.5 / 4) and clark["next"] == pytest.approx(0.5 / 5)
    # One [SEP] row (0.5 on itself) over the one [SEP] here, over Clark's assumed two there; rows 1-3 give 0.5
    # each to the [SEP], row 0 none: over the 4 other rows here, over n - 2 = 3 there.
    assert ours["sep_to_sep"] == pytest.approx(0.5) and clark["sep_to_sep"] == pytest.approx(0.25)
    assert ours["other_to_sep"] == pytest.approx(1.5 / 4) and clark["other_to_sep"] == pytest.approx(1.5 / 3)
    # Unchanged: attention to token classes and self (0.5, 0.5 and 1 are exact in float16).
    for key, value in (("cls", 1.5 / 5), ("sep", 2.0 / 5), ("punct", 0.5 / 5), ("self", 1.5 / 5)):
        assert ours[key] == pytest.approx(value) and clark[key] == pytest.approx(value)
    assert ours["entropy_uniform"] == clark["entropy_uniform"] == pytest.approx(math.log(5))
    # Entropy: rows 1-4 split 50/50, row 0 certain.
    assert ours["entropy"] == pytest.approx(4 * math.log(2) / 5) and ours["cls_entropy"] == 0.0
    # Clark: 0.9999 A + 0.0001 / 5 in float16 arithmetic. 0.9999 is 1.0 in float16 and 0.5 + 2e-5 rounds back
    # to 0.5, so only the zeros change (to s); each product and each row's sum is rounded to float16.
    s = f16(0.0001 / 5)
    zero_term = f16(s * f16(math.log(s)))
    half_term = f16(0.5 * f16(math.log(0.5)))
    split_row = -f16(2 * half_term + 3 * zero_term)  # rows 1-4
    cls_row = -f16(f16(1.0 * f16(math.log(1.0))) + 4 * zero_term)  # row 0: 1.0 stays 1.0, log 1 = 0
    assert clark["cls_entropy"] == cls_row
    assert clark["entropy"] == f16((4 * split_row + cls_row) / 5)  # the sequence's mean, rounded to float16
    smoothed = 0.9999 * sep_prev_map() + 0.0001 / 5
    plain = -(smoothed * np.log(smoothed)).sum(-1)
    assert clark["entropy"] == pytest.approx(plain.mean(), abs=5e-4)  # float16's precision at 0.55
    assert clark["entropy"] - ours["entropy"] == pytest.approx(6.6e-4, abs=1e-4)  # what the smoothing adds here


def test_clark_surface_rounds_maps_to_float16_and_is_block_invariant() -> None:
    rng = np.random.default_rng(5)
    examples, maps = [], []
    for k, n in enumerate((4, 9, 6, 12)):
        ex = example(k, [f"w{i}" for i in range(n - 2)])
        logits = rng.normal(size=(2, 3, n, n)) * 3
        maps.append(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))
        examples.append(ex)
    whole = fed(SurfaceStatistics(), context("clark", 2, 3), examples, maps).means()
    for block_rows, batch_size in ((1, 1), (3, 2), (5, 4)):
        blocked = fed(SurfaceStatistics(), context("clark", 2, 3), examples, maps, block_rows, batch_size).means()
        for key, value in whole.items():
            assert torch.allclose(value, blocked[key], rtol=0, atol=1e-7), (key, block_rows)  # float32 sums
        # The float16 entropies are rounded per row and per sequence, never per block: exactly the same.
        assert torch.equal(whole["entropy"], blocked["entropy"])
        assert torch.equal(whole["cls_entropy"], blocked["cls_entropy"])
    # self is a plain mean of float16-rounded diagonals.
    expected = np.mean([np.diagonal(m.astype(np.float16).astype(np.float64), axis1=-2, axis2=-1).mean(-1)
                        for m in maps], axis=0)
    assert np.allclose(whole["self"].numpy(), expected, atol=1e-7)


def test_clark_conventions_refuse_all_punctuation() -> None:
    with pytest.raises(ValueError, match="punctuation"):
        RunConfig(conventions="clark", punctuation="all")
    with pytest.raises(ValueError, match="conventions must be"):
        RunConfig(conventions="paper")


# ---------------------------------------------------------------------------------------------------------------
# Syntax


def possessive_example() -> tuple[Example, np.ndarray]:
    """John 's dog barked: nmod:poss, case, nsubj, root; one piece per word. Units: 0 [CLS], 1 John, 2 's,
    3 dog, 4 barked, 5 [SEP]. Head 0: John -> 's, 's -> dog, dog -> barked, barked -> [CLS]. Head 1: the same
    but John -> barked, the sentence's last word (the possessive rule's guard)."""
    ex = example(0, ["John", "'s", "dog", "barked"], [3, 1, 4, 0], ["nmod:poss", "case", "nsubj", "root"])
    maps = np.zeros((2, 6, 6))
    for h, john in enumerate((2, 4)):
        maps[h, 0, 0] = maps[h, 5, 5] = maps[h, 4, 0] = 1.0
        maps[h, 1, john] = maps[h, 2, 3] = maps[h, 3, 4] = 1.0
    return ex, maps


def split_example() -> tuple[Example, np.ndarray]:
    """dogs bark loudly (nsubj, root, advmod), loudly in two pieces: positions 0 [CLS], 1 dogs, 2 bark, 3-4
    loudly, 5 [SEP]. Its first piece attends 0.6 to dogs, its second all to bark: the mean of the rows picks
    bark (its head), the first row (Clark et al.'s code) dogs."""
    ex = example(1, ["dogs", "bark", "loudly"], [2, 0, 2], ["nsubj", "root", "advmod"], pieces={2: 2})
    m = np.zeros((6, 6))
    m[0, 0] = m[5, 5] = m[2, 0] = m[1, 2] = 1.0
    m[3, 1], m[3, 5] = 0.6, 0.4
    m[4, 2] = 1.0
    return ex, np.stack([m, m])


def syntax_counts(conventions: str, block_rows: int | None = None) -> tuple[dict, dict, SyntaxHeads]:
    (ex1, m1), (ex2, m2) = possessive_example(), split_example()
    analysis = fed(SyntaxHeads(SyntaxOptions(held_out_fraction=0.0)), context(conventions, 1, 2), [ex1, ex2],
                   [m1, m2], block_rows)
    relations, correct, total, offsets = analysis.counts()
    d = DIRECTIONS.index("dep->head")
    hits = {r: correct[0, d, i, 0].tolist() for i, r in enumerate(relations)}
    base = {r: offsets[0, i].tolist() for i, r in enumerate(relations)}
    return hits, {"total": dict(zip(relations, total[0].tolist(), strict=True)), "offsets": base}, analysis


@pytest.mark.parametrize("block_rows", [None, 1, 4])
def test_syntax_hand_computed_under_both_conventions(block_rows: int | None) -> None:
    hits, other, _ = syntax_counts("headscope", block_rows)
    # headscope: root arcs left out; John -> 's is wrong; loudly's mean row picks bark.
    assert other["total"] == {"advmod": 1, "case": 1, "nmod:poss": 1, "nsubj": 2, "all": 5}
    assert hits == {"advmod": [1, 1], "case": [0, 0], "nmod:poss": [0, 0], "nsubj": [2, 2], "all": [3, 3]}
    # Offsets -3..-1, +1..+3: John's head (dog) is +2, 's's (John) -1, dog's +1, dogs' +1, loudly's -1.
    assert other["offsets"]["nmod:poss"] == [0, 0, 0, 0, 1, 0]
    assert other["offsets"]["all"] == [0, 0, 2, 2, 1, 0]

    hits, other, analysis = syntax_counts("clark", block_rows)
    assert analysis.reads_pieces  # clark: the word maps are built from the piece maps
    # clark: root arcs are scored (never right for a head) and count in all.
    assert other["total"] == {"advmod": 1, "case": 1, "nmod:poss": 1, "nsubj": 2, "root": 2, "all": 7}
    # Head 0: John's own prediction ('s) is not the last word, so the prediction for 's (dog) is scored: right.
    # Head 1: John predicts barked, the last word: the rule does not fire, and barked is wrong. loudly: the
    # first piece's row picks dogs: wrong under both heads.
    assert hits == {"advmod": [0, 0], "case": [0, 0], "nmod:poss": [1, 0], "nsubj": [2, 2], "root": [0, 0],
                    "all": [3, 2]}
    # Offsets -3..2, predictions max(0, min(i + o + 1, n)) (1-based, 0 = ROOT). John (i = 0, the rule fires for
    # every offset): the prediction for 's is right when 2 + o = 3, o = +1. 's (i = 1): 2 + o = 1, o = -1.
    # dog (i = 2): 3 + o = 4 at o = +1, and o = +2 clips to 4 too. barked (root, i = 3): 4 + o >= 1, never ROOT.
    # dogs (i = 0, head 2): o = +1. bark (root, i = 1): 2 + o <= 0 for o = -3, -2. loudly (i = 2, head 2): o = -1.
    assert other["offsets"]["nmod:poss"] == [0, 0, 0, 0, 1, 0]
    assert other["offsets"]["case"] == [0, 0, 1, 0, 0, 0]
    assert other["offsets"]["nsubj"] == [0, 0, 0, 0, 2, 1]
    assert other["offsets"]["root"] == [1, 1, 0, 0, 0, 0]
    assert other["offsets"]["advmod"] == [0, 0, 1, 0, 0, 0]
    summary = analysis.finalize(context("clark", 1, 2), {}).summary
    assert summary["conventions"] == "clark" and summary["offsets"] == list(CLARK_OFFSETS)
    assert summary["root_arcs_scored"] == 2 and summary["root_arcs_excluded"] == 0
    assert summary["possessive_rule_arcs"] == 1


def test_clark_diagonal_is_zeroed_not_excluded() -> None:
    # Word 1's row puts everything on [SEP]: Clark et al. zero the diagonal, so all words tie at 0 and argmax
    # takes the lowest, word 1 itself; headscope never predicts the word itself and takes word 2.
    ex = example(0, ["a", "b", "c"], [2, 0, 2], ["det", "root", "obj"])
    w = torch.zeros(1, 1, 1, 5, 5)
    w[0, 0, 0, :, 4] = 1.0
    is_word = word_unit_mask([ex], 5, "cpu")
    assert int(most_attended_words(w, is_word)[0, 0, 0, 0, 1]) == 2
    assert int(most_attended_words(w, is_word, self_weight=0.0)[0, 0, 0, 0, 1]) == 1


def test_clark_tie_breaking_of_best_heads_and_offsets() -> None:
    # Two layers x two heads, every head equally good: headscope takes the first, Clark et al.'s
    # sorted((score, layer, head, direction))[-1] the last layer, head and "head<-dep"; offsets tie likewise.
    correct = np.ones((2, 2, 1, 2, 2), dtype=np.int64)  # (split, direction, relation, layer, head)
    total = np.full((2, 1), 2)
    offsets = np.ones((2, 1, 6), dtype=np.int64)
    ours = best_heads(["all"], correct, total, offsets).iloc[0]
    theirs = best_heads(["all"], correct, total, offsets, offsets=CLARK_OFFSETS, clark_ties=True).iloc[0]
    assert (ours.same_data_layer, ours.same_data_head, ours.same_data_direction) == (0, 0, "dep->head")
    assert (theirs.same_data_layer, theirs.same_data_head, theirs.same_data_direction) == (1, 1, "head->dep")
    assert ours.same_data_baseline_offset == OFFSETS[0] and theirs.same_data_baseline_offset == CLARK_OFFSETS[-1]


# ---------------------------------------------------------------------------------------------------------------
# Similarity


def head_distances_cell(maps: list[np.ndarray]) -> np.ndarray:
    """Clark et al.'s head_distances.py, transcribed, on float16 maps of shape (layer, head, n, n)."""
    k = maps[0].shape[0] * maps[0].shape[1]
    js_distances = np.zeros([k, k])
    for doc in maps:
        attns = doc.astype("float16")
        attns_flat = attns.reshape([k, attns.shape[2], attns.shape[3]])
        for head in range(k):
            head_attns = np.expand_dims(attns_flat[head], 0)
            head_attns_smoothed = (0.001 / head_attns.shape[1]) + (head_attns * 0.999)
            attns_flat_smoothed = (0.001 / attns_flat.shape[1]) + (attns_flat * 0.999)
            m = (head_attns_smoothed + attns_flat_smoothed) / 2
            js = -head_attns_smoothed * np.log(m / head_attns_smoothed)
            js += -attns_flat_smoothed * np.log(m / attns_flat_smoothed)
            js /= 2
            js = js.sum(-1).sum(-1)
            js_distances[head] += js
    return js_distances


def test_clark_similarity_equals_head_distances_py_bit_for_bit() -> None:
    rng = np.random.default_rng(2)
    examples, maps = [], []
    for k, n in enumerate((5, 8, 3)):
        examples.append(example(k, [f"w{i}" for i in range(n - 2)]))
        logits = rng.normal(size=(2, 3, n, n)) * 2
        maps.append(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))
    # sample 0.1 is ignored: Clark et al. sum over every token.
    analysis = fed(HeadSimilarity(SimilarityOptions(similarity_sample=0.1)), context("clark", 2, 3), examples,
                   maps, block_rows=2, batch_size=2)
    assert np.array_equal(analysis.js_sum_.numpy(), head_distances_cell(maps))
    assert analysis.tokens_ == sum(ex.length for ex in examples)
    # Two identical heads are 0 apart; the float16 arithmetic differs from the float32 path by ~1e-4 relative.
    same = torch.as_tensor(np.stack([maps[0][0, 0]] * 2)).float()
    assert clark_js_sum(same.half().float())[0, 1] == 0.0
    plain = fed(HeadSimilarity(SimilarityOptions(similarity_sample=1.0)), context("headscope", 2, 3), examples, maps)
    assert np.allclose(plain.js_sum_.numpy(), analysis.js_sum_.numpy(), rtol=5e-3, atol=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# Roles (Pande et al.)


def roles_means(conventions: str, examples: list[Example], maps: list[np.ndarray], block_rows: int | None = None,
                **options: object) -> pd.DataFrame:
    analysis = fed(HeadRoles(RolesOptions(**options)), context(conventions), examples, maps, block_rows)
    return analysis.table().set_index("role")


@pytest.mark.parametrize("block_rows", [None, 1, 3])
def test_roles_uniform_pair_hand_computed_under_both_conventions(block_rows: int | None) -> None:
    # [CLS] a1 a2 [SEP] b1 b2 [SEP], uniform rows (1/7).
    ex = example(0, ["a1", "a2", "b1", "b2"], pair_from=2)
    assert ex.length == 7 and ex.segment.tolist() == [0, 0, 0, 0, 1, 1, 1]
    uniform = np.full((7, 7), 1 / 7)
    ours = roles_means("headscope", [ex], [uniform], block_rows)
    theirs = roles_means("pande", [ex], [uniform], block_rows)
    for role in ("local", "delimiter", "delimiter_cls", "delimiter_sep", "block"):
        assert ours.loc[role, "score_mean"] == pytest.approx(1.0)
    # Pande's band size is one too large for the last two tokens: 4 keys summed over 5, 3 over 4.
    assert theirs.loc["local", "score_mean"] == pytest.approx((5 + 4 / 5 + 3 / 4) / 7)
    for role in ("delimiter", "delimiter_cls", "delimiter_sep"):
        assert theirs.loc[role, "score_mean"] == pytest.approx(1.0)
    # Block: uniform over the segment's words is 1, times each row's entropy log 7.
    assert theirs.loc["block", "score_mean"] == pytest.approx(math.log(7))


@pytest.mark.parametrize("block_rows", [None, 2, 5])
def test_roles_block_targets_and_row_normalisation(block_rows: int | None) -> None:
    # Row i puts 1/2 on position (i + 1) mod 7 and 1/2 on position 1 (a1). Pande: queries 0-2 target a1, a2
    # ([CLS] and [SEP] left out), queries 3-6 (the first [SEP] onwards) target b1, b2; headscope: [CLS] a1 a2
    # [SEP] and b1 b2 [SEP] by token type.
    ex = example(0, ["a1", "a2", "b1", "b2"], pair_from=2)
    a = np.zeros((7, 7))
    for i in range(7):
        a[i, (i + 1) % 7] += 0.5
        a[i, 1] += 0.5
    ours = roles_means("headscope", [ex], [a], block_rows).loc["block", "score_mean"]
    theirs = roles_means("pande", [ex], [a], block_rows).loc["block", "score_mean"]
    seg = ex.segment
    own = [sum(a[i, j] for j in range(7) if seg[j] == seg[i]) / (seg == seg[i]).sum() for i in range(7)]
    assert ours == pytest.approx(7 * np.mean(own))
    targets = [[1, 2]] * 3 + [[4, 5]] * 4
    entropy = [stats.entropy(a[i]) for i in range(7)]
    expected = sum(np.mean(a[i, targets[i]]) / (a[i].sum() / 7) * entropy[i] for i in range(7)) / 7
    assert theirs == pytest.approx(expected)
    # Rows that do not sum to 1 (a map cut elsewhere): Pande divides each row's term by its sum.
    scaled = a * np.linspace(0.5, 1.0, 7)[:, None]
    local = roles_means("pande", [ex], [scaled], block_rows).loc["local", "score_mean"]
    band = [list(range(max(0, i - 2), min(i + 2, 6) + 1)) for i in range(7)]
    size = [min(i + 2, 7) + 1 - max(0, i - 2) for i in range(7)]
    expected = sum(scaled[i, band[i]].sum() / size[i] / (scaled[i].sum() / 7) for i in range(7)) / 7
    assert local == pytest.approx(expected)


def syntactic_example() -> tuple[Example, np.ndarray]:
    """big dog saw big cat (amod, nsubj, root, amod, obj), cat in two pieces: positions 0 [CLS], 1 big, 2 dog,
    3 saw, 4 big, 5-6 cat, 7 [SEP]; 8 pieces, 7 units."""
    ex = example(0, ["big", "dog", "saw", "big", "cat"], [2, 3, 0, 5, 3], ["amod", "nsubj", "root", "amod", "obj"],
                 pieces={4: 2})
    a = np.eye(8)
    for row, targets in {1: {2: 1.0}, 2: {3: 1.0}, 4: {5: 0.5, 6: 0.5}, 5: {3: 1.0}, 6: {0: 1.0}}.items():
        a[row] = 0.0
        for col, v in targets.items():
            a[row, col] = v
    return ex, a


@pytest.mark.parametrize("block_rows", [None, 3])
def test_syntactic_roles_hand_computed_under_both_conventions(block_rows: int | None) -> None:
    ex, a = syntactic_example()
    assert ex.length == 8 and ex.n_units == 7
    # Pande looks each piece up by its first occurrence: the second "big" is read from position 1.
    assert first_occurrences(ex.unit_of_piece, ex.input_ids, ex.segment, 4) == [1]
    assert first_occurrences(ex.unit_of_piece, ex.input_ids, ex.segment, 5) == [5, 6]
    ours = roles_means("headscope", [ex], [a], block_rows)["score_mean"]
    theirs = roles_means("pande", [ex], [a], block_rows)["score_mean"]
    # headscope, word level, n = 7 units: amod 1 (big1 -> dog) and 1 (big2 -> cat, 0.5 + 0.5 summed over its
    # pieces); nsubj 1; obj: cat's row is the mean of its pieces' rows, 0.5 on saw.
    assert ours["syntactic_amod"] == pytest.approx(7 * 1.0)
    assert ours["syntactic_nsubj"] == pytest.approx(7 * 1.0)
    assert ours["syntactic_obj"] == pytest.approx(7 * 0.5)
    assert ours["syntactic"] == pytest.approx(7 * np.mean([1, 1, 1, 0.5]))
    # Pande, piece level, n = 8 pieces: amod 8 (big1 -> dog) and 0 (the second big is read at position 1,
    # which puts nothing on cat); nsubj 8; obj: mean over cat's pieces of A[piece, saw] = 0.5, so 4.
    assert theirs["syntactic_amod"] == pytest.approx((8 + 0) / 2)
    assert theirs["syntactic_nsubj"] == pytest.approx(8.0)
    assert theirs["syntactic_obj"] == pytest.approx(4.0)
    assert theirs["syntactic"] == pytest.approx(np.mean([8, 0, 8, 4]))


def test_pande_labels_are_matched_exactly() -> None:
    ex = example(0, ["it", "was", "seen"], [3, 3, 0], ["nsubj:pass", "aux:pass", "root"])
    a = np.full((5, 5), 0.2)
    ours = roles_means("headscope", [ex], [a])
    theirs = roles_means("pande", [ex], [a])
    assert ours.loc["syntactic_nsubj", "n"] == 1  # nsubj matches nsubj:pass here
    assert theirs.loc["syntactic_nsubj", "n"] == 0  # spaCy's labels compared with == there


def test_pande_test_uses_the_population_sd_and_no_correction() -> None:
    scores = np.array([4.0, 5.0, 6.0, 3.5])
    n, total, total_sq = np.array([4.0]), np.array([scores.sum()]), np.array([np.square(scores).sum()])
    ours = one_sided_tests(n, total, total_sq, 3.0)
    theirs = one_sided_tests(n, total, total_sq, 3.0, conventions="pande")
    # Pande's ztest_own: z = (mean - tau) / (np.std(pop) / sqrt(n)), p = 1 - t(n - 1).cdf(z).
    z = (scores.mean() - 3.0) / (np.std(scores) / math.sqrt(4))
    assert theirs["t"][0] == pytest.approx(z) and theirs["p"][0] == pytest.approx(1 - stats.t(3).cdf(z))
    assert ours["t"][0] == pytest.approx(stats.ttest_1samp(scores, 3.0, alternative="greater").statistic)
    assert theirs["var"][0] == ours["var"][0] == pytest.approx(scores.var(ddof=1))  # the column stays unbiased
    ex, a = syntactic_example()
    analysis = fed(HeadRoles(RolesOptions(correction="bh")), context("pande"), [ex, ex], [a, a])
    table = analysis.table()
    assert table["p_adjusted"].equals(table["p"])  # --correction is not used under pande
    summary = analysis.finalize(context("pande"), {}).summary
    assert summary["conventions"] == "pande" and summary["correction"] == "none"


def test_pande_roles_are_block_and_batch_invariant(tiny_bert: Path) -> None:
    from transformers import AutoTokenizer

    from headscope.manifest import Manifest
    from headscope.model.encode import Encoder

    encoder = Encoder(AutoTokenizer.from_pretrained(tiny_bert), max_length=64)
    manifest = Manifest()
    trees = [Sentence(["the", "big", "dog", "saw", "the", "big", "cat"], "t", 1, heads=[3, 3, 4, 0, 7, 7, 4],
                      deprels=["det", "amod", "nsubj", "root", "det", "amod", "obj"]),
             Sentence(["she", "ran", "quickly"], "t", 2, heads=[2, 0, 2], deprels=["nsubj", "root", "advmod"])]
    examples = [encoder.encode(k, "sentence", [s], None, manifest, truncate=False) for k, s in enumerate(trees)]
    examples.append(encoder.encode(2, "segment", [Sentence(["a", "dog", "ran"], "t", 3)],
                                   [Sentence(["the", "cat", "saw", "it"], "t", 4)], manifest, truncate=True))
    gen = torch.Generator().manual_seed(0)
    maps = [torch.softmax(3 * torch.randn(2, 3, ex.length, ex.length, generator=gen), -1).numpy() for ex in examples]

    def table(block_rows: int | None, batch_size: int) -> pd.DataFrame:
        return fed(HeadRoles(RolesOptions()), context("pande", 2, 3), examples, maps, block_rows, batch_size).table()

    whole = table(None, 3)
    assert (whole.groupby("role")["n"].first() > 0).all()  # every role is defined somewhere (block: the pair)
    for block_rows, batch_size in ((1, 1), (4, 2), (7, 3)):
        other = table(block_rows, batch_size)
        assert np.allclose(whole["score_sum"], other["score_sum"], rtol=1e-6, atol=1e-7)
        assert np.allclose(whole["score_sumsq"], other["score_sumsq"], rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------
# compare


def conventions_run(conventions: str, analyses: dict[str, dict]) -> RunResult:
    heads = pd.DataFrame({"layer": [0, 0], "head": [0, 1], "prev": [0.1, 0.2]})
    return RunResult(heads=heads, tables={}, run={
        "model": {"name": "m", "n_layers": 1, "n_heads": 2}, "counts": {"examples": 3}, "files": [],
        "config": {"conventions": conventions}, "analyses": analyses})


def test_compare_refuses_mixed_conventions_and_says_why(tmp_path: Path) -> None:
    ours = conventions_run("headscope", {"surface": {"conventions": "headscope"}})
    clark = conventions_run("clark", {"surface": {"conventions": "clark"}})
    with pytest.raises(MixedConventionsError, match=r"different --conventions \(surface: headscope in A, clark in "
                                                    r"B\).*--allow-mixed-conventions"):
        compare(ours, clark)
    allowed = compare(ours, clark, allow_mixed_conventions=True)
    assert allowed.summary["mixed_conventions"] == ["surface: headscope in A, clark in B"]
    assert allowed.summary["run_conventions"] == {"a": "headscope", "b": "clark"}
    page = allowed.save(tmp_path / "cmp")
    assert "--allow-mixed-conventions" in (page / "report" / "index.html").read_text()
    # Same conventions: compared as before. An analysis that does not read --conventions (roles under clark
    # records headscope) does not make two runs incomparable; runs from before --conventions are headscope.
    assert compare(clark, clark).summary["mixed_conventions"] == []
    old = RunResult(heads=ours.heads, tables={}, run={"model": ours.run["model"], "analyses": {"surface": {}}})
    assert compare(old, ours).summary["mixed_conventions"] == []
    roles_only = conventions_run("clark", {"roles": {"conventions": "headscope"}})
    assert compare(conventions_run("headscope", {"roles": {}}), roles_only).summary["mixed_conventions"] == []


def test_compare_cli_refuses_runs_under_different_conventions(tiny_bert: Path, text_file: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from headscope import run
    from headscope.cli import main

    runs = {}
    for conventions in ("headscope", "clark"):
        runs[conventions] = tmp_path / conventions
        run(model=str(tiny_bert), text=[str(text_file)], analyses=["surface"], conventions=conventions,
            out=str(runs[conventions]), quiet=True, report=True)
        info = json.loads((runs[conventions] / "run.json").read_text())
        assert info["config"]["conventions"] == conventions
        assert info["analyses"]["surface"]["conventions"] == conventions
        page = (runs[conventions] / "report" / "index.html").read_text()
        assert f"Conventions: <b>{conventions}</b>" in page  # the surface section
        assert f"conventions</th><td>{conventions} (surface: {conventions})" in page  # the header
    out = tmp_path / "cmp"
    assert main(["compare", str(runs["headscope"]), str(runs["clark"]), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "different --conventions" in err and "surface: headscope in A, clark in B" in err
    assert not (out / "compare.json").exists()
    assert main(["compare", str(runs["headscope"]), str(runs["clark"]), "--out", str(out),
                 "--allow-mixed-conventions"]) == 0
    summary = json.loads((out / "compare.json").read_text())
    assert summary["mixed_conventions"] == ["surface: headscope in A, clark in B"]


# ---------------------------------------------------------------------------------------------------------------
# MiniLM on EWT: --conventions clark against Clark et al.'s cells, transcribed


def clark_general_cells(data: list[tuple[list[str], np.ndarray]], n_layers: int, n_heads: int) -> dict:
    """General_Analysis.ipynb, the average-attention and entropy cells, on (tokens, float16 attns) pairs."""
    n_docs = len(data)
    avg_attns = {k: np.zeros((n_layers, n_heads)) for k in
                 ["self", "right", "left", "sep", "sep_sep", "rest_sep", "cls", "punct"]}
    for tokens, attns in data:
        n_tokens = attns.shape[-1]
        seps, clss, puncts = (np.zeros(n_tokens) for _ in range(3))
        for position, token in enumerate(tokens):
            if token == "[SEP]":
                seps[position] = 1
            if token == "[CLS]":
                clss[position] = 1
            if token == "." or token == ",":
                puncts[position] = 1
        sep_seps = np.ones((n_tokens, n_tokens))
        sep_seps *= seps[np.newaxis]
        sep_seps *= seps[:, np.newaxis]
        rest_seps = np.ones((n_tokens, n_tokens))
        rest_seps *= (np.ones(n_tokens) - seps)[:, np.newaxis]
        rest_seps *= seps[np.newaxis]
        selectors = {
            "self": np.eye(n_tokens, n_tokens), "right": np.eye(n_tokens, n_tokens, 1),
            "left": np.eye(n_tokens, n_tokens, -1), "sep": np.tile(seps[np.newaxis], [n_tokens, 1]),
            "sep_sep": sep_seps, "rest_sep": rest_seps, "cls": np.tile(clss[np.newaxis], [n_tokens, 1]),
            "punct": np.tile(puncts[np.newaxis], [n_tokens, 1]),
        }
        for key, selector in selectors.items():
            if key == "sep_sep":
                denom = 2
            elif key == "rest_sep":
                denom = n_tokens - 2
            else:
                denom = n_tokens
            avg_attns[key] += (attns * selector[np.newaxis, np.newaxis]).sum(-1).sum(-1) / (n_docs * denom)
    uniform_attn_entropy = 0
    entropies = np.zeros((n_layers, n_heads))
    entropies_cls = np.zeros((n_layers, n_heads))
    for _, attns in data:
        attns = 0.9999 * attns + (0.0001 / attns.shape[-1])  # smooth to avoid NaNs
        uniform_attn_entropy -= np.log(1.0 / attns.shape[-1])
        entropies -= (attns * np.log(attns)).sum(-1).mean(-1)
        entropies_cls -= (attns * np.log(attns))[:, :, 0].sum(-1)
    return {"self": avg_attns["self"], "next": avg_attns["right"], "prev": avg_attns["left"],
            "sep": avg_attns["sep"], "sep_to_sep": avg_attns["sep_sep"], "other_to_sep": avg_attns["rest_sep"],
            "cls": avg_attns["cls"], "punct": avg_attns["punct"], "entropy_uniform": uniform_attn_entropy / n_docs,
            "entropy": entropies / n_docs, "cls_entropy": entropies_cls / n_docs}


def clark_word_word_attention(token_token_attention: np.ndarray, words_to_tokens: list[list[int]]) -> np.ndarray:
    """bpe_utils.get_word_word_attention, mode="first" (what make_attn_word_level uses)."""
    word_word_attention = np.array(token_token_attention)
    not_word_starts = []
    for word in words_to_tokens:
        not_word_starts += word[1:]
    for word in words_to_tokens:
        word_word_attention[:, word[0]] = word_word_attention[:, word].sum(axis=-1)
    word_word_attention = np.delete(word_word_attention, not_word_starts, -1)
    return np.delete(word_word_attention, not_word_starts, 0)


def clark_syntax_cells(dev_data: list[dict], n_layers: int, n_heads: int) -> tuple[dict, dict]:
    """Syntax_Analysis.ipynb's evaluation, with the possessive rule keyed on nmod:poss as well as poss.

    Returns counts (n_correct, n_total) per (direction, layer, head) and per offset, by relation.
    """
    def evaluate_predictor(prediction_fn: object) -> tuple[collections.Counter, collections.Counter]:
        n_correct, n_incorrect = collections.Counter(), collections.Counter()
        for ex in dev_data:
            words = ex["words"]
            predictions = prediction_fn(ex)
            for i, (p, y, r) in enumerate(zip(predictions, ex["heads"], ex["relns"], strict=True)):
                is_correct = (p == y)
                if r in ("poss", "nmod:poss") and p < len(words):  # noqa: SIM102 (their code, as written)
                    # Special case for poss (see discussion in Section 4.2); the parentheses are Python's.
                    if (i < len(words) and words[i + 1] == "'s") or words[i + 1] == "s'":
                        is_correct = (predictions[i + 1] == y)
                if is_correct:
                    n_correct[r] += 1
                    n_correct["all"] += 1
                else:
                    n_incorrect[r] += 1
                    n_incorrect["all"] += 1
        return n_correct, n_incorrect

    def attn_head_predictor(layer: int, head: int, mode: str = "normal") -> object:
        def predict(ex: dict) -> np.ndarray:
            attn = np.array(ex["attns"][layer][head])
            if mode == "transpose":
                attn = attn.T
            attn[range(attn.shape[0]), range(attn.shape[0])] = 0
            attn = attn[1:-1, 1:-1]
            return np.argmax(attn, axis=-1) + 1
        return predict

    def offset_predictor(offset: int) -> object:
        def predict(ex: dict) -> list[int]:
            return [max(0, min(i + offset + 1, len(ex["words"]))) for i in range(len(ex["words"]))]
        return predict

    heads = {(d, layer, head): evaluate_predictor(attn_head_predictor(layer, head, mode))
             for d, mode in enumerate(["normal", "transpose"]) for layer in range(n_layers) for head in range(n_heads)}
    baselines = {i: evaluate_predictor(offset_predictor(i)) for i in range(-3, 3)}
    return heads, baselines


@pytest.mark.integration
def test_clark_conventions_on_minilm_equal_clarks_cells(minilm: str, shared: Path, tmp_path: Path) -> None:
    import headscope
    from headscope.corpus.conllu import read_conllu
    from headscope.engine.capture import capture_stacked
    from headscope.manifest import Manifest
    from headscope.model.encode import Encoder
    from headscope.model.load import load_model

    treebank = str(shared / EWT_DEV)
    result = headscope.run(model=minilm, treebank=[treebank], max_sentences=100, analyses=["surface", "syntax"],
                           conventions="clark", syntax_held_out_fraction=1.0, out=str(tmp_path / "run"), quiet=True,
                           report=False, syntax_min_n=1)  # Clark et al.'s table picks a head for every relation
    assert result.run["config"]["conventions"] == "clark"

    # The same sentences, encoded the same way (--conventions clark reads the forms joined by spaces), with every
    # layer's maps kept (float32), as Clark et al.'s extract_attention.py would store them (float16).
    assert result.run["notes"]["inputs"]["treebank_input"] == "forms"
    loaded = load_model(minilm, device="cpu")
    n_layers, n_heads = loaded.info.n_layers, loaded.info.n_heads
    encoder = Encoder(loaded.tokenizer, 128, "clark")
    manifest = Manifest()
    examples = [encoder.encode(k, "sentence", [s], None, manifest, truncate=False, forms=True)
                for k, s in enumerate(read_conllu(treebank, manifest, limit=100))]
    examples = [ex for ex in examples if ex is not None]
    assert len(examples) == result.run["counts"]["examples"]
    maps = []
    with torch.inference_mode():
        for k in range(0, len(examples), 16):
            part = examples[k:k + 16]
            attn = capture_stacked(loaded, collate(part, int(loaded.tokenizer.pad_token_id)))
            maps += [attn[r, :, :, :ex.length, :ex.length].numpy().astype("float16") for r, ex in enumerate(part)]

    cells = clark_general_cells([(ex.pieces, m) for ex, m in zip(examples, maps, strict=True)], n_layers, n_heads)
    heads = result.heads.sort_values(["layer", "head"])
    for key, value in cells.items():
        ours = heads[key].to_numpy().reshape(n_layers, n_heads)
        # Same arithmetic: only the float32 (ours) vs float64 (NumPy) sums of the float16 maps differ.
        assert np.abs(ours - value).max() < 1e-6, key

    aligned = [k for k, ex in enumerate(examples) if (ex.word_units >= 0).all()]  # Clark's code needs them all
    assert len(aligned) == len(examples)
    dev_data = []
    for ex, m in zip(examples, maps, strict=True):
        words_to_tokens = [list(np.flatnonzero(ex.unit_of_piece == u)) for u in range(ex.n_units)]
        s = ex.sentences[0]
        dev_data.append({"words": s.words, "heads": s.heads, "relns": s.deprels, "attns": np.stack(
            [[clark_word_word_attention(head, words_to_tokens) for head in layer] for layer in m])})
    by_head, baselines = clark_syntax_cells(dev_data, n_layers, n_heads)
    table = result.tables["syntax"]
    table = table[table["split"] == "all"].set_index(["relation", "direction", "layer", "head"])
    for (d, layer, head), (n_correct, n_incorrect) in by_head.items():
        for relation in set(n_correct) | set(n_incorrect):
            row = table.loc[(relation, DIRECTIONS[d], layer, head)]
            assert row["n"] == n_correct[relation] + n_incorrect[relation]
            assert round(row["accuracy"] * row["n"]) == n_correct[relation], (relation, d, layer, head)

    # Table 1, Clark et al.'s way: the best head (ties to the highest layer, head, "head<-dep") and offset.
    best = result.tables["syntax_best"].set_index("relation")
    for relation in best.index:
        scores = [(by_head[(d, layer, head)][0][relation] / float(best.loc[relation, "n_held_out"]), layer, head,
                   ["dep->head", "head<-dep"][d]) for (d, layer, head) in by_head]
        uas, layer, head, direction = sorted(scores)[-1]
        assert (best.loc[relation, "same_data_layer"], best.loc[relation, "same_data_head"]) == (layer, head)
        assert best.loc[relation, "same_data_direction"] == direction.replace("head<-dep", "head->dep")
        assert best.loc[relation, "same_data_accuracy"] == pytest.approx(uas)
        baseline_uas, baseline_offset = max((c[relation] / float(best.loc[relation, "n_held_out"]), i)
                                            for i, (c, _) in baselines.items())
        assert best.loc[relation, "same_data_baseline_offset"] == baseline_offset
        assert best.loc[relation, "same_data_baseline_accuracy"] == pytest.approx(baseline_uas)
    summary = result.run["analyses"]["syntax"]
    assert summary["conventions"] == "clark" and summary["root_arcs_scored"] == len(examples)
