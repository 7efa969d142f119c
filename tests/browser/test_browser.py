"""The report and the viewer in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Every page is opened from a file:// URL; a test fails on any console error, uncaught exception, dialog (an
``alert`` from injected markup) or request that is not file:/data:/blob:. ``scripts/install-browser.sh``
installs the browser; without it these tests skip.
"""

from __future__ import annotations

import json
import os
import re
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
    heat = page.locator("#heatmap")
    left, top = (float(heat.get_attribute(f"data-{k}")) for k in ("left", "top"))
    heat.hover(position={"x": left + 1, "y": top + 1})
    assert page.locator("#cellinfo").inner_text().startswith("[CLS] → [CLS]: ")
    page.locator("#lines").hover(position={"x": 100, "y": 12})
    assert page.locator("#input-text").inner_text() == text
    assert page.locator('img[src="x"]').count() == 0
    w.close()


#: Records every canvas fillText call with the device-pixel point it lands on and whether it is rotated.
RECORD_TEXT = """
window.drawnText = [];
const fillText = CanvasRenderingContext2D.prototype.fillText;
CanvasRenderingContext2D.prototype.fillText = function (text, x, y, ...rest) {
  const m = this.getTransform(), p = m.transformPoint(new DOMPoint(x, y));
  window.drawnText.push({canvas: this.canvas.id, text: String(text), x: p.x, y: p.y, rotated: Math.abs(m.b) > 1e-6});
  return fillText.call(this, text, x, y, ...rest);
};
"""


