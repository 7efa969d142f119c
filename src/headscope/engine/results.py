"""A finished run: tables in memory, written to and read back from an output directory."""

from __future__ import annotations

import contextlib
import html
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger("headscope")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path``, renamed to ``path`` when the block ends without error.

    A reader (or a run killed mid-write) never sees a half-written file: only the old one or the new one.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n")


#: The folder of an output directory holding the inputs the analyses built (``probes/<analysis>.jsonl``).
PROBES = "probes"


def read_probes(path: str | Path) -> list[dict[str, Any]]:
    """The records of one ``probes/<analysis>.jsonl`` file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_table(out: Path, name: str, table: pd.DataFrame) -> list[str]:
    """``name.csv``, plus ``name.parquet`` when pyarrow is installed; returns the file names written."""
    with atomic_path(out / f"{name}.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    written = [f"{name}.csv"]
    with contextlib.suppress(ImportError), atomic_path(out / f"{name}.parquet") as tmp:
        table.to_parquet(tmp, index=False)
        written.append(f"{name}.parquet")
    return written


#: Rows and columns of the heads table in a notebook's summary of a run (``RunResult._repr_html_``).
HTML_HEAD_ROWS = 8
HTML_HEAD_COLUMNS = 12
#: ... and in ``print(result)`` (``RunResult.summary``).
TEXT_HEAD_ROWS = 5
TEXT_HEAD_COLUMNS = 8


@dataclass
class RunResult:
    """The results of :func:`headscope.run`: tidy DataFrames plus the run manifest.

    Attributes
    ----------
    heads : DataFrame
        One row per head (``layer``, ``head``, every per-head column of every analysis).
    tables : dict of str to DataFrame
        Every other table by file stem (``syntax``, ``roles``, ...).
    documents : dict of str to object
        JSON outputs by file stem (``probe``, ...).
    probes : dict of str to list of dict
        The inputs each analysis built itself, by analysis (``probes/<analysis>.jsonl``, one record a line).
    run : dict
        The content of ``run.json``.
    directory : Path or None
        The output directory the run was saved to or loaded from (None for a run kept in memory only).
    """

    heads: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    documents: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    directory: Path | None = field(default=None, compare=False)
    probes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.heads if name == "heads" else self.tables[name]

    def save(self, out: str | Path) -> Path:
        """Write ``heads.csv``, every table and document, and ``run.json`` into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written = write_table(out, "heads", self.heads)
        for name, table in self.tables.items():
            written += write_table(out, name, table)
        for name, doc in self.documents.items():
            write_json(out / f"{name}.json", doc)
            written.append(f"{name}.json")
        if self.probes:
            (out / PROBES).mkdir(exist_ok=True)
        for name, records in self.probes.items():
            write_text(out / PROBES / f"{name}.jsonl",
                       "".join(json.dumps(_jsonable(r), allow_nan=False) + "\n" for r in records))
            written.append(f"{PROBES}/{name}.jsonl")
        # run.json names this run's files, so readers never pick up another run's leftovers.
        self.run["outputs"] = sorted(written)
        write_json(out / "run.json", self.run)
        self.directory = out
        return out

    @classmethod
    def load(cls, out: str | Path) -> RunResult:
        """Read a finished run back from its directory (no model needed)."""
        out = Path(out)
        run_file = out / "run.json"
        if not run_file.is_file():
            raise FileNotFoundError(f"{out} is not a headscope run directory (no run.json)")
        run = json.loads(run_file.read_text(encoding="utf-8"))
        heads = pd.read_csv(out / "heads.csv")
        listed = run.get("outputs")
        csvs = [out / n for n in listed if n.endswith(".csv")] if listed is not None else sorted(out.glob("*.csv"))
        jsons = ([out / n for n in listed if n.endswith(".json")] if listed is not None
                 else sorted(out.glob("*.json")))
        tables = {p.stem: pd.read_csv(p) for p in csvs if p.stem != "heads"}
        documents = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in jsons if p.stem != "run"}
        probes = {Path(n).stem: read_probes(out / n) for n in (listed or []) if n.startswith(f"{PROBES}/")}
        return cls(heads=heads, tables=tables, documents=documents, run=run, directory=out, probes=probes)

    @property
    def report_path(self) -> Path | None:
        """``report/index.html`` of the run's directory, when it has been written."""
        if self.directory is None:
            return None
        index = self.directory / "report" / "index.html"
        return index if index.is_file() else None

    def summary(self, rows: int = TEXT_HEAD_ROWS, columns: int = TEXT_HEAD_COLUMNS) -> str:
        """A few lines for ``print(result)``: model, counts, analyses, tables, where written, the heads' top.

        The whole manifest is ``.run``; the whole heads table ``.heads``.
        """
        model = self.run.get("model", {})
        lines = [f"headscope run of {model.get('name', '?')}: {model.get('n_layers', '?')} layers x "
                 f"{model.get('n_heads', '?')} heads",
                 "counts: " + (", ".join(f"{k} {v}" for k, v in self.run.get("counts", {}).items()) or "-"),
                 "analyses: " + (", ".join(self.run.get("analyses", {})) or "-"),
                 "tables: " + ", ".join([f"heads ({len(self.heads)} rows)"]
                                        + [f"{name} ({len(t)} rows)" for name, t in sorted(self.tables.items())])]
        if self.directory is not None:
            report = self.report_path
            lines.append(f"written to: {self.directory}" + (f" (report: {report})" if report is not None else ""))
        else:
            lines.append("written to: nothing (kept in memory; pass out=DIR to write the files)")
        shown = self.heads.iloc[:rows, :columns]
        lines.append(f"heads (first {len(shown)} of {len(self.heads)}; all of them in .heads):")
        lines.append(shown.to_string(index=False, float_format=lambda v: f"{v:.3g}", na_rep="-"))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        model = self.run.get("model", {}).get("name", "?")
        where = f", directory={str(self.directory)!r}" if self.directory is not None else ""
        return (f"<RunResult of {model}: {len(self.heads)} heads, tables {sorted(self.tables)}, "
                f"documents {sorted(self.documents)}{where}>")

    def _repr_html_(self, rows: int = HTML_HEAD_ROWS, columns: int = HTML_HEAD_COLUMNS) -> str:
        """A compact summary for Jupyter: model, layers x heads, counts, analyses, the heads table's top.

        Parameters
        ----------
        rows, columns : int
            How much of the heads table is shown (the whole table is ``self.heads``).
        """
        model = self.run.get("model", {})
        n_layers = model.get("n_layers", int(self.heads["layer"].max()) + 1 if len(self.heads) else 0)
        n_heads = model.get("n_heads", int(self.heads["head"].max()) + 1 if len(self.heads) else 0)
        counts = ", ".join(f"{k} {v}" for k, v in self.run.get("counts", {}).items())
        analyses = ", ".join(self.run.get("analyses", {}))
        pairs = [("model", model.get("name", "?")), ("layers x heads", f"{n_layers} x {n_heads}"),
                 ("counts", counts or "–"), ("analyses", analyses or "–"),
                 ("tables", ", ".join(sorted(self.tables)) or "–")]
        report = self.report_path
        if self.directory is not None:
            pairs.append(("directory", str(self.directory)))
        summary = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
                          f"{html.escape(str(v))}</td></tr>" for k, v in pairs)
        if report is not None:
            # Browsers refuse file: links from a notebook served over http, so the path is the link's text.
            summary += (f"<tr><th style='text-align:left'>report</th><td style='text-align:left'>"
                        f"<a href='{html.escape(report.resolve().as_uri())}' target='_blank'>"
                        f"{html.escape(str(report))}</a></td></tr>")
        shown = self.heads.head(rows)
        table = shown.to_html(index=False, max_cols=columns, float_format=lambda v: f"{v:.3g}",
                              na_rep="–", border=0, classes="headscope-heads")
        more = (f"<p>first {len(shown)} of {len(self.heads)} heads; all of them in <code>.heads</code></p>"
                if len(self.heads) > len(shown) else "")
        return (f"<div class='headscope-run'><strong>headscope RunResult</strong><table>{summary}</table>"
                f"{table}{more}</div>")
