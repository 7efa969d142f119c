"""A few whole attention maps from the corpus, kept for the report's head profiles.

Every other analysis keeps sufficient statistics only; this one keeps the full piece-level maps of a handful
of sequences (every layer and head, float16), so a user who clicks a head in the report sees what it does on
real text. The choice of sequences depends on the corpus alone, not on batching or sharding: the
``example_maps`` longest sequences of at most ``example_max_tokens`` tokens, earlier sequences first among
equals. An encoder's long sequences are never cut: every token attends to every other, so a crop is not the
attention of the shorter text, and it would hide the [SEP] columns many heads attend to. A decoder LM's long
sequence (a raw-text window is usually far longer than the limit) gives its first ``example_max_tokens``
tokens instead: row ``i`` of a causal model attends to keys ``0..i`` only and no later token changes it, so
the map's top-left corner is exactly the attention of that prefix read alone (``prefix_of`` in the record
gives the whole sequence's length).

The ``text`` of a record is what the model read, as written (a raw-text line, CoNLL-U ``# text``; the forms
joined by spaces under ``--treebank-input forms``), its sentences joined by one space; a prefix's text ends
with the last word it reaches, followed by `` …``.

The maps are written to ``examples.json`` as base64 of little-endian float16 arrays of shape
[layer, head, query, key]: 2 bytes per weight instead of a decimal number.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import PureWindowsPath
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from headscope.analyses.base import Analysis, AnalysisResult
from headscope.analyses.registry import register
from headscope.config import option
from headscope.engine.state import Serializer

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.engine.capture import LayerAttention
    from headscope.engine.context import AnalysisContext
    from headscope.model.encode import Example


@dataclass(frozen=True)
class ExampleMapsOptions:
    """Options of :class:`ExampleMaps`."""

    example_maps: int = option(3, help="Sequences whose full attention maps are kept for the report's head "
                               "profiles (0 keeps none).")
    """How many sequences to keep."""
    example_max_tokens: int = option(48, help="Longest sequence (in model tokens) whose maps may be kept; "
                                     "the longest sequences up to this length are chosen (a decoder LM's "
                                     "longer sequences give their first this-many tokens, exact for a causal "
                                     "model).")
    """Upper bound on a kept sequence's length, so ``examples.json`` stays small."""

    def __post_init__(self) -> None:
        if self.example_maps < 0 or self.example_max_tokens < 1:
            raise ValueError("example_maps must be >= 0 and example_max_tokens >= 1")


@dataclass
class KeptMap:
    """One kept sequence: where it came from and its attention."""

    index: int
    """``Example.index`` (corpus order)."""
    length: int
    """Tokens of the sequence."""
    source: dict[str, Any]
    """What the report shows of the input (file, line, text, pieces, units): JSON, as in ``examples.json``."""
    attention: torch.Tensor
    """float16 on the CPU, of shape [layer, head, query, key]."""

    @property
    def key(self) -> tuple[int, int]:
        """Sort key: longer first, then earlier in the corpus."""
        return (-self.length, self.index)


def example_text(ex: Example, forms: bool = False, last_unit: int | None = None) -> str:
    """What the model read of ``ex``, as written: each sentence's text (its forms joined by spaces with
    ``forms``), one space between sentences; with ``last_unit``, only up to the end of the last word whose
    unit is at most ``last_unit``, then `` …`` (a prefix of the sequence)."""
    parts: list[str] = []
    for k, sentence in enumerate(ex.sentences):
        text, spans = sentence.as_text(forms)
        if last_unit is not None:
            units = ex.sentence_units(k)
            reached = [w for w, u in enumerate(units) if 0 <= u <= last_unit]
            if len(reached) < len(spans):
                if reached:
                    parts.append(text[:spans[reached[-1]][1]])
                return " ".join(parts) + " …"
        parts.append(text)
    return " ".join(parts)


def describe(ex: Example, forms: bool = False, length: int | None = None) -> dict[str, Any]:
    """The JSON description of an input kept for the report: of its first ``length`` tokens when given
    (a causal model's prefix, with ``prefix_of`` the whole sequence's length)."""
    n = ex.length if length is None else min(int(length), ex.length)
    unit_of_piece = ex.unit_of_piece[:n].astype(int)
    if n == ex.length:
        return {"index": ex.index, "kind": ex.kind, "file": ex.file, "line": ex.line,
                "text": example_text(ex, forms), "pieces": list(ex.pieces), "units": list(ex.units),
                "unit_of_piece": unit_of_piece.tolist()}
    last = int(unit_of_piece.max()) if n else -1
    return {"index": ex.index, "kind": ex.kind, "file": ex.file, "line": ex.line,
            "text": example_text(ex, forms, last), "pieces": list(ex.pieces[:n]), "units": list(ex.units[:last + 1]),
            "unit_of_piece": unit_of_piece.tolist(), "prefix_of": ex.length}


def source_name(file: str) -> str:
    """The file name of an input's source, without its directory (``<text>`` stays as it is).

    Corpora often live in long cache paths; the report names a kept sequence by file name and line, and the
    full paths stay in the run summary's list of corpus files. ``PureWindowsPath`` splits at ``/`` and
    ``\\`` alike, so a run made on either system reads the same.
    """
    return PureWindowsPath(str(file)).name or str(file)


def encode_float16(array: np.ndarray) -> str:
    """Base64 of ``array`` as little-endian float16 (C order)."""
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f2").tobytes()).decode("ascii")


