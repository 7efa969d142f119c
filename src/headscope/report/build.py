"""Build the report of a finished run from its files alone (``headscope report DIR`` uses this too).

The page, ``DIR/report/index.html``, opens offline and loads nothing from a network. It answers first:

- the model's id, and one sentence on how its inputs were built;
- "What the heads do": the head atlas (``atlas.csv``) grouped by behaviour, every group listing its heads with
  their evidence, then the heads that fit no label (:mod:`headscope.report.overview`);
- the head grid: a layer x head grid on one canvas, coloured by any numeric column of ``heads.csv`` (by
  default one the run measured that varies over the heads), with a colour bar and one line on what each
  statistic means; clicking a head shows its profile (every statistic with its rank, its rows of every
  per-head table, its maps on the sequences kept by the ``examples`` analysis, and a link to the viewer page
  of each of those sequences, written under ``report/view/``);
- one section per analysis, from :mod:`headscope.report.sections`, in the analyses' ``report_order``
  (figures as PNG and SVG under ``DIR/figures/``);
- the run's details, collapsed: counts, timings, configuration, capture route, corpus files, what was
  skipped or truncated, and the list of every figure file.
"""

from __future__ import annotations

import dataclasses
import html
import json
from pathlib import Path, PureWindowsPath
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from headscope.analyses import REGISTRY
from headscope.analyses.examples import decode_float16, source_name
from headscope.engine.results import RunResult, write_text
from headscope.model.packaged import PACKAGED_MODELS
from headscope.report.figures import parallel_figures
from headscope.report.overview import atlas_html, default_statistic
from headscope.report.page import b64_array, render_page
from headscope.report.section import ReportSection
from headscope.report.sections import SECTIONS, meaning
from headscope.report.sections.examples import viewer_page
from headscope.report.viewpage import render_view, view_data, word_maps

#: Columns that rank a per-head table's rows in a head's profile, in order of preference.
SCORE_COLUMNS = ("accuracy", "score_mean", "score", "t", "uas", "value")

#: Per-head columns that are labels (a cluster id, a pattern name), shown as tags rather than ranked.
LABEL_COLUMNS = ("cluster", "pattern")

#: Rows of each per-head table shown in a head's profile.
ROWS_PER_HEAD = 6

#: What the explorer reads of each sequence kept by the ``examples`` analysis (besides its file name).
EXAMPLE_KEYS = ("line", "text", "pieces", "shape", "attention")

#: Events of each kind (skipped, truncated, warning) listed in the run's details.
LISTED_EVENTS = 50

#: Tables the head profiles leave out: the atlas has its own section (and the profile its labels).
PROFILE_SKIPS = ("atlas",)


def _rows(pairs: list[tuple[Any, Any]]) -> str:
    return "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in pairs)


def collect_sections(run: RunResult, figures: Path) -> list[ReportSection]:
    """Every analysis's section for this run (:data:`headscope.report.sections.SECTIONS`; an analysis that ran
    without a section of its own gets :func:`generic_section`), in page order."""
    sections = []
    for name, cls in REGISTRY.items():
        build = SECTIONS.get(name)
        section = build(run, figures) if build is not None else generic_section(run, name, cls.description)
        if section is not None:
            sections.append(dataclasses.replace(section, order=cls.report_order))
    return sorted(sections, key=lambda s: (s.order, s.key))


def generic_section(run: RunResult, name: str, description: str) -> ReportSection | None:
    """The section of an analysis that ran but has no module in :mod:`headscope.report.sections`: what it is
    and the numbers of its ``run.json`` summary (its per-head columns are in the head grid)."""
    summary = run.run.get("analyses", {}).get(name)
    if summary is None:
        return None
    pairs = [(k, v) for k, v in (summary.items() if isinstance(summary, dict) else [])
             if isinstance(v, (str, int, float, bool)) or v is None]
    body = (f"<p>{html.escape(description[:1].upper() + description[1:])}.</p>" if description else "") + (
        f"<table>{_rows(pairs)}</table>" if pairs else "") + (
        "<p class='note'>Its per-head columns are in the head grid above; its tables and the rest of its summary "
        f"are in the run's files (run.json, analyses.{html.escape(name)}).</p>")
    return ReportSection(key=name, title=name.replace("_", " ").capitalize(), html=body)


