"""Coreference heads: windows, baselines, hand-computed head accuracies, the plain-loop reference, merge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from contexts import analysis_context
from headscope.analyses.coref import BASELINES, TYPES, CorefHeads, CorefOptions, baseline_predictions, best_heads
from headscope.corpus.coref_windows import nearest_antecedents, plan_windows
from headscope.corpus.mentions import MENTION_TYPES, Mention
from headscope.corpus.types import Sentence
from headscope.engine.batch import collate
from headscope.engine.context import AnalysisContext
from headscope.manifest import Manifest
from headscope.model.coref_encode import WindowExample, WindowMention, iter_coref_examples, window_mentions
from headscope.model.encode import Encoder
from headscope.runner.feed import feed_attention
from reference import word_attention_reference


def _sentence(n_words: int, mentions: list[Mention], line: int = 1) -> Sentence:
    return Sentence(words=["w"] * n_words, file="doc", line=line, annotations={"mentions": mentions})


# ----------------------------------------------------------------------------------------------------------
# Windows


def test_nearest_antecedent_uses_head_positions() -> None:
    s0 = _sentence(5, [Mention("A", (3,), 3, 1), Mention("A", (1,), 1, 1), Mention("B", (0,), 0, 1)])
    s1 = _sentence(3, [Mention("A", (2,), 2, 2), Mention("B", (0, 1), 1, 2)])
    near = nearest_antecedents([s0, s1])
    assert [(m.head, n) for m, n in near[0]] == [(0, None), (1, None), (3, (0, 1))]
    assert [(m.head, n) for m, n in near[1]] == [(1, (0, 0)), (2, (0, 3))]


def test_plan_windows_hand_computed() -> None:
    # Five sentences of 3 pieces, windows of 7 pieces (two sentences). A: s0 -> s1 (kept); B: s2 -> s4 is
    # 9 pieces apart, more than any window holds (lost).
    sentences = [_sentence(3, [Mention("A", (0,), 0, 1)]), _sentence(3, [Mention("A", (0,), 0, 2)]),
                 _sentence(3, [Mention("B", (0,), 0, 3)]), _sentence(3, []), _sentence(3, [Mention("B", (0,), 0, 5)])]
    plan = plan_windows(sentences, [3, 3, 3, 3, 3], budget=7)
    assert [(w.first, w.scored_from, w.last) for w in plan.windows] == [(0, 0, 1), (2, 2, 3), (3, 4, 4)]
    assert (plan.lost_window, plan.lost_long_sentence, plan.skipped_sentences) == (1, 0, [])
    # With room for three sentences B is kept, and s3's window must reach back to s2.
    plan = plan_windows(sentences, [3, 3, 3, 3, 3], budget=9)
    assert [(w.first, w.scored_from, w.last) for w in plan.windows] == [(0, 0, 2), (2, 3, 4)]
    assert plan.lost_window == 0


def test_plan_windows_long_sentence_breaks_the_text() -> None:
    sentences = [_sentence(2, [Mention("A", (0,), 0, 1)]), _sentence(9, [Mention("A", (0,), 0, 2)]),
                 _sentence(2, [Mention("A", (1,), 1, 3)]), _sentence(2, [Mention("A", (0,), 0, 4)])]
    plan = plan_windows(sentences, [2, 9, 2, 2], budget=6)
    assert plan.skipped_sentences == [1]
    # s1's mention is in the skipped sentence, s2's nearest antecedent is in it: both lost; s3 keeps s2.
    assert plan.lost_long_sentence == 2
    assert [(w.first, w.scored_from, w.last) for w in plan.windows] == [(0, 0, 0), (2, 2, 3)]


# ----------------------------------------------------------------------------------------------------------
# Baselines


def _wm(entity: str, word: int, text: str, mention_type: str = "nominal", number: str | None = "Sing",
        gender: str | None = None, person: str | None = "3") -> WindowMention:
    return WindowMention(entity=entity, sentence=0, word=word, unit=word + 1, mention_type=mention_type,
                         text=text, head_text=text.split()[-1], number=number, gender=gender, person=person,
                         scored=True, antecedents=())


def test_baselines_hand_computed() -> None:
    mentions = [_wm("A", 1, "john", "proper"), _wm("B", 4, "the dog"), _wm("C", 7, "his mother"),
                _wm("C", 10, "she", "pronoun", gender="Fem"), _wm("B", 12, "the dog"),
                _wm("E", 16, "the dogs", number="Plur"), _wm("F", 17, "the cat"),
                _wm("E", 18, "they", "pronoun", number="Plur")]
    assert baseline_predictions(mentions, 3) == {"nearest": 2, "head_match": -1, "rule_based": 2}
    assert baseline_predictions(mentions, 4) == {"nearest": 3, "head_match": 1, "rule_based": 1}
    # "they" disagrees in number with "the cat": the agreement sieve skips it.
    assert baseline_predictions(mentions, 7) == {"nearest": 6, "head_match": -1, "rule_based": 5}
    assert baseline_predictions(mentions, 0) == {"nearest": -1, "head_match": -1, "rule_based": -1}


# ----------------------------------------------------------------------------------------------------------
# The analysis on hand-made attention


@pytest.fixture(scope="module")
def tokenizer(tiny_bert: Path):
    return AutoTokenizer.from_pretrained(tiny_bert)


def _ctx(n_layers: int, n_heads: int, mode: str = "mean") -> AnalysisContext:
    return analysis_context(n_layers, n_heads, word_attention=mode)


def _king_and_queen(tokenizer) -> tuple:
    pron = {"Person": "3", "Number": "Sing"}
    s1 = Sentence(words=["the", "king", "saw", "his", "queen", "."], file="doc", line=1,
                  upos=["DET", "NOUN", "VERB", "PRON", "NOUN", "PUNCT"],
                  feats=[{}, {"Number": "Sing"}, {}, {**pron, "Gender": "Masc"}, {"Number": "Sing"}, {}],
                  annotations={"mentions": [Mention("A", (0, 1), 1, 1), Mention("B", (3, 4), 4, 1),
                                            Mention("A", (3,), 3, 1)]})
    s2 = Sentence(words=["she", "ran", "."], file="doc", line=2, upos=["PRON", "VERB", "PUNCT"],
                  feats=[{**pron, "Gender": "Fem"}, {}, {}], annotations={"mentions": [Mention("B", (0,), 0, 2)]})
    # The analysis reads the mentions a window carries (WindowExample), as the corpus builds windows.
    ex = WindowExample.from_example(Encoder(tokenizer, 64).encode(0, "window", [s1, s2], None, Manifest(),
                                                                  truncate=False))
    # One piece per word: unit u is position u ([CLS] 0, the 1, king 2, saw 3, his 4, queen 5, . 6, she 7,
    # ran 8, . 9, [SEP] 10).
    assert ex.length == 11 and list(ex.unit_of_piece) == list(range(11))
    n = ex.length
    A = np.zeros((4, n, n), dtype=np.float32)
    for i in range(n):
        A[0, i, max(i - 2, 0)] = 1.0                      # two words back: his -> king, she -> queen
        A[1, i, max(i - 1, 0)] = 1.0                      # previous word: never an antecedent
        A[2, i, 0], A[2, i, 5] = 0.9, 0.1                 # [CLS] is excluded, so "queen" wins: right for "she"
        A[3, i, min(i + 1, n - 1)] += 0.6                 # next word, then two back
        A[3, i, max(i - 2, 0)] += 0.4
    return ex, torch.from_numpy(A)[None, None]           # [batch, layer, head, query, key]


def test_analysis_tabulates_the_corpus_mention_types() -> None:
    # The analysis imports no corpus module at run time: it keeps the table's types itself.
    from headscope.analyses import coref

    assert coref.MENTION_TYPES == MENTION_TYPES and (*MENTION_TYPES, "all") == TYPES


def test_a_window_without_carried_mentions_is_refused(tokenizer) -> None:
    s = _sentence(3, [Mention("A", (0,), 0, 1), Mention("A", (2,), 2, 1)])
    ex = Encoder(tokenizer, 64).encode(0, "window", [s], None, Manifest(), truncate=False)
    analysis = CorefHeads(CorefOptions())
    analysis.start(_ctx(1, 1))
    with pytest.raises(ValueError, match="carries no mentions"):
        analysis.begin_batch(collate([ex], pad_id=0))


@pytest.mark.parametrize(("candidates", "expected"), [("all", [1.0, 0.0, 0.5, 0.0]),
                                                        ("preceding", [1.0, 0.0, 0.5, 1.0])])
def test_hand_computed_head_accuracy(tokenizer, candidates: str, expected: list[float]) -> None:
    ex, attn = _king_and_queen(tokenizer)
    mentions = window_mentions(ex)
    assert [(m.word, m.entity, m.evaluated) for m in mentions] == [(1, "A", False), (3, "A", True),
                                                                   (4, "B", False), (6, "B", True)]
    analysis = CorefHeads(CorefOptions(coref_candidates=candidates, coref_min_n=2))  # two mentions here
    analysis.start(_ctx(1, 4))
    feed_attention([analysis], collate([ex], pad_id=0), attn)
    heads, baselines, n = analysis.accuracy()
    pronoun, everything = MENTION_TYPES.index("pronoun"), TYPES.index("all")
    assert n[pronoun] == 2 and n[everything] == 2 and n.sum() == 4
    np.testing.assert_allclose(heads[pronoun, 0].numpy(), expected)
    np.testing.assert_allclose(heads[everything, 0].numpy(), expected)
    assert torch.isnan(heads[MENTION_TYPES.index("nominal")]).all()
    np.testing.assert_allclose(baselines[:, everything].numpy(), [1.0, 0.0, 1.0])  # nearest, head, rules

    result = analysis.finalize(None, {})
    table = result.tables["coref"]
    assert list(table.columns) == ["method", "layer", "head", "mention_type", "accuracy", "n"]
    rows = table[(table["method"] == "rule_based") & (table["mention_type"] == "all")]
    assert len(rows) == 1 and rows["layer"].isna().all() and rows["accuracy"].iloc[0] == 1.0
    best = result.tables["coref_best"].set_index("mention_type")
    assert best.loc["pronoun", "best_head"] == "L0H0" and best.loc["pronoun", "accuracy"] == 1.0
    assert not best.loc["pronoun", "below_min_n"] and result.summary["min_n"] == 2


def test_no_best_head_on_fewer_than_min_n_mentions(tokenizer) -> None:
    # The same two pronouns under the default minimum (20 mentions): listed and flagged, no best head claimed.
    ex, attn = _king_and_queen(tokenizer)
    analysis = CorefHeads(CorefOptions())
    analysis.start(_ctx(1, 4))
    feed_attention([analysis], collate([ex], pad_id=0), attn)
    result = analysis.finalize(None, {})
    best = result.tables["coref_best"].set_index("mention_type")
    assert best.loc["pronoun", "n"] == 2 and best.loc["pronoun", "below_min_n"]
    assert best.loc["pronoun", "best_head"] == "" and pd.isna(best.loc["pronoun", "accuracy"])
    assert best.loc["pronoun", "nearest"] == 1.0  # the baselines (fixed rules, not picks) stay
    s = result.summary
    assert s["min_n"] == 20 and "coref_min_n = 20" in s["min_n_rule"]
    assert s["best"]["pronoun"]["head"] is None and "pronoun" in s["below_min_n"]


def test_best_head_per_type_is_chosen_among_types_with_min_n_mentions() -> None:
    # proper: 2 mentions, head L0H1 right on both (accuracy 1); pronoun: 25 mentions, L0H0 best at 0.6.
    rows = [{"method": "head", "layer": 0, "head": h, "mention_type": t, "accuracy": a, "n": n}
            for t, n, accs in (("pronoun", 25, (0.6, 0.2)), ("proper", 2, (0.0, 1.0)), ("all", 27, (0.56, 0.26)))
            for h, a in enumerate(accs)]
    table = pd.DataFrame(rows)
    best = best_heads(table, min_n=20).set_index("mention_type")
    assert best.loc["pronoun", "best_head"] == "L0H0" and best.loc["pronoun", "accuracy"] == 0.6
    assert best.loc["proper", "below_min_n"] and best.loc["proper", "best_head"] == ""
    assert pd.isna(best.loc["proper", "layer"])
    assert best_heads(table, min_n=2).set_index("mention_type").loc["proper", "best_head"] == "L0H1"


# ----------------------------------------------------------------------------------------------------------
# Real windows from a file, random attention: fast path against a plain loop; padding, batches and merge


NAMES = ["john", "mary", "paris", "queen", "king", "dog", "cat", "man", "woman", "city"]
PRONOUNS = [("he", "Masc"), ("she", "Fem"), ("it", "Neut")]


def _random_corefud(rng: np.random.Generator, n_docs: int = 2, n_sentences: int = 7) -> str:
    lines = []
    for d in range(n_docs):
        lines.append(f"# newdoc id = doc{d}")
        for s in range(n_sentences):
            lines.append(f"# sent_id = doc{d}-{s}")
            n = int(rng.integers(3, 8))
            for k in range(n):
                entity = int(rng.integers(0, 4))
                if rng.random() < 0.5:
                    form, upos, feats = NAMES[int(rng.integers(len(NAMES)))], "NOUN", "Number=Sing"
                    misc = f"Entity=(e{entity}-x-1-)" if rng.random() < 0.6 else "_"
                else:
                    form, gender = PRONOUNS[int(rng.integers(len(PRONOUNS)))]
                    upos, feats = "PRON", f"Gender={gender}|Number=Sing|Person=3"
                    misc = f"Entity=(e{entity}-x-1-)"
                head = 0 if k == 0 else 1
                lines.append("\t".join([str(k + 1), form, form, upos, "_", feats, str(head),
                                        "root" if k == 0 else "dep", "_", misc]))
            lines.append("")
    return "\n".join(lines) + "\n"


def _coref_reference(ex, A: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Per mention type, correct counts of shape (n_types, layer, head) and mention counts, by loops."""
    groups = [list(np.flatnonzero(ex.unit_of_piece == u)) for u in range(ex.n_units)]
    special = {u for u, g in enumerate(groups) if any(ex.is_cls[p] or ex.is_sep[p] for p in g)}
    n_layers, n_heads = A.shape[:2]
    correct = np.zeros((len(MENTION_TYPES), n_layers, n_heads))
    count = np.zeros(len(MENTION_TYPES))
    mentions = window_mentions(ex)
    for m in mentions:
        if not m.evaluated:
            continue
        t = MENTION_TYPES.index(m.mention_type)
        count[t] += 1
        targets = {mentions[a].unit for a in m.antecedents}
        for layer in range(n_layers):
            for head in range(n_heads):
                W = word_attention_reference(A[layer, head], groups, mode)
                options = [u for u in range(ex.n_units) if u not in special and u != m.unit]
                best = max(options, key=lambda u: (W[m.unit, u], -u))
                correct[t, layer, head] += best in targets
    return correct, count


