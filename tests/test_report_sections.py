"""The report's sections live in ``report/sections`` (one module per analysis), never in the analyses; every
figure shows data that varies; heat maps share one orientation; text is readable at one column's width."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from headscope.analyses import REGISTRY, Analysis
from headscope.engine.results import RunResult
from headscope.report.heatmap import FONT, heatmap_svg
from headscope.report.section import SectionFigures
from headscope.report.sections import SECTIONS, meaning
from test_report import write_xss_treebank

SRC = Path(__file__).resolve().parents[1] / "src" / "headscope"
ANALYSES = SRC / "analyses"

#: Markup that has no place in an analysis: it writes tables and a summary, the report writes HTML.
TAGS = ("<p>", "<p ", "<table", "<div", "<tr>", "<td>", "<th>", "<figure", "<h2", "<h3", "<ul>", "<li>", "<b>",
        "<i>", "<br", "<section", "<code>")


def imported(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", sorted(ANALYSES.rglob("*.py")), ids=lambda p: str(p.relative_to(ANALYSES)))
def test_analyses_hold_no_report_code(path: Path) -> None:
    where = path.relative_to(SRC.parents[1])
    bad = sorted(m for m in imported(path) if m.split(".")[0] == "matplotlib" or m == "headscope.report"
                 or m.startswith("headscope.report."))
    assert not bad, f"{where} imports {', '.join(bad)}: figures and HTML belong in headscope/report/sections"
    text = path.read_text(encoding="utf-8")
    tags = [t for t in TAGS if t in text]
    assert not tags, f"{where} contains HTML ({', '.join(tags)}): the section goes in headscope/report/sections"


def test_sections_are_registered_by_analysis_and_no_analysis_has_a_report_method() -> None:
    assert not hasattr(Analysis, "report")
    for name, cls in REGISTRY.items():
        assert "report" not in vars(cls), f"{cls.__name__} defines report(): move it to report/sections/{name}.py"
    assert set(SECTIONS) <= set(REGISTRY)
    # Every packaged analysis has a section of its own, found by its name (report/sections/<name>.py); one
    # registered elsewhere without such a module gets the generic one.
    packaged = {name for name, cls in REGISTRY.items() if cls.__module__.startswith("headscope.analyses.")}
    assert packaged == set(SECTIONS)
    sections = Path(__file__).resolve().parents[1] / "src" / "headscope" / "report" / "sections"
    assert {p.stem for p in sections.glob("*.py")} - {"__init__"} == set(SECTIONS)


def test_an_analysis_without_a_section_of_its_own_gets_the_generic_one(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from headscope.report.build import collect_sections

    name = "span"  # as an analysis registered without a section would be
    monkeypatch.delitem(SECTIONS, name)
    run = RunResult(heads=pd.DataFrame(), run={"analyses": {name: {"heads": 8, "note": "<b>x</b>", "nested": {}}}})
    (section,) = collect_sections(run, tmp_path)
    assert section.key == name and "<th>heads</th><td>8</td>" in section.html and "&lt;b&gt;x&lt;/b&gt;" in section.html
    assert "nested" not in section.html


def test_columns_say_what_they_mean() -> None:
    for column in ("sep", "prev", "entropy", "sink_first", "induction", "importance", "syntax_best_accuracy",
                   "role_local", "retrieval_score", "coref_accuracy", "rel_m1"):
        assert meaning(column), column


# ---- figures ---------------------------------------------------------------------------------------------

def test_a_map_without_spread_is_a_sentence_and_one_with_spread_a_figure(tmp_path: Path) -> None:
    figs = SectionFigures(tmp_path)
    constant = figs.head_map(np.full((2, 3), 0.25), "flat", "flat statistic", "flat")
    assert "0.25 for every head" in constant and "<figure" not in constant
    empty = figs.head_map(np.full((2, 3), np.nan), "empty", "empty statistic", "empty")
    assert "defined for no head" in empty and "<figure" not in empty
    grid = np.arange(6.0).reshape(2, 3)
    drawn = figs.head_map(grid, "ramp", "ramp", "a ramp")
    assert 'data-min="0"' in drawn and 'data-max="5"' in drawn
    assert figs.names == ["ramp"] and sorted(p.name for p in tmp_path.iterdir()) == ["ramp.png", "ramp.svg"]
    plotted = figs.plot(lambda: pytest.fail("a constant figure must not be drawn"), "p", "p", [1.0, 1.0],
                        "the same everywhere")
    assert "the same everywhere" in plotted


def _cells(svg: str) -> list[tuple[float, float]]:
    root = ET.fromstring(svg)
    group = next(root.iter("{http://www.w3.org/2000/svg}g"))
    return [(float(r.get("x")), float(r.get("y"))) for r in group.iter("{http://www.w3.org/2000/svg}rect")]


def test_heat_maps_put_layer_0_on_top_and_label_every_head() -> None:
    grid = np.arange(36.0).reshape(3, 12)
    svg = heatmap_svg(grid, "t", label="x")
    cells = _cells(svg)
    ys = [y for _, y in cells]
    assert ys[0] < ys[12] < ys[24]  # row 0 (layer 0) drawn first, at the top
    texts = [t.text for t in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}text")]
    assert all(str(h) in texts for h in range(12)) and all(str(la) in texts for la in range(3))
    # 32 heads do not fit one label each at one column's width: every head ticked, labels thinned.
    wide = heatmap_svg(np.random.default_rng(0).random((4, 32)), "t")
    root = ET.fromstring(wide)
    ticks = [ln for ln in root.iter("{http://www.w3.org/2000/svg}line")]
    assert len(ticks) >= 32 + 4


def test_colour_bar_ticks_and_label_stay_inside_the_figure() -> None:
    grid = np.linspace(-0.0025, 0.0025, 24).reshape(2, 12)
    svg = heatmap_svg(grid, "delta", cmap="RdBu_r", label="B - A", vmin=-0.0025, vmax=0.0025)
    root = ET.fromstring(svg)
    width = float(root.get("viewBox").split()[2])
    for t in root.iter("{http://www.w3.org/2000/svg}text"):
        if t.get("transform", "").startswith("translate") and t.text == "B - A":
            x = float(re.match(r"translate\(([\d.]+)", t.get("transform")).group(1))
            assert x + FONT <= width
        elif t.get("x") is not None and t.get("text-anchor") is None:  # colour bar ticks, left-aligned
            assert float(t.get("x")) + len(t.text) * 0.64 * FONT <= width + 0.5, t.text


# ---- a run with many analyses ----------------------------------------------------------------------------

def encoder_run(model: Path, out: Path) -> Path:
    """A tiny encoder run with the analyses whose sections draw figures (roles tested from 2 units on)."""
    from headscope import run

    treebank = write_xss_treebank(out.parent)
    text = out.parent / "encoder.txt"
    text.write_text("The dog saw the cat. The cat ran to the house.\nShe said it was red. The king ate a book.\n\n"
                    "A man and a woman saw the river. The city was big and old.\nHe ran, she ran.\n",
                    encoding="utf-8")
    run(model=str(model), treebank=[str(treebank)], text=[str(text)],
        analyses=["surface", "examples", "roles", "distance", "similarity", "syntax", "importance"],
        out=str(out), quiet=True, example_maps=3, roles_min_n=2, roles_tau=1.0, role_rule="mean",
        importance_sequences=4)
    return out


def decoder_run(model: Path, out: Path) -> Path:
    """A tiny decoder-LM run: surface statistics, decoder head scores, patterns, example maps."""
    from headscope import run

    text = out.parent / "decoder.txt"
    text.write_text("The dog saw the cat and the cat saw the dog.\nThe king ate a book. The queen ate a book.\n\n"
                    "A man and a woman saw the river and the city.\nHe ran, she ran, they ran.\n", encoding="utf-8")
    run(model=str(model), text=[str(text)], analyses=["surface", "examples", "decoder_heads", "distance"],
        out=str(out), quiet=True, example_maps=2, decoder_induction_probe=2, decoder_induction_length=6)
    return out


@pytest.fixture(scope="module")
def encoder_dir(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return encoder_run(tiny_bert, tmp_path_factory.mktemp("sections") / "run")


def figure_fonts(svg: str) -> list[float]:
    """Every font size of an SVG written by the heat map or by matplotlib (points)."""
    return [float(x) for x in re.findall(r"font(?:-size)?:\s*([\d.]+)px", svg)]


def test_every_figure_is_drawn_from_varying_data_with_text_of_7_points_at_least(encoder_dir: Path) -> None:
    page = (encoder_dir / "report" / "index.html").read_text(encoding="utf-8")
    figures = re.findall(r"<figure([^>]*)>", page)
    assert len(figures) >= 10
    for attributes in figures:
        low = float(re.search(r'data-min="([^"]+)"', attributes).group(1))
        high = float(re.search(r'data-max="([^"]+)"', attributes).group(1))
        assert low < high, attributes
    names = {p.stem for p in (encoder_dir / "figures").glob("*.svg")}
    assert {"roles_grid", "importance_heads", "similarity_mds_layer", "distance_profile"} <= names
    for svg in (encoder_dir / "figures").glob("*.svg"):
        sizes = figure_fonts(svg.read_text(encoding="utf-8"))
        assert sizes and min(sizes) >= 7, (svg.name, min(sizes, default=None))


def test_the_report_opens_with_the_atlas_then_the_grid_and_ends_with_the_details(encoder_dir: Path) -> None:
    page = (encoder_dir / "report" / "index.html").read_text(encoding="utf-8")
    atlas = pd.read_csv(encoder_dir / "atlas.csv")
    main = page.split("<main>")[1].split("</main>")[0]
    assert main.index('id="atlas"') < main.index('id="heads"')
    assert re.findall(r'<section class="analysis" id="([^"]+)"', page)[:2] == ["atlas", "heads"]
    assert "What the heads do" in page and "<h1>" + str(encoder_dir.parent) not in page
    for r in atlas[atlas["group"] != "unlabelled"].itertuples():
        assert f'data-head="{r.head_name}"' in page
    details = page.split("id='details'")[1]
    assert "<details>" in details and "Timings" in details and "Corpus files" in details and "Capture" in details
    assert "Timings" not in page.split("id='details'")[0]


def test_the_grid_opens_on_a_measured_statistic_that_varies_and_says_what_each_means(encoder_dir: Path) -> None:
    from test_report import page_data

    data = page_data(encoder_dir / "report" / "index.html")
    heads = pd.read_csv(encoder_dir / "heads.csv")
    default = data["default_column"]
    assert default == "sep" and heads[default].nunique() > 1
    assert all(c["label"] for c in data["columns"] if c["name"] in ("sep", "prev", "entropy", "role_local"))


def test_each_kept_sequence_has_a_viewer_page(encoder_dir: Path) -> None:
    from test_report import page_data

    data = page_data(encoder_dir / "report" / "index.html")
    assert data["viewer_pages"] == [f"view/example-{k}.html" for k in range(len(data["examples"]))]
    for page in data["viewer_pages"]:
        text = (encoder_dir / "report" / page).read_text(encoding="utf-8")
        assert "headscope view" in text and 'id="thumbs"' in text


def test_the_importance_map_is_oriented_as_the_others(tmp_path: Path) -> None:
    from headscope.report.sections import importance

    table = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "importance": [1.0, 0.5, 0.25, 0.0],
                          "importance_raw": [4.0, 2.0, 1.0, 0.0], "loss": "mlm_loss"})
    section = importance.section(RunResult(heads=table, tables={"importance": table}, run={}), tmp_path)
    assert section is not None and section.figures == ["importance_heads"]
    cells = _cells((tmp_path / "importance_heads.svg").read_text(encoding="utf-8"))
    # Layer 0's cells come first and sit above layer 1's.
    assert cells[0][1] < cells[2][1]