def _scalar(value: Any) -> Any:
    """A JSON-able cell: numpy scalars unwrapped, NaN as None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def head_columns(heads: pd.DataFrame) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The per-head columns of ``heads.csv`` for the explorer.

    Returns
    -------
    numeric : list of dict
        ``{"name", "values"}`` with ``values`` the base64 of a float32 array of shape (n_layers * n_heads,),
        index ``layer * n_heads + head``, NaN where a head has no value.
    text : list of dict
        ``{"name", "values"}`` for non-numeric columns (``pattern``...), a list in the same order.
    """
    n_layers = int(heads["layer"].max()) + 1
    n_heads = int(heads["head"].max()) + 1
    flat = heads["layer"].to_numpy(int) * n_heads + heads["head"].to_numpy(int)
    numeric, text = [], []
    for column in heads.columns:
        if column in ("layer", "head"):
            continue
        kind = heads[column].dtype
        numeric_dtype = pd.api.types.is_numeric_dtype(kind) and not pd.api.types.is_bool_dtype(kind)
        # Integer cluster assignments (cluster_kmeans, ...) are labels too; cluster_distance is a statistic.
        label = column in LABEL_COLUMNS or (column.startswith("cluster") and pd.api.types.is_integer_dtype(kind))
        if numeric_dtype and not label:
            values = np.full(n_layers * n_heads, np.nan, dtype=np.float32)
            values[flat] = heads[column].to_numpy(float)
            numeric.append({"name": column, "values": b64_array(values, "<f4")})
        else:
            values_list: list[Any] = [None] * (n_layers * n_heads)
            for i, v in zip(flat, heads[column].tolist(), strict=True):
                # A cluster id read back from CSV may be a float (NaN elsewhere in the column): show 3, not 3.0.
                if not pd.isna(v):
                    values_list[i] = str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
            text.append({"name": column, "values": values_list})
    return numeric, text


def head_tables(run: RunResult, n_heads: int) -> list[dict[str, Any]]:
    """Each table with ``layer`` and ``head`` columns, cut to a head's best rows for its profile.

    Rows are ranked by the first of :data:`SCORE_COLUMNS` the table has (largest first); a table with a
    ``significant`` column keeps only its significant rows (a head's roles).
    """
    out = []
    for name, table in sorted(run.tables.items()):
        if name in PROFILE_SKIPS or not {"layer", "head"} <= set(table.columns) or table.empty:
            continue
        t = table.dropna(subset=["layer", "head"])
        note = []
        if "significant" in t.columns:
            t = t[t["significant"].astype(str).str.lower().isin(["true", "1"])]
            note.append("significant rows only")
        score = next((c for c in SCORE_COLUMNS if c in t.columns), None)
        if score is not None:
            t = t.sort_values(score, ascending=False, kind="stable")
            note.append(f"best {ROWS_PER_HEAD} by {score}")
        shown = [c for c in t.columns if c not in ("layer", "head")]
        rows: dict[str, list[list[Any]]] = {}
        keys = t["layer"].to_numpy(int) * n_heads + t["head"].to_numpy(int)
        for key, record in zip(keys, t[shown].itertuples(index=False, name=None), strict=True):
            bucket = rows.setdefault(str(int(key)), [])
            if len(bucket) < ROWS_PER_HEAD:
                bucket.append([_scalar(v) for v in record])
        out.append({"name": name, "title": f"{name}.csv" + (f" ({', '.join(note)})" if note else ""),
                    "columns": shown, "heads": rows,
                    "empty": "no significant row for this head" if "significant" in table.columns
                    else "no row for this head"})
    return out


def head_labels(run: RunResult, n_heads: int) -> dict[str, list[list[str]]]:
    """Each head's atlas labels as ``[group, evidence]`` pairs, by ``layer * n_heads + head``."""
    atlas = run.tables.get("atlas")
    out: dict[str, list[list[str]]] = {}
    if atlas is None or atlas.empty:
        return out
    for r in atlas.itertuples():
        if r.group != "unlabelled":
            out.setdefault(str(int(r.layer) * n_heads + int(r.head)), []).append([str(r.group), str(r.evidence)])
    return out


