"""One self-contained HTML page: inline CSS and JavaScript from ``report/assets``, data as a JSON block.

Shared by the report (:mod:`headscope.report.build`) and the viewer (:mod:`headscope.viewer`). A Content
Security Policy forbids every network request, and corpus text only ever travels inside the JSON block,
escaped so that no ``</script>`` in a token can end it; the scripts place it with ``textContent``.
"""

from __future__ import annotations

import base64
import json
from importlib import resources
from typing import Any

import numpy as np

#: Nothing may be fetched: scripts and styles are inline, images are the run's own files or data: URLs.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' file: data:; "
       "base-uri 'none'; form-action 'none'")

_JSON_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026", 0x2028: "\\u2028",
                 0x2029: "\\u2029"}


def asset(name: str) -> str:
    """The text of ``headscope/report/assets/{name}``."""
    return (resources.files("headscope.report") / "assets" / name).read_text(encoding="utf-8")


def script_json(obj: Any) -> str:
    """``obj`` as JSON that is safe inside ``<script type="application/json">`` (no ``<``, ``>``, ``&``)."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).translate(_JSON_ESCAPES)


def b64_array(array: np.ndarray, dtype: str) -> str:
    """Base64 of ``array`` cast to the little-endian ``dtype`` (``<f4``, ``<f2``, ``u1``), C order."""
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def render_page(title: str, body: str, data: Any, scripts: list[str]) -> str:
    """A complete HTML page.

    Parameters
    ----------
    title : str
        Already escaped text for ``<title>``.
    body : str
        Markup of the body (every corpus string in it already escaped).
    data : json-able
        Put in ``<script id="headscope-data" type="application/json">`` for the scripts to read.
    scripts : list of str
        Asset file names, inlined in order after ``common.js``.
    """
    js = "\n".join(asset(name) for name in ["common.js", *scripts])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{asset("style.css")}</style>
</head><body>
{body}
<div id="tooltip" hidden></div>
<script id="headscope-data" type="application/json">{script_json(data)}</script>
<script>{js}</script>
</body></html>
"""