def decode_float16(data: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`encode_float16`: an ndarray of dtype float16 and the given shape."""
    return np.frombuffer(base64.b64decode(data), dtype="<f2").reshape(shape)


def example_document(kept: KeptMap) -> dict[str, Any]:
    """The JSON record of one kept sequence (see the module docstring for the encoding)."""
    return {**kept.source, "shape": list(kept.attention.shape), "dtype": "float16",
            "attention": encode_float16(kept.attention.numpy())}


def save_kept(kept: list[KeptMap]) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """The serializer's save of ``kept_``: each map as the array ``attention.{k}`` (float16 of shape [layer,
    head, query, key]), the rest as JSON."""
    return ({f"attention.{k}": entry.attention.numpy() for k, entry in enumerate(kept)},
            [{"index": entry.index, "length": entry.length, "source": entry.source} for entry in kept])


def load_kept(arrays: dict[str, np.ndarray], meta: list[dict[str, Any]], current: list[KeptMap]) -> list[KeptMap]:
    """The inverse of :func:`save_kept` (``current``, the started analysis's empty list, is replaced)."""
    return [KeptMap(int(entry["index"]), int(entry["length"]), dict(entry["source"]),
                    torch.from_numpy(np.array(arrays[f"attention.{k}"], dtype=np.float16)))
            for k, entry in enumerate(meta)]


@register
class ExampleMaps(Analysis):
    """Keeps the attention maps of a few sequences for the report (see the module docstring)."""

    # declared state (add_state in start)
    kept_: list[KeptMap]

    name = "examples"
    accepts_rollout = True
    report_order = 90
    reads_pieces = True
    description = "keep the full attention maps of a few short sequences (a decoder's: prefixes) for the report"
    Options = ExampleMapsOptions

    def start(self, ctx: AnalysisContext) -> None:
        # A causal model's prefix is exact (see the module docstring); an encoder's is not, so it keeps only
        # sequences that fit whole.
        self._causal = bool(ctx.info.is_causal)
        self._forms = ctx.treebank_input == "forms"
        self.add_state("kept_", [], reduce=self._best, serializer=Serializer(save_kept, load_kept))
        self._rows: list[int] = []
        self._layers: list[torch.Tensor] = []

    def _best(self, mine: list[KeptMap], theirs: list[KeptMap]) -> list[KeptMap]:
        """The reduction of ``kept_``: the ``example_maps`` best of both (shortest first, then corpus order)."""
        return sorted([*mine, *theirs], key=lambda k: k.key)[:self.options.example_maps]

    def _keep(self, candidates: list[KeptMap]) -> None:
        self.kept_ = self._best(self.kept_, candidates)

    def begin_batch(self, batch: Batch) -> None:
        wanted = self.options.example_maps
        worst = self.kept_[-1].key if self.kept_ and len(self.kept_) >= wanted else None
        # Only sequences that could still enter the kept set are copied; whether they do is decided in
        # end_batch, once every layer is in. A loop over the batch's sequences, not over tokens.
        kept = [self._kept_length(ex) if wanted else None for ex in batch.examples]
        self._rows = [row for row, (ex, n) in enumerate(zip(batch.examples, kept, strict=True))
                      if n is not None and (worst is None or (-n, ex.index) < worst)]
        self._index = torch.tensor(self._rows, dtype=torch.int64, device=batch.lengths.device)
        self._width = max((int(kept[row] or 0) for row in self._rows), default=0)
        self._layers = []

    def _kept_length(self, ex: Example) -> int | None:
        """How many of ``ex``'s tokens could be kept: all when they fit, a causal model's first
        ``example_max_tokens`` otherwise, None for an encoder's sequence that does not fit."""
        limit = self.options.example_max_tokens
        if ex.length <= limit:
            return ex.length
        return limit if self._causal else None

    def update(self, batch: Batch, block: LayerAttention) -> None:
        if not self._rows or block.query_start >= self._width:
            return
        if block.is_first:
            # One float16 CPU buffer [candidate, head, query, key] per layer, cropped to the longest candidate.
            b, h = len(self._rows), int(block.weights.shape[1])
            self._layers.append(torch.zeros(b, h, self._width, self._width, dtype=torch.float16))
        m = self._width
        q0, q1 = block.query_start, min(block.query_stop, m)
        part = block.weights[:, :, :q1 - q0, :m].index_select(0, self._index)
        self._layers[-1][:, :, q0:q1] = part.to(torch.float16).cpu()

    def end_batch(self, batch: Batch) -> None:
        if self._rows and self._layers:
            candidates = []
            for c, row in enumerate(self._rows):
                ex = batch.examples[row]
                n = int(self._kept_length(ex) or 0)
                maps = torch.stack([layer[c, :, :n, :n] for layer in self._layers])  # [layer, head, n, n]
                candidates.append(KeptMap(ex.index, n, describe(ex, self._forms, n), maps))
            self._keep(candidates)
        self._rows, self._layers = [], []

    def finalize(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        kept = sorted(self.kept_, key=lambda k: k.index)
        return AnalysisResult(
            name=self.name,
            documents={"examples": {"encoding": "base64 little-endian float16, shape [layer, head, query, key]",
                                    "examples": [example_document(k) for k in kept]}},
            summary={"kept": len(kept), "max_tokens": self.options.example_max_tokens,
                     "indices": [k.index for k in kept]},
        )