def page_data(run: RunResult, viewer_pages: list[str] | None = None) -> dict[str, Any]:
    """Everything the explorer's script reads, compactly encoded (see :func:`head_columns`)."""
    heads = run.heads
    if heads.empty:
        return {"n_layers": 0, "n_heads": 0, "columns": [], "text_columns": [], "tables": [], "examples": [],
                "labels": {}, "viewer_pages": []}
    numeric, text = head_columns(heads)
    causal = bool(run.run.get("model", {}).get("is_causal"))
    for column in numeric:
        column["label"] = meaning(column["name"], causal)
    n_heads = int(heads["head"].max()) + 1
    examples = run.documents.get("examples", {}).get("examples", [])
    return {
        "n_layers": int(heads["layer"].max()) + 1, "n_heads": n_heads,
        "columns": numeric, "text_columns": text, "default_column": default_statistic(run),
        "tables": head_tables(run, n_heads), "labels": head_labels(run, n_heads),
        # Kept sequences are named by file name, not by their (often long, cache) path: see source_name.
        "examples": [{"name": source_name(e["file"]), **{k: e[k] for k in EXAMPLE_KEYS}} for e in examples],
        "viewer_pages": list(viewer_pages or []),
    }


def write_viewer_pages(run: RunResult, report_dir: Path) -> list[str]:
    """The viewer page of each sequence the ``examples`` analysis kept, under ``report/view/``; their paths
    relative to ``report/index.html``."""
    examples = run.documents.get("examples", {}).get("examples", [])
    model = run.run.get("model", {})
    config = run.run.get("config", {})
    mode = config.get("word_attention", "mean")
    weights = config.get("weights", "attention")
    pages = []
    for k, e in enumerate(examples):
        piece = decode_float16(e["attention"], tuple(e["shape"])).astype(np.float32)
        units = list(e.get("units") or e["pieces"])
        unit_of_piece = e.get("unit_of_piece") or list(range(len(e["pieces"])))
        word = word_maps(piece, unit_of_piece, len(units), mode if mode in ("mean", "first") else "mean")
        where = SimpleNamespace(pieces=list(e["pieces"]), units=units, file=source_name(e["file"]),
                                line=int(e["line"]))
        notes = [f"Sequence {k + 1} kept by the examples analysis of this run ({weights} weights; words: "
                 f"{mode} of a split word's rows)."]
        data = view_data(where, piece, word, {"name": model.get("name", "?"), "n_layers": int(piece.shape[0]),
                                              "n_heads": int(piece.shape[1])}, str(e.get("text", "")), notes)
        path = report_dir / viewer_page(k)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, render_view(data))
        pages.append(viewer_page(k))
    return pages


def _conventions(info: dict[str, Any]) -> str:
    """``--conventions`` and, per analysis that records them, the conventions its tables were made under."""
    used = {name: summary["conventions"] for name, summary in info.get("analyses", {}).items()
            if isinstance(summary, dict) and "conventions" in summary}
    per_analysis = "; ".join(f"{name}: {conventions}" for name, conventions in used.items())
    return str(info.get("config", {}).get("conventions", "headscope")) + (f" ({per_analysis})" if per_analysis else "")


def inputs_line(inputs: dict[str, Any] | None) -> str:
    """One sentence on how the model's inputs were built (``run.json`` ``notes.inputs``), "" for older runs."""
    if not inputs:
        return ""
    parts = ["Inputs: each window's text as written (sentences joined by "
             f"{inputs.get('sentence_join', 'one space')}), tokenized as a string with the tokenizer's own "
             "special tokens; words found by character offsets"]
    if inputs.get("special_tokens"):
        parts.append(f"{' and '.join(inputs['special_tokens'])} added; pairs as {inputs.get('pairs')}")
    if inputs.get("bos"):
        parts.append(str(inputs["bos"]))
    forms = inputs.get("treebank_input") == "forms"
    parts.append(f"CoNLL-U read as its {'word forms joined by spaces' if forms else 'text'}")
    return "; ".join(parts) + "."


def model_id(run: RunResult) -> str:
    """The model as the run named it: its hub id or directory, else its packaged short name."""
    model = run.run.get("model", {})
    return str(model.get("id") or model.get("name") or run.run.get("config", {}).get("model") or "?")


def _is_local(name: str) -> bool:
    """Whether ``--model`` named a local directory or file rather than a hub id or a packaged short name: a hub
    id is ``name`` or ``org/name``; a path is absolute, starts with ``.`` or ``~``, has more parts, ends with
    ``.gguf`` or exists here."""
    if name.startswith((".", "~", "/", "\\")) or name.count("/") > 1 or "\\" in name or name.endswith(".gguf"):
        return True
    if len(name) > 1 and name[1] == ":":  # a Windows drive
        return True
    try:
        return Path(name).expanduser().exists()
    except OSError:
        return False


