"""The report and the viewer in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Every page is opened from a file:// URL; a test fails on any console error, uncaught exception, dialog (an
``alert`` from injected markup) or request that is not file:/data:/blob:. ``scripts/install-browser.sh``
installs the browser; without it these tests skip.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from headscope.report.build import build_report
from test_report import XSS, xss_run

pytestmark = pytest.mark.browser

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).is_file()), None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL = ("file:", "data:", "blob:", "about:")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        if os.environ.get("CI"):  # CI installs the browser: a skip there would hide a broken install
            pytest.fail("no chromium binary in CI (scripts/install-browser.sh should have installed it)")
        pytest.skip("no chromium binary (run scripts/install-browser.sh)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Watched:
    """A page plus every problem it reported: console errors, exceptions, dialogs, network requests."""

    def __init__(self, browser: Any, viewport: dict[str, int] | None = None) -> None:
        self.page = browser.new_page(viewport=viewport or {"width": 1280, "height": 900})
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"exception: {e}"))
        self.page.on("request", lambda r: r.url.startswith(LOCAL) or self.problems.append(f"request: {r.url}"))

        def dialog(d: Any) -> None:
            self.problems.append(f"dialog: {d.message}")
            d.dismiss()

        self.page.on("dialog", dialog)

    def open(self, path: Path) -> Any:
        self.page.goto(path.resolve().as_uri(), wait_until="load")
        return self.page

    def close(self) -> None:
        self.page.close()
        assert self.problems == []


def click_cell(page: Any, canvas: str, layer: int, head: int) -> None:
    """Click the centre of a head's cell on a grid canvas (its data-left/top/cell attributes say where)."""
    box = page.locator(canvas)
    left, top, cell = (float(box.get_attribute(f"data-{k}")) for k in ("left", "top", "cell"))
    box.click(position={"x": left + (head + 0.5) * cell, "y": top + (layer + 0.5) * cell})


