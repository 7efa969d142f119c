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
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headscope.analyses.base import Analysis, AnalysisResult, register
from headscope.config import option
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
    example: Example
    """The encoded input (tokens, units, source sentences)."""
    attention: torch.Tensor
    """float16 on the CPU, of shape [layer, head, query, key]."""

    @property
    def key(self) -> tuple[int, int]:
        """Sort key: longer first, then earlier in the corpus."""
        return (-self.example.length, self.index)


def encode_float16(array: np.ndarray) -> str:
    """Base64 of ``array`` as little-endian float16 (C order)."""
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f2").tobytes()).decode("ascii")


def decode_float16(data: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`encode_float16`: an ndarray of dtype float16 and the given shape."""
    return np.frombuffer(base64.b64decode(data), dtype="<f2").reshape(shape)


def example_document(kept: KeptMap) -> dict[str, Any]:
    """The JSON record of one kept sequence (see the module docstring for the encoding)."""
    ex = kept.example
    words = [w for s in ex.sentences for w in s.words]
    return {
        "index": kept.index,
        "kind": ex.kind,
        "file": ex.file,
        "line": ex.line,
        "text": " ".join(words),
        "pieces": list(ex.pieces),
        "units": list(ex.units),
        "unit_of_piece": ex.unit_of_piece.astype(int).tolist(),
        "shape": list(kept.attention.shape),
        "dtype": "float16",
        "attention": encode_float16(kept.attention.numpy()),
    }


@register
class ExampleMaps(Analysis):
    """Keeps the attention maps of a few sequences for the report (see the module docstring)."""

    name = "examples"
    description = "keep the full attention maps of a few short sequences for the report's head profiles"
    Options = ExampleMapsOptions

    def start(self, ctx: Any) -> None:
        if self.options.example_maps < 0 or self.options.example_max_tokens < 1:
            raise ValueError("example_maps must be >= 0 and example_max_tokens >= 1")
        self.kept_: list[KeptMap] = []

    def _keep(self, candidates: list[KeptMap]) -> None:
        self.kept_ = sorted([*self.kept_, *candidates], key=lambda k: k.key)[:self.options.example_maps]

    def update(self, batch: Any, attn: torch.Tensor) -> None:
        limit = self.options.example_max_tokens
        worst = self.kept_[-1].key if len(self.kept_) >= self.options.example_maps else None
        candidates = []
        # A Python loop over the batch's sequences (not tokens): at most a handful are copied to the CPU.
        for row, ex in enumerate(batch.examples):
            key = (-ex.length, ex.index)
            if ex.length > limit or (worst is not None and key >= worst):
                continue
            n = ex.length
            candidates.append(KeptMap(ex.index, ex, attn[row, :, :, :n, :n].to(torch.float16).cpu()))
        if candidates:
            self._keep(candidates)

    def merge(self, other: Analysis) -> ExampleMaps:
        assert isinstance(other, ExampleMaps)
        self._keep(other.kept_)
        return self

    def finalize(self, ctx: Any, results: dict[str, AnalysisResult]) -> AnalysisResult:
        kept = sorted(self.kept_, key=lambda k: k.index)
        return AnalysisResult(
            name=self.name,
            documents={"examples": {"encoding": "base64 little-endian float16, shape [layer, head, query, key]",
                                    "examples": [example_document(k) for k in kept]}},
            summary={"kept": len(kept), "max_tokens": self.options.example_max_tokens,
                     "indices": [k.index for k in kept]},
        )

    @staticmethod
    def report(run: Any, figures: Path) -> Any:
        from headscope.report.section import ReportSection

        doc = run.documents.get("examples")
        if doc is None:
            return None
        items = "".join(
            f"<li>{html.escape(str(e['file']))}:{int(e['line'])} ({len(e['pieces'])} tokens): "
            f"<q>{html.escape(e['text'])}</q></li>" for e in doc["examples"])
        body = ("<p>Full attention maps of these sequences are kept (float16) and shown in each head's "
                "profile above.</p>" + (f"<ol>{items}</ol>" if items else
                                        "<p>No sequence was short enough to keep (see --example-max-tokens)."
                                        "</p>"))
        return ReportSection(key="examples", title="Example sequences", html=body, order=90)
