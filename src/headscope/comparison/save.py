"""Saving a comparison: its tables, ``compare.json``, the figures and the page, into one directory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from headscope.comparison.page import write_page
from headscope.engine.results import write_json, write_table

if TYPE_CHECKING:
    from headscope.comparison.result import Comparison


def save(comparison: Comparison, out: str | Path) -> Path:
    """Write the tables (``compare_*.csv``), ``compare.json``, the figures and ``report/index.html`` into ``out``.

    Returns
    -------
    Path
        ``out``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(out, "compare_heads", comparison.heads)
    write_table(out, "compare_layers", comparison.layers)
    if comparison.roles is not None:
        write_table(out, "compare_roles", comparison.roles)
    for stem, table in comparison.tables.items():
        write_table(out, f"compare_{stem}", table)
    write_json(out / "compare.json", comparison.summary)
    write_page(comparison, out)
    return out