def model_name(run: RunResult) -> str:
    """The model's name for the report's title: the packaged short name or hub id as given; for a local model
    the GGUF file's name without ``.gguf``, else the directory's own name (``org/name`` for a directory of the
    hub's cache, ``models--org--name/snapshots/<commit>``). The path stays in the run's details."""
    given = model_id(run)
    if given in PACKAGED_MODELS or not _is_local(given):
        return given
    gguf = run.run.get("config", {}).get("gguf_file")
    path = PureWindowsPath(given.rstrip("/\\"))  # splits at / and \ alike
    if gguf or path.suffix == ".gguf":
        return PureWindowsPath(str(gguf)).stem if gguf else path.stem
    parts = path.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/")
    return path.name or given


def _value(v: Any) -> str:
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)


def details_html(run: RunResult, figures: Path) -> str:
    """The run's details: model, counts, timings, configuration, capture route, corpus files, events, figures."""
    info = run.run
    model = info.get("model", {})
    given = [("path", model_id(run))] if model_id(run) != model_name(run) else []
    model_rows = [("model", model_name(run)), *given, ("type", model.get("model_type", "?")),
                  ("layers x heads", f"{model.get('n_layers', '?')} x {model.get('n_heads', '?')}"),
                  ("decoder (causal)", model.get("is_causal", "?")), ("seed", info.get("seed", "?")),
                  ("analyses", ", ".join(info.get("analyses", {}))), ("conventions", _conventions(info)),
                  ("headscope", info.get("versions", {}).get("headscope", "?"))]
    notes = info.get("notes", {})
    capture = notes.get("capture", {})
    capture_rows = [(k, _value(v)) for k, v in capture.items()] if isinstance(capture, dict) else [
        ("capture", capture)]
    files = "".join(f"<tr><td>{html.escape(str(f.get('role', '')))}</td><td class='path'>"
                    f"{html.escape(str(f.get('path', '')))}</td><td>{html.escape(str(f.get('sha256', ''))[:12])}"
                    "</td></tr>" for f in info.get("files", []))
    other_notes = "".join(f"<p class='note'>{html.escape(str(k))}: {html.escape(_value(v))}</p>"
                          for k, v in notes.items() if k not in ("inputs", "capture"))
    events = []
    for kind, block in info.get("events", {}).items():
        listed = block.get("listed", [])[:LISTED_EVENTS]
        items = "".join(f"<li>{html.escape(str(e.get('file')))}:{html.escape(str(e.get('line')))}: "
                        f"{html.escape(str(e.get('reason')))}</li>" for e in listed)
        total = int(block.get("total", len(listed)))
        more = f" (first {len(listed)} listed)" if total > len(listed) else ""
        events.append(f"<details><summary>{html.escape(kind)}: {total}{more}</summary><ul>{items}</ul></details>")
    timings = info.get("timings_s", {})
    config = json.dumps(info.get("config", {}), sort_keys=True, indent=1)
    return (f"<div class='summary'><div><h4>Model</h4><table>{_rows(model_rows)}</table></div>"
            f"<div><h4>Counts</h4><table>{_rows(list(info.get('counts', {}).items()))}</table></div>"
            f"<div><h4>Timings (s)</h4><table>{_rows(list(timings.items()))}</table></div>"
            f"<div><h4>Capture</h4><table>{_rows(capture_rows) or '<tr><td>not recorded</td></tr>'}</table></div>"
            "</div>"
            f"<h4>Corpus files</h4><table class='files'><tr><th>role</th><th>path</th><th>sha256</th></tr>{files}"
            f"</table>{other_notes}"
            f"<h4>Skipped, truncated, warnings</h4>{''.join(events) or '<p class=note>none</p>'}"
            f"<h4>Configuration</h4><pre class='config'>{html.escape(config)}</pre>"
            f"<h4>Figure files</h4><p class='note'>Every figure is written as PNG (300 dpi) and SVG, one paper "
            f"column wide (two for a few), under figures/.</p>{figures_html(figures)}")


EXPLORER = """<section class="analysis" id="heads"><h2>Head grid</h2>
<div class="explorer">
<div>
<div class="controls"><label>Colour by <select id="stat"></select></label></div>
<p id="stat-meaning" class="meaning"></p>
<div class="grid-row"><canvas id="grid" tabindex="0" aria-label="layer by head grid; click a head to see its
profile"></canvas><div id="colourbar" class="colourbar" aria-hidden="true"><span id="cb-max"></span>
<div class="bar"></div><span id="cb-min"></span></div></div>
<p class="note"><span id="legend"></span> Rows are layers (0 at the top), columns heads (0-based). Click a
head, or use the arrow keys.</p>
<div class="controls"><label>Heads by this statistic, <select id="sort-order"><option value="highest">highest
first</option><option value="lowest">lowest first</option></select></label>
<label><input type="checkbox" id="sort-all"> all heads</label></div>
<div id="top-heads"></div>
</div>
<aside id="profile" aria-live="polite"></aside>
</div></section>"""


