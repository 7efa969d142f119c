"""The viewer's page: every head's attention on one input, as one self-contained HTML file.

Shared by ``headscope view`` (:mod:`headscope.viewer`, which runs the model on a new input) and the report,
which writes one such page for each sequence the ``examples`` analysis kept (from the run's files alone). The
page opens on the head named in its address (``example-0.html#L3H5``), else on L0H0.

Weights are stored as one byte each, ``round(255 * sqrt(weight))`` (base64 of an array of shape
[layer, head, query, key]): the square root keeps the small weights of broad heads distinguishable (a
uniform row over 512 keys is code 11, not 0) and the error of a decoded weight is below 0.004.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from headscope.config import WordMode
from headscope.report.page import b64_array, render_page


class ViewedInput(Protocol):
    """What the page reads of an input: its two levels of tokens and where it comes from."""

    @property
    def pieces(self) -> Sequence[str]: ...
    @property
    def units(self) -> Sequence[str]: ...
    @property
    def file(self) -> str: ...
    @property
    def line(self) -> int: ...


def quantize_sqrt(weights: np.ndarray) -> np.ndarray:
    """Attention weights in [0, 1] as uint8 codes ``round(255 * sqrt(w))`` (see the module docstring)."""
    return np.rint(np.sqrt(np.clip(weights, 0.0, 1.0)) * 255.0).astype(np.uint8)


def dequantize_sqrt(codes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`quantize_sqrt` (float32)."""
    return (codes.astype(np.float32) / 255.0) ** 2


def view_data(example: ViewedInput, piece: np.ndarray, word: np.ndarray, model: dict[str, Any], text: str,
              notes: list[str]) -> dict[str, Any]:
    """What the viewer page's script reads.

    Parameters
    ----------
    example : ViewedInput
        The encoded input (``pieces`` and ``units`` label the two levels; ``file`` and ``line`` say where it
        comes from).
    piece : ndarray of shape (n_layers, n_heads, n_pieces, n_pieces)
    word : ndarray of shape (n_layers, n_heads, n_units, n_units)
    model : dict
        ``name``, ``n_layers``, ``n_heads``.
    text : str
        The input as the user gave it (shown as text).
    notes : list of str
        Truncation and tokenizer messages.
    """
    return {
        "model": model, "text": text, "notes": notes, "source": f"{example.file}:{example.line}",
        "encoding": "uint8 round(255*sqrt(weight)), shape [layer, head, query, key]",
        "levels": {
            "word": {"tokens": list(example.units), "n": int(word.shape[-1]),
                     "data": b64_array(quantize_sqrt(word), "u1")},
            "piece": {"tokens": list(example.pieces), "n": int(piece.shape[-1]),
                      "data": b64_array(quantize_sqrt(piece), "u1")},
        },
    }


BODY = """<header><h1>{title}</h1>
<p class="note" id="meta"></p>
<p class="input-text" id="input-text"></p>
<ul class="note" id="notes"></ul>
</header>
<main>
<div class="controls">
<span>Level:</span>
<label><input type="radio" name="level" value="word" checked> words</label>
<label><input type="radio" name="level" value="piece"> pieces</label>
<label>Lines from weight <input type="range" id="threshold" min="0" max="0.5" step="0.01" value="0.05">
<span id="threshold-value"></span></label>
<span id="selected" class="tag"></span>
</div>
<div class="viewer">
<div><h4>All heads (rows: layers, columns: heads); click one</h4>
<canvas id="thumbs" tabindex="0" aria-label="every head's attention map; click to choose a head"></canvas></div>
<div><h4 id="big-title">Chosen head</h4>
<div class="big">
<div><canvas id="heatmap" aria-label="attention map of the chosen head, query tokens down the left, key tokens
along the bottom"></canvas>
<p class="note" id="heat-caption"></p>
<p class="cellinfo" id="cellinfo">hover the map: query → key: weight</p></div>
<div class="scroll"><canvas id="lines" aria-label="lines from each token to the tokens it attends to"></canvas></div>
</div></div></div>
<p class="note">Colour ∝ √weight, from white (0) to dark blue (1). Lines: left tokens attend to right
tokens; hover a token on the left to see only its lines.</p>
</main>"""


def render_view(data: dict[str, Any]) -> str:
    """The viewer page (HTML text) for :func:`view_data`'s output."""
    title = f"headscope view: {html.escape(str(data['model'].get('name', '?')))}"
    return render_page(title, BODY.format(title=title), data, ["viewer.js"])


def word_maps(piece: np.ndarray, unit_of_piece: list[int], n_units: int, mode: WordMode = "mean"
              ) -> np.ndarray:
    """Word-level maps (shape (n_layers, n_heads, n_units, n_units)) from piece-level ones, as the run's
    analyses see them (:func:`headscope.engine.wordlevel.word_attention`)."""
    import torch

    from headscope.engine.wordlevel import word_attention

    pieces = torch.from_numpy(np.asarray(piece, dtype=np.float32))[None]
    units = torch.as_tensor(unit_of_piece, dtype=torch.long)[None]
    return word_attention(pieces, units, n_units, mode)[0].numpy()