def drawn_labels(page: Any, canvas: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The text drawn on ``canvas`` since the last call: (upright texts, rotated texts)."""
    drawn = page.evaluate(f"window.drawnText.splice(0).filter(t => t.canvas === {json.dumps(canvas)})")
    return [t for t in drawn if not t["rotated"]], [t for t in drawn if t["rotated"]]


def short_label(token: str) -> str:
    return token if len(token) <= 12 else f"{token[:11]}…"


def test_viewer_labels_the_chosen_heads_map_with_its_tokens(browser: Any, tiny_bert: Path, tmp_path: Path) -> None:
    from headscope.viewer import view

    out = view("The dog ate extraordinarily red books.", model=str(tiny_bert), out=tmp_path / "v.html",
               device="cpu")
    levels = json.loads(re.search(r'<script id="headscope-data" type="application/json">(.*?)</script>',
                                  out.read_text(encoding="utf-8"), re.S).group(1))["levels"]
    w = Watched(browser)
    w.page.add_init_script(RECORD_TEXT)
    page = w.open(out)
    dpr = page.evaluate("window.devicePixelRatio")
    heat = page.locator("#heatmap")
    queries = {}
    for level in ("word", "piece"):
        if level == "piece":
            page.evaluate("window.drawnText = []")
            page.check("input[value=piece]")
        tokens = levels[level]["tokens"]
        left, top, size, cell = (float(heat.get_attribute(f"data-{k}")) for k in ("left", "top", "size", "cell"))
        assert cell == pytest.approx(size / len(tokens)) and cell >= 10  # few tokens: cells tall enough to read
        upright, rotated = drawn_labels(page, "heatmap")
        # Query tokens down the left, one per row, centred on it; key tokens below the map, one per column.
        queries[level] = [t["text"] for t in upright]
        assert queries[level] == [short_label(t) for t in tokens]
        for i, t in enumerate(upright):
            assert t["x"] <= left * dpr and t["y"] == pytest.approx((top + (i + 0.5) * cell) * dpr, abs=0.5)
        assert [t["text"] for t in rotated] == [short_label(t) for t in tokens]
        for k, t in enumerate(rotated):
            assert t["y"] >= (top + size) * dpr and t["x"] == pytest.approx((left + (k + 0.5) * cell) * dpr, abs=0.5)
        caption = page.locator("#heat-caption").inner_text()
        assert f"all {len(tokens)} {level}s labelled" in caption and "query" in caption and "key" in caption
    assert len(levels["piece"]["tokens"]) > len(levels["word"]["tokens"])  # the two levels were both checked
    assert "extraordina…" in queries["word"] and "##x" in queries["piece"]  # long tokens are cut short
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
    # Too many tokens to label each: every step-th one is, and the caption says so.
    step = int(page.locator("#heatmap").get_attribute("data-label-step"))
    assert step > 1 and f"one label every {step} pieces" in page.locator("#heat-caption").inner_text()
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


def test_report_example_maps_are_scaled_per_map_and_named_by_file_name(browser: Any, tmp_path: Path) -> None:
    from headscope.analyses.examples import encode_float16
    from headscope.engine.results import RunResult

    # One kept 48-token sequence: head 0 spreads its attention evenly (every weight 1/48), head 1 attends to
    # itself only. On a fixed 0..1 colour scale the first would be all but white.
    n, directory = 48, "/home/user/.cache/headscope/corpora/ud/English-EWT"
    maps = np.stack([np.full((n, n), 1 / n), np.eye(n)])[None].astype(np.float16)
    example = {"index": 0, "kind": "sentence", "file": f"{directory}/en_ewt-ud-dev.conllu", "line": 7,
               "text": "w " * n, "pieces": [f"p{i}" for i in range(n)], "units": [f"p{i}" for i in range(n)],
               "unit_of_piece": list(range(n)), "shape": list(maps.shape), "dtype": "float16",
               "attention": encode_float16(maps)}
    out = RunResult(heads=pd.DataFrame({"layer": [0, 0], "head": [0, 1], "sep": [0.1, 0.2]}),
                    documents={"examples": {"examples": [example]}},
                    run={"model": {"name": "synthetic", "n_layers": 1, "n_heads": 2}}).save(tmp_path / "run")
    w = Watched(browser)
    page = w.open(build_report(out))

    def pixel(row: int, col: int) -> list[int]:
        """The colour the example map of the chosen head shows for query ``row``, key ``col``."""
        return page.evaluate("""([row, col, n]) => {
            const c = document.querySelector("#profile figure.example canvas");
            const x = Math.floor((col + 0.5) * c.width / n), y = Math.floor((row + 0.5) * c.height / n);
            return [...c.getContext("2d").getImageData(x, y, 1, 1).data.slice(0, 3)];
        }""", [row, col, n])

    darkest = [8, 48, 107]  # the top of the blues scale
    assert page.locator("#profile").get_attribute("data-head") == "L0H0"
    for row, col in ((0, 0), (10, 30), (47, 3)):
        assert pixel(row, col) == darkest  # a diffuse head is drawn up to its own largest weight
    caption = page.locator("#profile figure.example .where").inner_text()
    assert caption.startswith("en_ewt-ud-dev.conllu, line 7 · 48 tokens") and "this map's largest" in caption
    assert directory not in page.locator("#profile").inner_text()
    assert directory not in page.locator("section#examples").inner_text()
    assert "en_ewt-ud-dev.conllu, line 7" in page.locator("section#examples").inner_text()

    click_cell(page, "#grid", 0, 1)
    assert pixel(5, 5) == darkest and pixel(5, 6) == [255, 255, 255] and pixel(0, 47) == [255, 255, 255]
    w.close()


def test_viewer_page_works_inside_its_notebook_iframe(browser: Any, tiny_bert: Path, tmp_path: Path) -> None:
    from headscope.viewer import view

    text = f"She said {XSS[0]} twice."
    shown = view(text, model=str(tiny_bert), out=tmp_path / "view.html", device="cpu")
    w = Watched(browser)
    # What Jupyter does with _repr_html_: the markup placed into the notebook's own page.
    w.page.set_content(f"<!doctype html><body><p>notebook</p>{shown._repr_html_()}</body>")
    frame = w.page.frame_locator("iframe")
    assert frame.locator("#thumbs").get_attribute("data-head") == "L0H0"
    assert frame.locator("#input-text").inner_text() == text
    assert "all" in frame.locator("#heat-caption").inner_text()
    # Sandboxed without allow-same-origin: the page's script cannot reach the notebook's document.
    assert w.page.evaluate("document.querySelector('iframe').contentDocument") is None
    assert w.page.locator('img[src="x"]').count() == 0
    w.close()


# ---- the first screen at a laptop's width, on an encoder run and a decoder run ---------------------------

WIDTH = 1400


@pytest.fixture(scope="module")
def encoder_dir(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_report_sections import encoder_run

    return encoder_run(tiny_bert, tmp_path_factory.mktemp("browser-encoder") / "run")


@pytest.fixture(scope="module")
def decoder_dir(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_report_sections import decoder_run

    return decoder_run(tiny_llama, tmp_path_factory.mktemp("browser-decoder") / "run")


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_report_answers_first_and_fits_a_1400_pixel_window(browser: Any, kind: str, request: pytest.FixtureRequest
                                                           ) -> None:
    out: Path = request.getfixturevalue(f"{kind}_dir")
    w = Watched(browser, {"width": WIDTH, "height": 1000})
    page = w.open(out / "report" / "index.html")
    # The atlas is the first section, the head grid the second; the run's details are folded at the end.
    ids = page.evaluate("[...document.querySelectorAll('section.analysis')].map(s => s.id)")
    assert ids[:2] == ["atlas", "heads"] and ids[-1] == "details"
    assert page.locator("section#atlas h2").inner_text() == "What the heads do"
    assert page.locator("section#atlas").bounding_box()["y"] < 900  # on the first screen
    assert not page.locator("#details > details").evaluate("d => d.open")
    # Nothing is wider than the window: no horizontal scroll.
    assert page.evaluate("document.scrollingElement.scrollWidth") <= WIDTH
    # Every figure shows data that varies (its range is on the element), and every image loads.
    ranges = page.evaluate("[...document.querySelectorAll('section figure[data-figure]')].map(f => "
                           "[f.dataset.figure, +f.dataset.min, +f.dataset.max])")
    assert ranges and all(low < high for _, low, high in ranges), ranges
    assert page.locator("section figure:not([data-figure]):not(.example)").count() == 0
    assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    # The grid opens on a statistic the run measured that varies over the heads, and says what it means.
    grid = page.locator("#grid")
    stat = grid.get_attribute("data-stat")
    heads = pd.read_csv(out / "heads.csv")
    assert stat == ("sink_first" if kind == "decoder" else "sep") and heads[stat].nunique() > 1
    assert float(grid.get_attribute("data-min")) < float(grid.get_attribute("data-max"))
    assert page.locator("#colourbar").is_visible()
    assert page.locator("#stat-meaning").inner_text().startswith(f"{stat}: ")
    options = page.locator("#stat option").all_inner_texts()
    assert all(" – " in o for o in options if o.split(" – ")[0] in ("sep", "prev", "entropy", "sink_first"))
    w.close()


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_a_head_of_the_atlas_opens_its_profile_and_its_viewer_page(browser: Any, kind: str,
                                                                   request: pytest.FixtureRequest) -> None:
    out: Path = request.getfixturevalue(f"{kind}_dir")
    atlas = pd.read_csv(out / "atlas.csv")
    w = Watched(browser, {"width": WIDTH, "height": 1000})
    page = w.open(out / "report" / "index.html")
    labelled = atlas[atlas["group"] != "unlabelled"]
    link = page.locator("section#atlas a.head-link:visible").last
    name = link.get_attribute("data-head")
    assert name in set(atlas["head_name"])
    link.click()
    assert page.locator("#profile").get_attribute("data-head") == name
    for evidence in labelled.loc[labelled["head_name"] == name, "evidence"]:
        assert evidence in page.locator("#profile").inner_text()
    link = page.locator("#viewer-link")
    assert link.get_attribute("href").endswith(f"#{name}")
    with page.context.expect_page() as opened:
        link.click()
    viewer = opened.value
    viewer.wait_for_load_state("load")
    assert viewer.locator("#thumbs").get_attribute("data-head") == name
    assert name in viewer.locator("#big-title").inner_text()
    viewer.close()
    w.close()


def test_example_thumbnails_of_short_sequences_are_labelled_with_their_tokens(browser: Any, tmp_path: Path) -> None:
    from headscope.analyses.examples import encode_float16
    from headscope.engine.results import RunResult

    n = 8
    maps = np.stack([np.eye(n), np.full((n, n), 1 / n)])[None].astype(np.float16)
    pieces = ["[CLS]", "the", "dog", "saw", "the", "extraordinary", "cat", "[SEP]"]
    example = {"index": 0, "kind": "sentence", "file": "t.conllu", "line": 1, "text": "the dog saw the cat",
               "pieces": pieces, "units": pieces, "unit_of_piece": list(range(n)), "shape": list(maps.shape),
               "dtype": "float16", "attention": encode_float16(maps)}
    out = RunResult(heads=pd.DataFrame({"layer": [0, 0], "head": [0, 1], "sep": [0.1, 0.2]}),
                    documents={"examples": {"examples": [example]}},
                    run={"model": {"name": "synthetic", "n_layers": 1, "n_heads": 2}}).save(tmp_path / "run")
    w = Watched(browser, {"width": WIDTH, "height": 1000})
    w.page.add_init_script(RECORD_TEXT)
    page = w.open(build_report(out))
    canvas = page.locator("#profile figure.example canvas")
    assert canvas.get_attribute("data-labelled") == "true"
    drawn = page.evaluate("window.drawnText.filter(t => t.canvas === '').map(t => t.text)")
    assert [short for short in drawn[:n]] == ["[CLS]", "the", "dog", "saw", "the", "extraordi…", "cat", "[SEP]"]
    w.close()