def _random_maps(rng: np.random.Generator, examples, n_layers: int = 2, n_heads: int = 3) -> list[np.ndarray]:
    maps = []
    for ex in examples:
        logits = rng.normal(size=(n_layers, n_heads, ex.length, ex.length)) * 3
        e = np.exp(logits - logits.max(-1, keepdims=True))
        maps.append((e / e.sum(-1, keepdims=True)).astype(np.float32))
    return maps


def _padded(maps: list[np.ndarray]) -> torch.Tensor:
    n = max(m.shape[-1] for m in maps)
    attn = torch.zeros(len(maps), *maps[0].shape[:2], n, n)
    for k, m in enumerate(maps):
        attn[k, :, :, :m.shape[-1], :m.shape[-1]] = torch.from_numpy(m)
    return attn


@pytest.fixture(scope="module")
def windows(tokenizer, tmp_path_factory: pytest.TempPathFactory) -> tuple[list, Manifest]:
    path = tmp_path_factory.mktemp("coref") / "random.conllu"
    path.write_text(_random_corefud(np.random.default_rng(0)), encoding="utf-8")
    manifest = Manifest()
    examples = list(iter_coref_examples([str(path)], Encoder(tokenizer, 24), manifest, start_index=5))
    return examples, manifest


def test_windows_fit_and_every_mention_is_accounted_for(windows) -> None:
    examples, manifest = windows
    c = manifest.counts
    assert len(examples) == c["coref_windows"] > 2
    assert [ex.index for ex in examples] == list(range(5, 5 + len(examples)))
    assert all(ex.kind == "window" and ex.length <= 24 for ex in examples)
    scored = [(s.doc_id, s.line) for ex in examples for s in ex.sentences if s.annotations["coref_scored"]]
    assert len(scored) == len(set(scored)) == c["sentences_read"]  # every sentence scored exactly once
    evaluated = sum(m.evaluated for ex in examples for m in window_mentions(ex))
    assert evaluated == c["coref_mentions_evaluated"] > 10
    assert c["coref_mentions_anaphoric"] == (evaluated + c["coref_lost_window"] + c["coref_lost_long_sentence"]
                                             + c["coref_lost_no_pieces"])
    assert c["coref_lost_window"] > 0 and c["coref_lost_no_pieces"] == 0
    assert c["coref_antecedents_in_window"] <= c["coref_antecedents"]
    assert "coref_windows" in manifest.notes


