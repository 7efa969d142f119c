"""A few whole attention maps from the corpus, kept for the report's head profiles.

Every other analysis keeps sufficient statistics only; this one keeps the full piece-level maps of a handful
of sequences (every layer and head, float16), so a user who clicks a head in the report sees what it does on
real text. The choice of sequences depends on the corpus alone, not on batching or sharding: the
``example_maps`` longest sequences of at most ``example_max_tokens`` tokens, earlier sequences first among
equals. Long sequences are never cut, since a cropped map would hide the [SEP] columns many heads attend to.

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

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.engine.capture import LayerAttention
    from headscope.engine.context import AnalysisContext
    from headscope.model.encode import Example


@dataclass
class ExampleMapsOptions:
    """Options of :class:`ExampleMaps`."""

    example_maps: int = option(3, help="Sequences whose full attention maps are kept for the report's head "
                               "profiles (0 keeps none).")
    """How many sequences to keep."""
    example_max_tokens: int = option(48, help="Longest sequence (in model tokens) whose maps may be kept; "
                                     "the longest sequences up to this length are chosen.")
    """Upper bound on a kept sequence's length, so ``examples.json`` stays small."""


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


def describe(ex: Example) -> dict[str, Any]:
    """The JSON description of an input kept for the report."""
    words = [w for s in ex.sentences for w in s.words]
    return {"index": ex.index, "kind": ex.kind, "file": ex.file, "line": ex.line, "text": " ".join(words),
            "pieces": list(ex.pieces), "units": list(ex.units),
            "unit_of_piece": ex.unit_of_piece.astype(int).tolist()}


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


@register
class ExampleMaps(Analysis):
    """Keeps the attention maps of a few sequences for the report (see the module docstring)."""

    # declared state (add_state in start)
    kept_: list[KeptMap]

    name = "examples"
    accepts_rollout = True
    report_order = 90
    reads_pieces = True
    description = "keep the full attention maps of a few short sequences for the report's head profiles"
    Options = ExampleMapsOptions

    def start(self, ctx: AnalysisContext) -> None:
        if self.options.example_maps < 0 or self.options.example_max_tokens < 1:
            raise ValueError("example_maps must be >= 0 and example_max_tokens >= 1")
        self.add_state("kept_", [], reduce=self._best)
        self._rows: list[int] = []
        self._layers: list[torch.Tensor] = []

    def _best(self, mine: list[KeptMap], theirs: list[KeptMap]) -> list[KeptMap]:
        """The reduction of ``kept_``: the ``example_maps`` best of both (shortest first, then corpus order)."""
        return sorted([*mine, *theirs], key=lambda k: k.key)[:self.options.example_maps]

    def _keep(self, candidates: list[KeptMap]) -> None:
        self.kept_ = self._best(self.kept_, candidates)

    def begin_batch(self, batch: Batch) -> None:
        limit, wanted = self.options.example_max_tokens, self.options.example_maps
        worst = self.kept_[-1].key if self.kept_ and len(self.kept_) >= wanted else None
        # Only sequences that could still enter the kept set are copied; whether they do is decided in
        # end_batch, once every layer is in. A loop over the batch's sequences, not over tokens.
        self._rows = [row for row, ex in enumerate(batch.examples)
                      if wanted and ex.length <= limit and (worst is None or (-ex.length, ex.index) < worst)]
        self._index = torch.tensor(self._rows, dtype=torch.int64, device=batch.lengths.device)
        self._width = max((batch.examples[row].length for row in self._rows), default=0)
        self._layers = []

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
                n = ex.length
                maps = torch.stack([layer[c, :, :n, :n] for layer in self._layers])  # [layer, head, n, n]
                candidates.append(KeptMap(ex.index, n, describe(ex), maps))
            self._keep(candidates)
        self._rows, self._layers = [], []

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        arrays = {f"attention.{k}": kept.attention.numpy() for k, kept in enumerate(self.kept_)}
        return arrays, {"kept": [{"index": k.index, "length": k.length, "source": k.source} for k in self.kept_]}

    def load_state_dict(self, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
        self.kept_ = [KeptMap(int(entry["index"]), int(entry["length"]), dict(entry["source"]),
                              torch.from_numpy(np.array(arrays[f"attention.{k}"], dtype=np.float16)))
                      for k, entry in enumerate(meta["kept"])]

    def finalize(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        kept = sorted(self.kept_, key=lambda k: k.index)
        return AnalysisResult(
            name=self.name,
            documents={"examples": {"encoding": "base64 little-endian float16, shape [layer, head, query, key]",
                                    "examples": [example_document(k) for k in kept]}},
            summary={"kept": len(kept), "max_tokens": self.options.example_max_tokens,
                     "indices": [k.index for k in kept]},
        )
