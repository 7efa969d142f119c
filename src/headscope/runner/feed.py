"""Feeding one batch to every analysis, layer by layer, as the capture hands the layers over."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from headscope.analyses.base import Analysis
from headscope.config import WordMode
from headscope.engine.batch import Batch
from headscope.engine.capture import Consumer, LayerAttention, capture
from headscope.engine.wordlevel import WordAttention
from headscope.runner.context import RunContext


@dataclass
class _Feed:
    """One analysis's view of the batch: the rows it wants (None: all of them)."""

    analysis: Analysis
    batch: Batch
    rows: torch.Tensor | None
    pieces: bool
    words: bool
    """Whether it gets word-level attention for this batch."""

    def block(self, block: LayerAttention) -> LayerAttention:
        return block if self.rows is None else block.select(self.rows)

    def word_rows(self, words: torch.Tensor) -> torch.Tensor:
        return words if self.rows is None else words.index_select(0, self.rows)


def _feeds(analyses: list[Analysis], batch: Batch) -> tuple[list[_Feed], dict[str, int]]:
    feeds: list[_Feed] = []
    used: dict[str, int] = {}
    for analysis in analyses:
        rows = [k for k, ex in enumerate(batch.examples) if analysis.wants(ex)]
        used[analysis.name] = len(rows)
        pieces = analysis.reads_pieces  # declared flags, read per batch: start may have set them
        words = analysis.reads_words and any(analysis.wants_words(batch.examples[k]) for k in rows)
        if not rows or not (pieces or words):
            continue
        if len(rows) == batch.size:
            feeds.append(_Feed(analysis, batch, None, pieces, words))
        else:
            index = torch.tensor(rows, dtype=torch.int64, device=batch.input_ids.device)
            feeds.append(_Feed(analysis, batch.select(rows), index, pieces, words))
    return feeds, used


def _consumer(feeds: list[_Feed], batch: Batch, word_mode: WordMode) -> Consumer:
    """What the capture calls with each block: piece-level updates, and word-level ones after a layer's end."""
    word_feeds = [f for f in feeds if f.words]
    piece_feeds = [f for f in feeds if f.pieces]
    words = WordAttention(batch.unit_of_piece, int(batch.n_units.max()), word_mode) if word_feeds else None

    def consume(block: LayerAttention) -> None:
        for feed in piece_feeds:
            feed.analysis.update(feed.batch, feed.block(block))
        if words is not None:
            layer_words = words.add(block.weights, block.query_start)
            if layer_words is not None:
                for feed in word_feeds:
                    feed.analysis.update_words(feed.batch, block.layer, feed.word_rows(layer_words))

    return consume


def _drive(analyses: list[Analysis], batch: Batch, word_mode: WordMode, source: Callable[[Consumer], None]
           ) -> dict[str, int]:
    """begin_batch, every block from ``source`` (handed a consumer), end_batch; examples used per analysis."""
    feeds, used = _feeds(analyses, batch)
    if not feeds:
        return used
    for feed in feeds:
        feed.analysis.begin_batch(feed.batch)
    source(_consumer(feeds, batch, word_mode))
    for feed in feeds:
        feed.analysis.end_batch(feed.batch)
    return used


def feed_batch(ctx: RunContext, analyses: list[Analysis], batch: Batch) -> dict[str, int]:
    """Run the model on ``batch`` once and hand every layer to every analysis that wants some of its rows.

    Word-level attention is built once per layer (from the same blocks) when any analysis asks for it.

    Returns
    -------
    dict of str to int
        Examples of the batch each analysis used.
    """
    return _drive(analyses, batch, ctx.config.word_attention, lambda consume: capture(
        ctx.loaded, batch, consume, ctx.config.attention_bytes(), padding_side=ctx.config.padding_side,
        weights=ctx.config.weights))


def feed_attention(analyses: list[Analysis], batch: Batch, attention: torch.Tensor, word_mode: WordMode = "mean",
                   block_rows: int | None = None) -> dict[str, int]:
    """Feed attention maps computed elsewhere, as the engine would: layer by layer, in blocks of query rows.

    For maps of one's own (another tool's, hand-made ones in tests) and for checking that an analysis gives
    the same result whatever the block size.

    Parameters
    ----------
    analyses : list of Analysis
        Started analyses.
    batch : Batch
    attention : Tensor of shape [batch, layer, head, query, key]
        Padded rows and columns 0, right-aligned.
    word_mode : {"mean", "first"}
        Word-level pooling for analyses with ``reads_words``.
    block_rows : int, optional
        Query rows per block (default: whole layers).

    Returns
    -------
    dict of str to int
        Examples of the batch each analysis used.
    """
    attention = attention.float()
    n = attention.shape[-1]
    rows = block_rows or n

    def blocks(consume: Consumer) -> None:
        for layer in range(attention.shape[1]):
            for q0 in range(0, n, rows):
                consume(LayerAttention(layer, attention[:, layer, :, q0:q0 + rows], q0))

    return _drive(analyses, batch, word_mode, blocks)
