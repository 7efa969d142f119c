"""Build the report of a finished run from its files alone (``headscope report DIR`` uses this too).

The page, ``DIR/report/index.html``, opens offline and loads nothing from a network. It has:

- a summary of the run (model, corpus files, counts, what was skipped or truncated and why);
- the head explorer: a layer x head grid drawn on one canvas, coloured by any numeric column of
  ``heads.csv``; clicking a head shows its profile (every statistic with its rank, its rows of every per-head
  table such as ``roles.csv`` or ``syntax.csv``, its cluster, and its maps on the sequences kept by the
  ``examples`` analysis);
- one section per analysis, from each analysis's ``report`` staticmethod (figures as PNG and SVG under
  ``DIR/figures/``);
- the list of every figure file.
"""

from __future__ import annotations

import dataclasses
import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from headscope.analyses import REGISTRY
from headscope.analyses.examples import source_name
from headscope.engine.results import RunResult, write_text
from headscope.report.figures import parallel_figures
from headscope.report.page import b64_array, render_page
from headscope.report.section import ReportSection

#: Columns that rank a per-head table's rows in a head's profile, in order of preference.
SCORE_COLUMNS = ("accuracy", "score_mean", "score", "t", "uas", "value")

#: Per-head columns that are labels (a cluster id, a pattern name), shown as tags rather than ranked.
LABEL_COLUMNS = ("cluster", "pattern")

#: Rows of each per-head table shown in a head's profile.
ROWS_PER_HEAD = 6

#: What the explorer reads of each sequence kept by the ``examples`` analysis (besides its file name).
EXAMPLE_KEYS = ("line", "text", "pieces", "shape", "attention")

#: Events of each kind (skipped, truncated, warning) listed in the summary.
LISTED_EVENTS = 50


def collect_sections(run: RunResult, figures: Path) -> list[ReportSection]:
    """Every registered analysis's section for this run, in page order."""
    sections = []
    for cls in REGISTRY.values():
        section = cls.report(run, figures)
        if section is not None:
            sections.append(dataclasses.replace(section, order=cls.report_order))
    return sorted(sections, key=lambda s: (s.order, s.key))


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
        if not {"layer", "head"} <= set(table.columns) or table.empty:
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


def page_data(run: RunResult) -> dict[str, Any]:
    """Everything the explorer's script reads, compactly encoded (see :func:`head_columns`)."""
    heads = run.heads
    if heads.empty:
        return {"n_layers": 0, "n_heads": 0, "columns": [], "text_columns": [], "tables": [], "examples": []}
    numeric, text = head_columns(heads)
    n_heads = int(heads["head"].max()) + 1
    examples = run.documents.get("examples", {}).get("examples", [])
    default = next((c["name"] for c in numeric if c["name"] == "sep"), numeric[0]["name"] if numeric else None)
    return {
        "n_layers": int(heads["layer"].max()) + 1, "n_heads": n_heads,
        "columns": numeric, "text_columns": text, "default_column": default,
        "tables": head_tables(run, n_heads),
        # Kept sequences are named by file name, not by their (often long, cache) path: see source_name.
        "examples": [{"name": source_name(e["file"]), **{k: e[k] for k in EXAMPLE_KEYS}} for e in examples],
    }


def _rows(pairs: list[tuple[Any, Any]]) -> str:
    return "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in pairs)


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


