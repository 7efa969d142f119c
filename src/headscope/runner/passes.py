"""The main pass over the corpus: in this process (``local``) or on a Ray cluster (``ray``), checkpointed.

Both number the batches in the run's deterministic order (:meth:`RunContext.batches`), count every batch
exactly once into the analyses' accumulators, record the counted batch numbers in a
:class:`~headscope.runner.checkpoint.Progress`, checkpoint every ``--checkpoint-every`` batches, and on
Ctrl-C/SIGTERM checkpoint and raise :class:`~headscope.engine.interrupt.RunInterrupted`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from headscope.analyses.base import Analysis
from headscope.engine.batch import Batch
from headscope.engine.interrupt import RunInterrupted, StopOnSignal
from headscope.engine.progress import Tracker
from headscope.runner.checkpoint import Progress
from headscope.runner.checkpoint import save as save_checkpoint
from headscope.runner.context import RunContext
from headscope.runner.feed import feed_batch

logger = logging.getLogger("headscope")


def progress_bar(batches: Iterator[Batch], ctx: RunContext, force: bool = False) -> Iterator[Batch]:
    """Count the batch stream in a :class:`~headscope.engine.progress.Tracker`: a bar with rate and ETA on a
    terminal (or when ``force``), else a log line every 30 s or 10 %.

    It counts what the user gave: raw-text segments when only raw text is read up to ``--max-segments``,
    else sentences. Log records go through the bar's writer meanwhile, so a warning does not break the bar.
    """
    corpus = ctx.corpus
    text_estimate, other_estimate = corpus.estimated_sentences()
    by_segments = corpus.segment_limit is not None and other_estimate == 0
    total = corpus.segment_limit if by_segments else (text_estimate + other_estimate) or None
    segments = segment_sentences = 0
    with Tracker("main pass", "segments" if by_segments else "sentences", total, ctx.config.quiet,
                 terminal=True if force else None) as tracker:
        for batch in batches:
            n = sum(len(ex.sentences) for ex in batch.examples)
            seen = [ex for ex in batch.examples if ex.kind == "segment"]
            if by_segments:
                n = len(seen)
            elif corpus.segment_limit is not None and seen:
                segments += len(seen)
                segment_sentences += sum(len(ex.sentences) for ex in seen)
                # Text stops after a number of segments: re-estimate the total from what was seen.
                text_total = min(text_estimate, segment_sentences / segments * corpus.segment_limit)
                tracker.total = max(tracker.n + n, int(text_total) + other_estimate)
            yield batch
            tracker.update(n)


class _Segment:
    """This process's share of the pass, for ``run.json`` and the checkpoint."""

    def __init__(self, progress: Progress, engine: str) -> None:
        self.progress = progress
        self.t0 = time.perf_counter()
        self.entry: dict[str, Any] = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                      "engine": engine, "batches": 0, "seconds": 0.0}
        progress.segments.append(self.entry)

    def count(self) -> None:
        self.entry["batches"] += 1
        self.entry["seconds"] = round(time.perf_counter() - self.t0, 3)


class _Checkpointer:
    def __init__(self, ctx: RunContext, analyses: list[Analysis], progress: Progress, fp: dict[str, Any]) -> None:
        self.ctx, self.analyses, self.progress, self.fp = ctx, analyses, progress, fp
        self.since = 0

    def counted(self) -> None:
        self.since += 1
        every = self.ctx.config.checkpoint_every
        if every and self.since >= every:
            self.save()

    def save(self) -> str | None:
        self.since = 0
        if not self.ctx.config.out:
            return None
        t = time.perf_counter()
        folder = save_checkpoint(self.ctx.config.out, self.fp, self.progress, self.analyses)
        logger.debug("checkpoint: %d batches in %.2f s", len(self.progress.done), time.perf_counter() - t)
        return str(folder)

    def interrupted(self, signal_name: str) -> RunInterrupted:
        where = self.save()
        if where is None:
            return RunInterrupted(f"interrupted ({signal_name}); nothing was saved (no --out)", None)
        return RunInterrupted(f"interrupted ({signal_name}) after {len(self.progress.done)} batches; resume "
                              f"with: headscope run --resume {self.ctx.config.out}", where)


def local_pass(ctx: RunContext, analyses: list[Analysis], progress: Progress, fp: dict[str, Any]
               ) -> tuple[int, int]:
    """Every batch through the model in this process. Returns (examples, tokens) of the whole corpus."""
    checkpointer = _Checkpointer(ctx, analyses, progress, fp)
    segment = _Segment(progress, "local")
    n_examples = n_tokens = 0
    with StopOnSignal() as stop:
        for k, batch in enumerate(progress_bar(ctx.batches(ctx.corpus.examples(ctx.manifest)), ctx)):
            n_examples += batch.size
            n_tokens += int(batch.lengths.sum())
            if k in progress.done:
                continue  # counted before the checkpoint this run resumed from
            for name, rows in feed_batch(ctx, analyses, batch).items():
                progress.used[name] = progress.used.get(name, 0) + rows
            progress.done.add(k)
            segment.count()
            checkpointer.counted()
            if stop.requested:
                raise checkpointer.interrupted(stop.requested)
    return n_examples, n_tokens


def ray_pass(ctx: RunContext, analyses: list[Analysis], progress: Progress, fp: dict[str, Any]
             ) -> tuple[int, int]:
    """The batches on a Ray cluster (:mod:`headscope.runner.ray_engine`)."""
    from headscope.runner.ray_engine import run_on_ray

    checkpointer = _Checkpointer(ctx, analyses, progress, fp)
    segment = _Segment(progress, "ray")

    def counted() -> None:
        segment.count()
        checkpointer.counted()

    with StopOnSignal() as stop:
        return run_on_ray(ctx, analyses, progress, on_counted=counted,
                          stop=lambda: stop.requested, interrupted=checkpointer.interrupted)