@pytest.mark.parametrize("mode", ["mean", "first"])
def test_fast_path_matches_reference_and_is_padding_invariant(windows, mode: str) -> None:
    examples, _ = windows
    maps = _random_maps(np.random.default_rng(1), examples)
    expected = np.zeros((len(MENTION_TYPES), 2, 3))
    expected_n = np.zeros(len(MENTION_TYPES))
    for ex, A in zip(examples, maps, strict=True):
        correct, count = _coref_reference(ex, A, mode)
        expected += correct
        expected_n += count
    whole = CorefHeads()
    whole.start(_ctx(2, 3, mode))
    feed_attention([whole], collate(examples, pad_id=0), _padded(maps), word_mode=mode)  # one padded batch
    one_by_one = CorefHeads()
    one_by_one.start(_ctx(2, 3, mode))
    for ex, A in zip(examples, maps, strict=True):
        feed_attention([one_by_one], collate([ex], pad_id=0), _padded([A]), word_mode=mode)
    for analysis in (whole, one_by_one):
        np.testing.assert_array_equal(analysis.correct_.numpy(), expected)
        np.testing.assert_array_equal(analysis.n_.numpy(), expected_n)
    np.testing.assert_array_equal(whole.baseline_correct_.numpy(), one_by_one.baseline_correct_.numpy())