@pytest.fixture(scope="module")
def run_dir(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("browser") / "run"
    xss_run(tiny_bert, out)
    # A per-head table of a user's own (roles.csv's key columns), to see any such table reach the profile.
    pd.DataFrame({"layer": [1, 1, 0], "head": [2, 2, 0], "role": ["local", "delimiter", "block"],
                  "score_mean": [0.4, 0.9, 0.5], "significant": [True, True, False]}).to_csv(
        out / "my_roles.csv", index=False)
    # The report reads only the files run.json lists as the run's own, so the table is listed there.
    # A statistic equal for every head, which the explorer must show but neither rank nor map.
    heads = pd.read_csv(out / "heads.csv")
    heads["flat"] = 0.5
    heads.to_csv(out / "heads.csv", index=False)
    run_file = out / "run.json"
    run = json.loads(run_file.read_text(encoding="utf-8"))
    run["outputs"] = sorted([*run["outputs"], "my_roles.csv"])
    run_file.write_text(json.dumps(run), encoding="utf-8")
    build_report(out)
    return out


def test_report_explorer_clicks_a_head_and_shows_corpus_text_as_text(browser: Any, run_dir: Path) -> None:
    w = Watched(browser)
    page = w.open(run_dir / "report" / "index.html")
    assert page.locator("#profile").get_attribute("data-head") == "L0H0"
    before = page.locator("#profile").inner_text()

    click_cell(page, "#grid", 1, 2)
    assert page.locator("#profile").get_attribute("data-head") == "L1H2"
    assert "Head L1H2" in page.locator("#profile-title").inner_text()
    after = page.locator("#profile").inner_text()
    assert after != before
    assert "no significant row for this head" in before
    roles = page.locator("#profile table", has=page.locator("th", has_text="role"))
    assert roles.locator("tr").all_inner_texts()[1:] == ["delimiter\t0.900\ttrue", "local\t0.400\ttrue"]
    assert page.locator("#profile figure.example canvas").count() == 3

    page.keyboard.press("ArrowLeft")  # the grid keeps focus after the click
    assert page.locator("#profile").get_attribute("data-head") == "L1H1"

    legend = page.locator("#legend").inner_text()
    page.select_option("#stat", "entropy")
    assert page.locator("#legend").inner_text().startswith("entropy") and legend.startswith("sep")

    body = page.locator("body").inner_text()
    for probe in XSS:
        assert probe in body
    assert page.locator('img[src="x"]').count() == 0
    assert page.evaluate("document.querySelectorAll('script').length") == 2  # the data block and ours
    assert page.locator("section#surface img").count() > 0
    assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    w.close()


def test_viewer_page_switches_heads_and_levels(browser: Any, tiny_bert: Path, tmp_path: Path) -> None:
    from headscope.viewer import view

    text = f"She said {XSS[0]} and {XSS[1]} twice."
    out = view(text, model=str(tiny_bert), out=tmp_path / "view.html", device="cpu")
    w = Watched(browser)
    page = w.open(out)
    assert page.locator("#thumbs").get_attribute("data-head") == "L0H0"
    click_cell(page, "#thumbs", 1, 3)
    assert page.locator("#thumbs").get_attribute("data-head") == "L1H3"
    assert "L1H3" in page.locator("#big-title").inner_text()
    page.check("input[value=piece]")
    assert page.locator("#selected").inner_text() == "L1H3 · pieces"
    page.locator("#heatmap").hover(position={"x": 1, "y": 1})
    assert page.locator("#cellinfo").inner_text().startswith("[CLS] → [CLS]: ")
    page.locator("#lines").hover(position={"x": 100, "y": 12})
    assert page.locator("#input-text").inner_text() == text
    assert page.locator('img[src="x"]').count() == 0
    w.close()


def test_viewer_draws_512_tokens_and_144_heads(browser: Any, tmp_path: Path) -> None:
    from headscope.viewer import render_view, view_data

    n, units, layers, heads = 512, 384, 12, 12
    rng = np.random.default_rng(0)

    def maps(size: int) -> np.ndarray:
        out = np.empty((layers, heads, size, size), dtype=np.float16)
        for layer in range(layers):
            block = rng.random((heads, size, size), dtype=np.float32) ** 8
            out[layer] = block / block.sum(-1, keepdims=True)
        return out

    example = SimpleNamespace(pieces=[f"p{i}" for i in range(n)], units=[f"w{i}" for i in range(units)],
                              file="<synthetic>", line=1)
    page_file = tmp_path / "big.html"
    page_file.write_text(render_view(view_data(example, maps(n), maps(units), {"name": "synthetic", "n_layers": layers,
                                                                              "n_heads": heads}, "x", [])))
    w = Watched(browser)
    t0 = time.perf_counter()
    page = w.open(page_file)
    loaded_s = time.perf_counter() - t0
    render_ms = float(page.locator("body").get_attribute("data-render-ms"))
    t1 = time.perf_counter()
    page.check("input[value=piece]")
    click_cell(page, "#thumbs", 11, 11)
    assert page.locator("#thumbs").get_attribute("data-head") == "L11H11"
    switch_s = time.perf_counter() - t1
    print(f"512 tokens x 144 heads: {page_file.stat().st_size / 1e6:.1f} MB page, load {loaded_s:.1f} s, "
          f"first draw {render_ms:.0f} ms, piece level + head switch {switch_s:.1f} s")
    # Generous bounds for a shared CI machine; a DOM element per cell would take minutes here.
    assert render_ms < 20000 and switch_s < 30
    w.close()


def test_report_explorer_sorts_heads_and_does_not_rank_a_constant(browser: Any, run_dir: Path) -> None:
    w = Watched(browser)
    page = w.open(run_dir / "report" / "index.html")
    n_heads = len(pd.read_csv(run_dir / "heads.csv"))
    page.select_option("#stat", "sep")
    highest = page.locator("#top-heads button").all_inner_texts()
    assert len(highest) == min(8, n_heads)
    page.select_option("#sort-order", "lowest")
    lowest = page.locator("#top-heads button").all_inner_texts()
    value = lambda text: float(text.split()[-1])  # noqa: E731
    assert value(lowest[0]) <= value(highest[-1]) and value(lowest[0]) <= value(lowest[-1])
    page.check("#sort-all")
    assert page.locator("#top-heads button").count() == n_heads

    page.select_option("#stat", "flat")
    assert "for every head" in page.locator("#legend").inner_text()
    assert page.locator("#top-heads button").count() == 0
    flat = page.locator("#profile tr", has=page.locator("td", has_text="flat")).inner_text()
    assert "same for all heads" in flat
    w.close()