def summary_html(run: RunResult) -> str:
    """The run summary: model, corpus files, counts, skipped/truncated/warned inputs, timings."""
    info = run.run
    model = info.get("model", {})
    model_rows = [("model", model.get("name", "?")), ("type", model.get("model_type", "?")),
                  ("layers x heads", f"{model.get('n_layers', '?')} x {model.get('n_heads', '?')}"),
                  ("decoder (causal)", model.get("is_causal", "?")), ("seed", info.get("seed", "?")),
                  ("analyses", ", ".join(info.get("analyses", {}))), ("conventions", _conventions(info)),
                  ("headscope", info.get("versions", {}).get("headscope", "?"))]
    files = "".join(f"<tr><td>{html.escape(str(f.get('role', '')))}</td><td>{html.escape(str(f.get('path', '')))}"
                    f"</td><td>{html.escape(str(f.get('sha256', ''))[:12])}</td></tr>"
                    for f in info.get("files", []))
    notes = "".join(f"<p class='note'>{html.escape(str(k))}: {html.escape(str(v))}</p>"
                    for k, v in info.get("notes", {}).items() if k != "inputs")
    inputs = inputs_line(info.get("notes", {}).get("inputs"))
    events = []
    for kind, block in info.get("events", {}).items():
        listed = block.get("listed", [])[:LISTED_EVENTS]
        items = "".join(f"<li>{html.escape(str(e.get('file')))}:{html.escape(str(e.get('line')))}: "
                        f"{html.escape(str(e.get('reason')))}</li>" for e in listed)
        total = int(block.get("total", len(listed)))
        more = f" (first {len(listed)} listed)" if total > len(listed) else ""
        events.append(f"<details><summary>{html.escape(kind)}: {total}{more}</summary><ul>{items}</ul></details>")
    timings = info.get("timings_s", {})
    return (f"<p class='inputs'>{html.escape(inputs)}</p>" if inputs else "") + (
            f"<div class='summary'><div><h4>Model</h4><table>{_rows(model_rows)}</table></div>"
            f"<div><h4>Counts</h4><table>{_rows(list(info.get('counts', {}).items()))}</table></div>"
            f"<div><h4>Timings (s)</h4><table>{_rows(list(timings.items()))}</table></div></div>"
            f"<h4>Corpus files</h4><table><tr><th>role</th><th>path</th><th>sha256</th></tr>{files}</table>{notes}"
            f"<h4>Skipped, truncated, warnings</h4>{''.join(events) or '<p class=note>none</p>'}")


EXPLORER = """<h2>Heads</h2>
<div class="explorer">
<div>
<div class="controls"><label>Colour by <select id="stat"></select></label><span id="legend" class="note"></span></div>
<canvas id="grid" tabindex="0" aria-label="layer by head grid; click a head to see its profile"></canvas>
<p class="note">Rows are layers, columns heads (0-based). Click a head, or use the arrow keys.</p>
<div class="controls"><label>Heads by this statistic, <select id="sort-order"><option value="highest">highest
first</option><option value="lowest">lowest first</option></select></label>
<label><input type="checkbox" id="sort-all"> all heads</label></div>
<div id="top-heads"></div>
</div>
<aside id="profile" aria-live="polite"></aside>
</div>"""


def figures_html(figures: Path) -> str:
    """Links to every figure under ``figures/``, PNG and SVG side by side."""
    names = sorted({p.stem for p in figures.glob("*.png")} | {p.stem for p in figures.glob("*.svg")})
    items = "".join(f"<li>{html.escape(n)}: <a href='../figures/{html.escape(n)}.png'>PNG</a> · "
                    f"<a href='../figures/{html.escape(n)}.svg'>SVG</a></li>" for n in names)
    return f"<ul class='columns'>{items}</ul>" if items else "<p class='note'>No figure.</p>"


def build_report(out: str | Path) -> Path:
    """Write ``figures/`` and ``report/index.html`` for the run in ``out``; return the page's path.

    Parameters
    ----------
    out : str or Path
        A finished run's directory (``run.json``, ``heads.csv``, ...). The model is not needed.
    """
    out = Path(out)
    run = RunResult.load(out)
    figures = out / "figures"
    with parallel_figures():
        sections = collect_sections(run, figures)
    model = run.run.get("model", {})
    body = "".join(f'<section class="analysis" id="{html.escape(s.key)}"><h2>{html.escape(s.title)}</h2>'
                   f"{s.html}</section>" for s in sections)
    toc = " · ".join(f'<a href="#{html.escape(s.key)}">{html.escape(s.title)}</a>' for s in sections)
    title = f"headscope report: {html.escape(str(model.get('name', '?')))}"
    page = f"""<header><h1>{title}</h1>
<p class="note">{int(model.get('n_layers', 0) or 0) * int(model.get('n_heads', 0) or 0)} heads ·
{toc} · <a href="#figures">figures</a></p>
{summary_html(run)}</header>
<main>{EXPLORER}</main>
{body}
<section class="analysis" id="figures"><h2>Figure files</h2>
<p class="note">Every figure is written as PNG (300 dpi) and SVG, one paper column wide, under figures/.</p>
{figures_html(figures)}</section>
<footer><p class="note">Rebuild with <code>headscope report {html.escape(str(out))}</code>.
Run configuration: <code>{html.escape(json.dumps(run.run.get('config', {}), sort_keys=True))}</code></p></footer>"""
    report_dir = out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    index = report_dir / "index.html"
    write_text(index, render_page(title, page, page_data(run), ["report.js"]))
    return index