@pytest.mark.parametrize("block_rows", [1, 3])
def test_blocks_of_query_rows_and_other_examples_change_no_count(tokenizer, windows, block_rows: int) -> None:
    ex, attn = _king_and_queen(tokenizer)
    for candidates in ("all", "preceding"):
        runs = []
        for rows in (None, block_rows):
            analysis = CorefHeads(CorefOptions(coref_candidates=candidates))
            analysis.start(_ctx(1, 4))
            feed_attention([analysis], collate([ex], pad_id=0), attn, block_rows=rows)
            runs.append(analysis)
        for a, b in zip(runs[0].accuracy(), runs[1].accuracy(), strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())

    examples, _ = windows
    maps = _random_maps(np.random.default_rng(4), examples)
    # A sentence (not a window) in the batch: coref does not want it, so it must change nothing.
    sentence = Encoder(tokenizer, 24).encode(99, "sentence", [Sentence(["a", "dog", "ran"], "s.txt", 1)], None,
                                             Manifest(), truncate=False)
    mixed = [examples[0], sentence, *examples[1:]]
    mixed_maps = [maps[0], *_random_maps(np.random.default_rng(5), [sentence]), *maps[1:]]
    for mode in ("mean", "first"):
        whole, blocks = CorefHeads(), CorefHeads()
        whole.start(_ctx(2, 3, mode))
        blocks.start(_ctx(2, 3, mode))
        used = feed_attention([whole], collate(examples, pad_id=0), _padded(maps), word_mode=mode)
        used_mixed = feed_attention([blocks], collate(mixed, pad_id=0), _padded(mixed_maps), word_mode=mode,
                                    block_rows=block_rows)
        assert used == used_mixed == {"coref": len(examples)}
        np.testing.assert_array_equal(blocks.correct_.numpy(), whole.correct_.numpy())
        np.testing.assert_array_equal(blocks.n_.numpy(), whole.n_.numpy())
        np.testing.assert_array_equal(blocks.baseline_correct_.numpy(), whole.baseline_correct_.numpy())
    assert whole.n_.sum() > 10