def figures_html(figures: Path) -> str:
    """Links to every figure under ``figures/``, PNG and SVG side by side."""
    names = sorted({p.stem for p in figures.glob("*.png")} | {p.stem for p in figures.glob("*.svg")})
    items = "".join(f"<li>{html.escape(n)}: <a href='../figures/{html.escape(n)}.png'>PNG</a> · "
                    f"<a href='../figures/{html.escape(n)}.svg'>SVG</a></li>" for n in names)
    return f"<ul class='columns'>{items}</ul>" if items else "<p class='note'>No figure.</p>"


def remove_stale_figures(figures: Path, drawn: set[str]) -> None:
    """Delete the figures an earlier build of this report wrote and this one did not (a map that has become a
    sentence, a section that is gone), so that ``figures/`` holds this report's figures only."""
    for path in [*figures.glob("*.png"), *figures.glob("*.svg")]:
        if path.stem not in drawn:
            path.unlink()


def page_layout(title: str, lead: str, first: list[ReportSection], sections: list[ReportSection],
                details: str, details_summary: str, footer: str = "", after_first: str = "",
                after_first_title: str = "") -> str:
    """The body of a report page, shared by a run's report and ``headscope compare``: the title and a lead
    paragraph, a table of contents, the sections that answer first (then ``after_first``, a section of its
    own markup with the id ``heads``), the other sections, and the details collapsed at the end. Every
    argument is markup (corpus text already escaped)."""
    def block(s: ReportSection) -> str:
        return (f'<section class="analysis" id="{html.escape(s.key)}"><h2>{html.escape(s.title)}</h2>'
                f"{s.html}</section>")

    links = [(s.key, s.title) for s in first] + ([("heads", after_first_title)] if after_first else []) + [
        (s.key, s.title) for s in sections]
    toc = " · ".join(f'<a href="#{html.escape(k)}">{html.escape(t)}</a>' for k, t in links)
    return (f"<header><h1>{title}</h1>{lead}<nav class='toc note'>{toc} · <a href='#details'>details</a></nav>"
            "</header>"
            f"<main>{''.join(block(s) for s in first)}{after_first}</main>"
            f"{''.join(block(s) for s in sections)}"
            f"<section class='analysis' id='details'><details><summary>{details_summary}</summary>{details}"
            f"</details></section><footer>{footer}</footer>")


def build_report(out: str | Path) -> Path:
    """Write ``figures/`` and ``report/index.html`` (and ``report/view/``) for the run in ``out``; return the
    page's path.

    Parameters
    ----------
    out : str or Path
        A finished run's directory (``run.json``, ``heads.csv``, ...). The model is not needed.
    """
    out = Path(out)
    run = RunResult.load(out)
    figures = out / "figures"
    report_dir = out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    with parallel_figures():
        sections = collect_sections(run, figures)
    remove_stale_figures(figures, {name for s in sections for name in s.figures})
    viewer_pages = write_viewer_pages(run, report_dir)
    model = run.run.get("model", {})
    name = html.escape(model_name(run))
    n_layers, n_heads = int(model.get("n_layers", 0) or 0), int(model.get("n_heads", 0) or 0)
    kind = "decoder" if model.get("is_causal") else "encoder"
    inputs = inputs_line(run.run.get("notes", {}).get("inputs"))
    lead = (f"<p class='lead'>headscope report · {kind}, {n_layers} layers x {n_heads} heads = "
            f"{n_layers * n_heads} heads · {html.escape(', '.join(run.run.get('analyses', {})))}</p>"
            + (f"<p class='inputs'>{html.escape(inputs)}</p>" if inputs else ""))
    atlas = ReportSection(key="atlas", title="What the heads do", html=atlas_html(run))
    body = page_layout(name, lead, [atlas], sections, details_html(run, figures),
                       "Run details: counts, timings, configuration, capture route, corpus files, figure files",
                       f"<p class='note'>Rebuild with <code>headscope report {html.escape(str(out))}</code>.</p>",
                       after_first=EXPLORER, after_first_title="Head grid")
    title = f"headscope report: {name}"
    index = report_dir / "index.html"
    write_text(index, render_page(title, body, page_data(run, viewer_pages), ["report.js"]))
    return index
