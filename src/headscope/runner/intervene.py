"""The passes of the interventions: after the main pass, the engine runs each pass an analysis declares
(:meth:`~headscope.analyses.base.Analysis.passes`), with progress, and hands every forward's output back.

An analysis's ``passes`` is a generator: it may read what its earlier passes gave (its own state) before it
yields the next one, so that pruning re-estimates importance after each step. The engine owns the model, the
corpus stream and the batches: a sample of the corpus is streamed once and its batches are kept while the
next pass reads the same sample.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from headscope.engine.batch import Batch
from headscope.engine.forwards import CorpusRows, Forward, Generate, Pass, TokenRows, plain_batch, run_forward
from headscope.engine.progress import Tracker, track
from headscope.model.encode import probe_example

if TYPE_CHECKING:
    from headscope.analyses.base import Analysis, AnalysisResult
    from headscope.engine.capture import LayerAttention
    from headscope.engine.context import AnalysisContext
    from headscope.runner.context import RunContext

logger = logging.getLogger("headscope")


class _Batches:
    """The batches of each pass's examples; those of the last corpus sample are kept for the next pass."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.kept: tuple[frozenset[int], list[Batch]] | None = None

    def of(self, rows: CorpusRows) -> list[Batch]:
        """The batches of a sample of the corpus."""
        if self.kept is None or self.kept[0] != rows.indices:
            picked = rows.indices
            stream = (ex for k, ex in enumerate(self.ctx.corpus.examples()) if k in picked)
            with torch.inference_mode(False):
                self.kept = (picked, [plain_batch(b) for b in self.ctx.batches(stream)])
        batches = self.kept[1]
        if rows.only is None:
            return batches
        out = []
        for batch in batches:
            keep = [r for r, ex in enumerate(batch.examples) if ex.index in rows.only]
            if keep:
                out.append(batch.select(keep))
        return out

    def stream(self, rows: TokenRows) -> list[Batch]:
        """The batches of inputs an analysis built."""
        tok = self.ctx.loaded.tokenizer
        examples = (probe_example(k, ids, rows.has_bos, tok, rows.kind) for k, ids in enumerate(rows.sequences))
        return list(self.ctx.batches(examples))


def run_passes(ctx: RunContext, analysis: Analysis, actx: AnalysisContext, results: dict[str, AnalysisResult]
               ) -> int:
    """Run every pass ``analysis`` declares; returns how many distinct examples they read."""
    batches = _Batches(ctx)
    seen: set[tuple[str, int]] = set()
    config = ctx.config
    for spec in analysis.passes(actx, results):
        todo = batches.stream(spec.rows) if isinstance(spec.rows, TokenRows) else batches.of(spec.rows)
        total = sum(int(b.size) for b in todo)
        with Tracker(spec.name, spec.unit, total, config.quiet or not spec.progress) as tracker:
            for batch in todo:
                _run_batch(ctx, analysis, spec, batch)
                kind = "tokens" if isinstance(spec.rows, TokenRows) else "corpus"
                seen.update((kind, ex.index) for ex in batch.examples)
                tracker.update(batch.size)
    return len(seen)


def _run_batch(ctx: RunContext, analysis: Analysis, spec: Pass, batch: Batch) -> None:
    config = ctx.config
    if spec.prepare is not None:
        with torch.inference_mode(False):
            batch = spec.prepare(batch)
    forwards: Iterable[Forward | Generate] = spec.forwards(batch) if callable(spec.forwards) else spec.forwards
    if len(forwards) > 1 or any(isinstance(f, Generate) for f in forwards):  # type: ignore[arg-type]
        # Many forwards per batch (ablation's conditions, retrieval's generations): show them too.
        forwards = track(forwards, f"{spec.name}: forwards of this batch", "forwards", quiet=config.quiet,
                         fraction=None, leave=False, final=False)
    for forward in forwards:
        def on_block(block: LayerAttention, forward: Forward | Generate = forward) -> None:
            analysis.update_pass_attention(batch, forward, block)

        out = run_forward(ctx.loaded, batch, forward, int(config.seed), on_block=on_block,
                          budget_bytes=config.attention_bytes(), padding_side=config.padding_side,
                          quiet=bool(config.quiet))
        analysis.update_pass(batch, forward, out)
