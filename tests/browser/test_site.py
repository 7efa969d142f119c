"""The documentation site in a real headless Chromium, opened from disk (file://, no server).

``scripts/test.sh`` builds the site (``bash scripts/docs.sh``) before pytest. The test follows every link of
the navigation, checks each page loads with its title and no console error, uncaught exception or request
that is not file:/data:/blob:, and runs an offline search. Skipped when the site is not built or Chromium is
absent.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

SITE = Path(__file__).resolve().parents[2] / "site"
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).is_file()), None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
LOCAL = ("file:", "data:", "blob:", "about:")


@pytest.fixture(scope="module")
def page() -> Iterator[tuple[Any, list[str]]]:
    if not (SITE / "index.html").is_file():
        if os.environ.get("CI"):
            pytest.fail("site/ is not built (scripts/test.sh runs scripts/docs.sh first)")
        pytest.skip("site/ is not built (bash scripts/docs.sh)")
    if CHROMIUM is None:
        pytest.skip("no chromium binary (run scripts/install-browser.sh)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        problems: list[str] = []
        tab.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
        tab.on("pageerror", lambda e: problems.append(f"exception: {e}"))
        tab.on("request", lambda r: r.url.startswith(LOCAL) or problems.append(f"request: {r.url}"))
        yield tab, problems
        browser.close()


def nav_links(tab: Any) -> list[str]:
    """Every page linked from the navigation (the primary sidebar), as absolute file:// URLs."""
    hrefs = tab.eval_on_selector_all("nav.md-nav--primary a.md-nav__link[href]", "els => els.map(e => e.href)")
    return sorted({h.split("#")[0] for h in hrefs if h.startswith("file:")})


def test_every_page_of_the_navigation_opens_without_an_error(page: tuple[Any, list[str]]) -> None:
    tab, problems = page
    tab.goto((SITE / "index.html").as_uri())
    links = nav_links(tab)
    # Home, getting started, the reference pages and the explanation pages at least.
    assert len(links) >= 20, links
    for name in ("getting-started.html", "reference/cli.html", "reference/api.html", "reference/outputs.html",
                 "design.html", "how-to/run-json.html"):
        assert any(link.endswith(name) for link in links), name
    for link in links:
        problems.clear()
        response = tab.goto(link)
        assert response is None or response.ok, link
        assert Path(link.removeprefix("file://")).is_file(), link
        assert tab.locator("article h1").count() >= 1, f"{link}: no title"
        assert problems == [], f"{link}: {problems}"


def test_the_gallery_pages_open_with_their_screenshot(page: tuple[Any, list[str]]) -> None:
    """The gallery's per-model pages are linked from its index, not from the navigation."""
    tab, problems = page
    tab.goto((SITE / "gallery" / "index.html").as_uri())
    links = sorted({h.split("#")[0] for h in tab.eval_on_selector_all(
        "article a[href$='.html']", "els => els.map(e => e.href)") if "/gallery/" in h})
    for link in links:
        problems.clear()
        tab.goto(link)
        image = tab.locator("article img").first
        assert image.count() == 1, link
        assert tab.evaluate("img => img.complete && img.naturalWidth > 0", image.element_handle()), link
        assert problems == [], f"{link}: {problems}"


def test_the_reference_pages_hold_the_generated_tables(page: tuple[Any, list[str]]) -> None:
    tab, problems = page
    tab.goto((SITE / "reference" / "cli.html").as_uri())
    assert tab.locator("h2#headscope-run").count() == 1
    assert tab.get_by_text("--roles-tau", exact=True).count() >= 1
    tab.goto((SITE / "reference" / "outputs.html").as_uri())
    assert tab.locator("h2#headscsv").count() == 1
    assert tab.get_by_text("syntax_best_accuracy", exact=True).count() >= 1
    tab.goto((SITE / "reference" / "api.html").as_uri())
    assert tab.locator("[id='headscope.config.RunConfig']").count() >= 1
    assert problems == []


def test_search_works_offline(page: tuple[Any, list[str]]) -> None:
    tab, problems = page
    problems.clear()
    tab.goto((SITE / "index.html").as_uri())
    tab.keyboard.press("/")  # the theme's shortcut that opens the search box
    tab.locator("input.md-search__input").press_sequentially("induction", delay=30)  # key events, as typed
    results = tab.locator(".md-search-result__item")
    results.first.wait_for(timeout=15000)
    assert results.count() >= 1
    assert "matching document" in tab.locator(".md-search-result__meta").inner_text()
    assert "induction" in tab.locator(".md-search-result").inner_text().lower()
    # A result opens its page, from disk.
    first = results.first.locator("a").first.get_attribute("href") or ""
    assert first.startswith("file:") and Path(first.split("?")[0].removeprefix("file://")).is_file(), first
    assert problems == [], problems
