"""Jupyter display: a run's summary (``RunResult._repr_html_``) and the viewer page inline (``ViewPage``)."""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import pandas as pd
import pytest

import headscope.viewer as viewer
from headscope.engine.results import HTML_HEAD_ROWS, RunResult
from test_report import XSS, xss_run


@pytest.fixture(scope="module")
def run_and_dir(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, Path]:
    out = tmp_path_factory.mktemp("notebook") / "run"
    return xss_run(tiny_bert, out), out


def heads_table_rows(markup: str) -> list[list[str]]:
    """The body rows of the ``headscope-heads`` table in ``markup``, as cell texts."""
    table = re.search(r'<table[^>]*class="[^"]*headscope-heads[^"]*".*?</table>', markup, re.S)
    assert table is not None, "no heads table"
    body = re.search(r"<tbody>(.*?)</tbody>", table.group(0), re.S)
    assert body is not None
    return [[html.unescape(c).strip() for c in re.findall(r"<td>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", body.group(1), re.S)]


def test_run_result_shows_a_compact_summary_with_the_heads_table_and_report(
        run_and_dir: tuple[RunResult, Path]) -> None:
    result, out = run_and_dir
    markup = result._repr_html_()
    model = result.run["model"]["name"]
    assert html.escape(model) in markup
    assert "2 x 4" in markup
    assert "surface, examples" in markup or "examples, surface" in markup
    assert f"examples {result.run['counts']['examples']}" in markup
    # The top of the heads table: its first rows, in order, with their layer and head.
    rows = heads_table_rows(markup)
    shown = min(HTML_HEAD_ROWS, len(result.heads))
    assert [(int(r[0]), int(r[1])) for r in rows] == list(
        zip(result.heads["layer"][:shown], result.heads["head"][:shown], strict=True))
    assert "<th>sep</th>" in markup and "heads; all of them" not in markup  # 8 heads: all shown
    assert len(heads_table_rows(result._repr_html_(rows=3))) == 3
    assert "first 3 of 8 heads" in result._repr_html_(rows=3)
    report = out / "report" / "index.html"
    assert result.report_path == report and str(report) in markup and report.resolve().as_uri() in markup

    # Read back from its directory, the run still knows its report; kept in memory only, it has none.
    assert str(report) in RunResult.load(out)._repr_html_()
    memory = RunResult(heads=result.heads, run=result.run)
    assert memory.report_path is None and heads_table_rows(memory._repr_html_())
    assert "index.html" not in memory._repr_html_()


def test_run_result_summary_escapes_names_and_copes_without_heads() -> None:
    empty = RunResult(heads=pd.DataFrame(columns=["layer", "head"]),
                      run={"model": {"name": XSS[0], "n_layers": 1, "n_heads": 2}})
    markup = empty._repr_html_()
    assert XSS[0] not in markup and html.escape(XSS[0]) in markup and "1 x 2" in markup


def test_view_page_is_shown_inline_and_still_acts_as_a_path(tiny_bert: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "view.html"
    page = viewer.view(f"She said {XSS[0]} twice.", model=str(tiny_bert), out=out, device="cpu")
    # What callers of the old return value (a Path) rely on.
    assert page.path == out and page == out and str(page) == str(out) and os.fspath(page) == str(out)
    assert Path(page) == out and page.resolve() == out.resolve() and page.name == "view.html"
    text = out.read_text(encoding="utf-8")
    assert page.read_text(encoding="utf-8") == text

    markup = page._repr_html_()
    frame = re.fullmatch(r'<iframe srcdoc="([^"]*)" sandbox="allow-scripts" [^>]*></iframe>', markup)
    assert frame is not None, markup[:200]
    assert html.unescape(frame.group(1)) == text  # the whole page, intact once the attribute is parsed
    assert "<script" not in frame.group(1)  # escaped: nothing of the page is markup of the notebook

    monkeypatch.setattr(viewer, "INLINE_MAX_BYTES", 1000)
    linked = page._repr_html_()
    assert "<iframe" not in linked and out.resolve().as_uri() in linked and "too large" in linked