def test_merge_of_halves_equals_one_run(windows) -> None:
    examples, _ = windows
    maps = _random_maps(np.random.default_rng(2), examples)
    half = len(examples) // 2
    parts = []
    for chunk in (slice(None), slice(None, half), slice(half, None)):
        analysis = CorefHeads()
        analysis.start(_ctx(2, 3))
        feed_attention([analysis], collate(examples[chunk], pad_id=0), _padded(maps[chunk]))
        parts.append(analysis)
    whole, first, second = parts
    merged = first.merge(second)
    for a, b in zip(merged.accuracy(), whole.accuracy(), strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert whole.baseline_correct_.sum() > 0


# ----------------------------------------------------------------------------------------------------------
# Through the run loop


def test_run_writes_tables_and_counts_independent_of_batch_size(tiny_bert: Path, tmp_path: Path) -> None:
    import headscope

    path = tmp_path / "random.conllu"
    path.write_text(_random_corefud(np.random.default_rng(3)), encoding="utf-8")
    outs = []
    for batch_size in (1, 5):
        out = tmp_path / f"out{batch_size}"
        headscope.run(model=str(tiny_bert), coref=[str(path)], analyses=["coref"], max_length=24,
                      batch_size=batch_size, out=str(out), quiet=True, report=batch_size == 1)
        outs.append(out)
    tables = [pd.read_csv(o / "coref.csv") for o in outs]
    pd.testing.assert_frame_equal(tables[0], tables[1])
    assert set(tables[0]["method"]) == {"head", *BASELINES}
    assert len(tables[0]) == (2 * 4 + len(BASELINES)) * len(TYPES)
    run = json.loads((outs[0] / "run.json").read_text())
    counts = run["counts"]
    n_all = tables[0].loc[(tables[0]["method"] == "head") & (tables[0]["mention_type"] == "all"), "n"]
    assert (n_all == counts["coref_mentions_evaluated"]).all()
    assert run["analyses"]["coref"]["mentions"]["all"] == counts["coref_mentions_evaluated"]
    assert "coref_accuracy" in pd.read_csv(outs[0] / "heads.csv").columns
    assert (outs[0] / "figures" / "coref_accuracy.png").is_file()
    assert (outs[0] / "figures" / "coref_accuracy.svg").is_file()
    assert "Coreference heads" in (outs[0] / "report" / "index.html").read_text(encoding="utf-8")


@pytest.mark.integration
@pytest.mark.shared
def test_minilm_on_the_first_gum_document(minilm: str, shared: Path, tmp_path: Path) -> None:
    import headscope

    lines = (shared / "data/ud-english-gum/en_gum-ud-dev.conllu").read_text(encoding="utf-8").splitlines()
    second = next(i for i, line in enumerate(lines) if line.startswith("# newdoc") and i > 0)
    path = tmp_path / "gum-first.conllu"
    path.write_text("\n".join(lines[:second]) + "\n", encoding="utf-8")
    result = headscope.run(model=minilm, coref=[str(path)], analyses=["coref"], out=None, quiet=True)
    table = result.tables["coref"]
    counts = result.run["counts"]
    assert counts["coref_mentions_evaluated"] > 50
    assert counts["coref_mentions_anaphoric"] == (counts["coref_mentions_evaluated"] + counts["coref_lost_window"]
                                                  + counts["coref_lost_long_sentence"]
                                                  + counts["coref_lost_no_pieces"])
    heads = table[(table["method"] == "head") & (table["mention_type"] == "all")]
    assert len(heads) == 6 * 12 and heads["accuracy"].between(0, 1).all()
    # A trained model has heads that beat picking an arbitrary earlier word by a wide margin.
    assert heads["accuracy"].max() > 0.2


def test_conll2012_windows(tokenizer, tmp_path: Path) -> None:
    from test_coref_readers import CONLL2012

    path = tmp_path / "sample_conll"
    path.write_text(CONLL2012, encoding="utf-8")
    manifest = Manifest()
    examples = list(iter_coref_examples([str(path)], Encoder(tokenizer, 64), manifest, start_index=0))
    evaluated = [(m.head_text, m.mention_type, m.entity) for ex in examples for m in window_mentions(ex)
                 if m.evaluated]
    # "She" refers back to "the daughter of the kings" (head "daughter"), "he" to "John".
    assert evaluated == [("she", "pronoun", "2"), ("he", "pronoun", "1")]
    assert manifest.counts["coref_mentions_evaluated"] == 2 and manifest.counts["coref_windows"] == 2
