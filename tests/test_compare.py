"""``headscope compare``: per-head deltas, Welch tests of role changes, gained/lost roles, the page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from headscope.cli import main
from headscope.comparison import compare, long_deltas, role_changes
from headscope.engine.results import RunResult


def roles_table(scores: dict[tuple[int, int, str], np.ndarray], held: set[tuple[int, int, str]]) -> pd.DataFrame:
    """A roles.csv built from raw per-sentence scores (what the roles analysis keeps as sums)."""
    rows = []
    for (layer, head, role), s in scores.items():
        rows.append({"layer": layer, "head": head, "role": role, "n": len(s), "score_mean": s.mean(),
                     "score_var": s.var(ddof=1), "score_sum": s.sum(), "score_sumsq": np.square(s).sum(),
                     "has_role": (layer, head, role) in held})
    return pd.DataFrame(rows)


def fake_run(heads: pd.DataFrame, roles: pd.DataFrame | None, layers: int = 1, n_heads: int = 2,
             examples: int = 30) -> RunResult:
    tables = {"roles": roles} if roles is not None else {}
    return RunResult(heads=heads, tables=tables, run={"model": {"name": "m", "n_layers": layers, "n_heads": n_heads},
                                                      "counts": {"examples": examples}, "files": []})


@pytest.fixture(scope="module")
def tiny_run(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from headscope import run

    tmp = tmp_path_factory.mktemp("cmp")
    text = tmp / "corpus.txt"
    text.write_text("The dog saw the cat.\nThe cat ran to the house.\nShe said it was red.\n\n"
                    "A man and a woman saw the river.\nThe city was big and old.\nHe ran, she ran.\n",
                    encoding="utf-8")
    out = tmp / "run"
    run(model=str(tiny_bert), text=[str(text)], analyses=["surface", "roles"], out=str(out), quiet=True,
        report=False)
    return out


def test_run_compared_with_itself_shows_no_change(tiny_run: Path, tmp_path: Path) -> None:
    result = compare(tiny_run, tiny_run, min_n=2)
    assert len(result.heads) and (result.heads["delta"].dropna() == 0).all()
    assert set(result.heads["statistic"]) >= {"cls", "sep", "entropy"}
    roles = result.roles
    tested = roles["n_a"] > 1
    assert tested.any()
    assert (roles.loc[tested, "delta"] == 0).all() and (roles.loc[tested, "p"] == 1).all()
    assert not roles["significant"].any()
    assert set(roles["change"]) <= {"kept", "none"}
    assert result.summary["corpus_differences"] == []
    assert (result.layers["roles_gained"] == 0).all() and (result.layers["roles_lost"] == 0).all()


def test_welch_test_equals_scipy_on_the_raw_scores() -> None:
    rng = np.random.default_rng(1)
    raw_a = {(0, 0, "local"): rng.normal(3.0, 1.0, 40), (0, 1, "local"): rng.normal(2.0, 0.3, 25)}
    raw_b = {(0, 0, "local"): rng.normal(3.8, 2.0, 40), (0, 1, "local"): rng.normal(2.05, 0.3, 25)}
    got = role_changes(roles_table(raw_a, set()), roles_table(raw_b, set()), correction="none", min_n=25)
    for key in raw_a:
        want = stats.ttest_ind(raw_b[key], raw_a[key], equal_var=False)
        row = got[(got["layer"] == key[0]) & (got["head"] == key[1])].iloc[0]
        assert row["t"] == pytest.approx(want.statistic, rel=1e-9)
        assert row["p"] == pytest.approx(want.pvalue, rel=1e-9)
        assert row["delta"] == pytest.approx(raw_b[key].mean() - raw_a[key].mean())
    bh = role_changes(roles_table(raw_a, set()), roles_table(raw_b, set()), correction="bh", min_n=25)
    np.testing.assert_allclose(bh["p_adjusted"], stats.false_discovery_control(got["p"]))


def stats_table(rows: list[tuple[int, int, str, int, float, float, bool]]) -> pd.DataFrame:
    """A roles.csv from (layer, head, role, n, mean, var, has_role) rows."""
    return pd.DataFrame(rows, columns=["layer", "head", "role", "n", "score_mean", "score_var", "has_role"])


def flips() -> tuple[pd.DataFrame, pd.DataFrame]:
    """L0H0 local flips with no real change, L0H1 local changes a lot, L0H0 syntactic has 10 scores."""
    a = stats_table([(0, 0, "local", 100, 3.2, 1.0, True), (0, 1, "local", 100, 2.0, 1.0, False),
                     (0, 0, "syntactic", 10, 5.0, 1.0, True), (0, 1, "syntactic", 100, 4.0, 1.0, True)])
    b = stats_table([(0, 0, "local", 100, 3.1, 1.0, False), (0, 1, "local", 100, 4.0, 1.0, True),
                     (0, 0, "syntactic", 10, 1.0, 1.0, False), (0, 1, "syntactic", 100, 4.0, 1.0, True)])
    return a, b


def test_gained_and_lost_need_a_significant_change() -> None:
    got = role_changes(*flips(), correction="none").set_index(["layer", "head", "role"])
    # L0H0 local: t = (3.1 - 3.2) / sqrt(1/100 + 1/100) = -1/sqrt(2), Welch df = 198: p = 0.48, a mere flip.
    row = got.loc[(0, 0, "local")]
    assert row["t"] == pytest.approx(-1 / np.sqrt(2)) and row["p"] == pytest.approx(2 * stats.t.sf(1 / np.sqrt(2), 198))
    assert row["tested"] and not row["significant"] and row["change"] == "crossed_down"
    # L0H1 local: t = 2 / sqrt(0.02) = 14.1, significant, and has_role went False -> True: gained.
    row = got.loc[(0, 1, "local")]
    assert row["t"] == pytest.approx(2 / np.sqrt(0.02)) and row["significant"] and row["change"] == "gained"
    # L0H0 syntactic: a large drop, but 10 < min_n = 30 scores: not tested, so the flip is not "lost".
    row = got.loc[(0, 0, "syntactic")]
    assert not row["tested"] and np.isnan(row["t"]) and np.isnan(row["p"]) and not row["significant"]
    assert row["change"] == "crossed_down"
    assert got.loc[(0, 1, "syntactic"), "change"] == "kept"
    # With min_n = 10 the drop is tested: t = -4 / sqrt(0.2), significant, lost.
    low = role_changes(*flips(), correction="none", min_n=10).set_index(["layer", "head", "role"])
    assert low.loc[(0, 0, "syntactic"), "t"] == pytest.approx(-4 / np.sqrt(0.2))
    assert low.loc[(0, 0, "syntactic"), "change"] == "lost"
    # BH runs over the three tested p-values only.
    bh = role_changes(*flips(), correction="bh").set_index(["layer", "head", "role"])
    tested = got[got["tested"]]
    np.testing.assert_allclose(bh.loc[tested.index, "p_adjusted"], stats.false_discovery_control(tested["p"]))
    # A has_role flip the other way than the significant change is not a gain either.
    a, b = flips()
    b.loc[1, "has_role"], a.loc[1, "has_role"] = False, True  # L0H1 local: True -> False while the mean rises
    assert role_changes(a, b).set_index(["layer", "head", "role"]).loc[(0, 1, "local"), "change"] == "crossed_down"
    with pytest.raises(ValueError, match="min_n"):
        role_changes(a, b, min_n=1)


def test_page_lists_significant_changes_apart_from_mere_crossings(tmp_path: Path) -> None:
    heads = pd.DataFrame({"layer": [0, 0], "head": [0, 1], "cls": [0.1, 0.2]})
    a, b = flips()
    result = compare(fake_run(heads, a), fake_run(heads, b))
    s = result.summary
    assert s["roles_gained"] == {"local": 1} and s["roles_lost"] == {}
    assert s["roles_crossed_not_significant"] == {"crossed_up": {}, "crossed_down": {"local": 1, "syntactic": 1}}
    assert s["role_changes_not_tested"] == 1 and s["min_n"] == 30
    layer = result.layers.iloc[0]
    assert (layer["roles_gained"], layer["roles_lost"], layer["roles_crossed_not_significant"]) == (1, 0, 2)
    page = (result.save(tmp_path / "cmp") / "report" / "index.html").read_text(encoding="utf-8")
    gained, crossed = page.split("<h3>Roles gained and lost (significant change)</h3>")[1].split(
        "<h3>Crossed the threshold, change not significant</h3>")
    assert "L0H1" in gained and "L0H0" not in gained
    assert "L0H0" in crossed.split("<h3>")[0] and "L0H1" not in crossed.split("<h3>")[0]
    assert "Roles gained: 1, lost: 0" in page and "Not tested: 1 of 4 head x role changes" in page


def test_long_deltas_keep_text_keys_and_skip_rows_of_one_run() -> None:
    a = pd.DataFrame({"relation": ["nsubj", "obj", "nsubj"], "direction": ["dep2head"] * 3,
                      "layer": [0, 0, 1], "head": [0, 0, 0], "accuracy": [0.5, 0.25, 0.1], "n": [10, 4, 10]})
    b = a.iloc[:2].assign(accuracy=[0.75, 0.25], n=[10, 4])
    got = long_deltas(a, b)
    assert list(got.columns) == ["layer", "head", "relation", "direction", "statistic", "a", "b", "delta"]
    acc = got[got["statistic"] == "accuracy"].set_index("relation")["delta"]
    assert acc.to_dict() == {"nsubj": 0.25, "obj": 0.0}
    assert len(got) == 4  # the layer-1 row exists in A only


def test_different_shapes_are_refused_and_corpus_differences_reported() -> None:
    heads = pd.DataFrame({"layer": [0, 0], "head": [0, 1], "cls": [0.1, 0.2]})
    with pytest.raises(ValueError, match="differ in shape"):
        compare(fake_run(heads, None), fake_run(heads, None, n_heads=3))
    other = compare(fake_run(heads, None), fake_run(heads.assign(cls=[0.3, 0.2]), None, examples=31))
    assert other.roles is None
    assert other.heads["delta"].tolist() == pytest.approx([0.2, 0.0])
    assert any("examples" in p for p in other.summary["corpus_differences"])


def test_cli_writes_tables_and_a_page_laid_out_as_a_report(tiny_run: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", str(tiny_run), str(tiny_run), "--out", str(out), "--correction", "none",
                 "--min-n", "2"]) == 0
    for name in ("compare_heads.csv", "compare_roles.csv", "compare_layers.csv", "compare.json", "report/index.html"):
        assert (out / name).is_file(), name
    printed = capsys.readouterr().out
    # The summary is sentences, not Python dicts.
    assert "{" not in printed and "roles gained: none; lost: none" in printed and "report/index.html" in printed
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert 'src="http' not in page and "What changed" in page and "<details>" in page
    # A run compared with itself changes nothing: sentences, not maps of zeros.
    assert not list((out / "figures").glob("*.png")) if (out / "figures").exists() else True
    assert "no role score changed" in page and "for every head (no spread over heads, so no map)" in page
    roles = pd.read_csv(out / "compare_roles.csv")
    assert not roles["significant"].any()
    assert roles.loc[roles["tested"], "p"].eq(1).all() and roles["tested"].any()
    assert (roles.loc[~roles["tested"], "n_a"] < 2).all()


@pytest.mark.integration
def test_minilm_against_its_fine_tuned_version(minilm: str, shared: Path, tmp_path: Path) -> None:
    import importlib.util

    from headscope import run

    if importlib.util.find_spec("sre_embedding_model") is None:
        pytest.skip("sre-embedding-model is not installed")
    treebank = str(shared / "data" / "ud-english-ewt" / "en_ewt-ud-dev.conllu")
    dirs = []
    for model in (minilm, "minilm-finetuned"):
        out = tmp_path / model
        run(model=model, treebank=[treebank], max_sentences=20, analyses=["surface", "roles"], out=str(out),
            quiet=True, report=False)
        dirs.append(out)
    result = compare(*dirs)
    assert result.summary["corpus_differences"] == []
    assert len(result.roles) == 6 * 12 * result.roles["role"].nunique()
    assert (result.roles["n_a"] == result.roles["n_b"]).all()  # same sentences for every role
    assert result.heads["delta"].abs().max() > 0  # fine-tuning changed the attention


def test_page_and_summary_state_the_minimum_even_when_every_change_is_tested(tmp_path: Path) -> None:
    heads = pd.DataFrame({"layer": [0, 0], "head": [0, 1], "cls": [0.1, 0.2]})
    a, b = flips()
    result = compare(fake_run(heads, a), fake_run(heads, b), min_n=10)  # every row has >= 10 scores
    assert result.summary["role_changes_not_tested"] == 0 and result.summary["min_n"] == 10
    assert "min_n = 10" in result.summary["roles_gained_lost"]
    page = (result.save(tmp_path / "cmp") / "report" / "index.html").read_text(encoding="utf-8")
    assert "at least min_n = 10 scores" in page and "Not tested" not in page


def test_no_role_gained_or_lost_is_a_sentence_not_an_all_zero_chart(tmp_path: Path) -> None:
    """Role scores move by layer (layer 0 by 0.5, layer 1 by 0), no role is gained or lost: the page draws the
    scores' panel only and says the constant one in a sentence."""
    rng = np.random.default_rng(0)
    base = {(layer, 0, "local"): rng.normal(1.0, 0.1, 40) for layer in (0, 1)}
    moved = {key: s + (0.5 if key[0] == 0 else 0.0) for key, s in base.items()}
    heads = pd.DataFrame({"layer": [0, 1], "head": [0, 0], "cls": [0.1, 0.2]})
    result = compare(fake_run(heads, roles_table(base, set()), layers=2, n_heads=1),
                     fake_run(heads, roles_table(moved, set()), layers=2, n_heads=1))
    assert result.layers["mean_abs_delta_role_score"].tolist() == pytest.approx([0.5, 0.0])
    assert (result.layers[["roles_gained", "roles_lost"]] == 0).all().all()
    out = result.save(tmp_path / "cmp")
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert "By layer: no role was gained or lost in any layer." in page
    svg = (out / "figures" / "compare_layers.svg").read_text(encoding="utf-8")
    assert "mean |delta score|" in svg and "gained" not in svg  # one panel: the one that varies
