"""Packing documents into BERT pre-training style segments ``[CLS] A [SEP] B [SEP]``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from headscope.corpus.types import Document, Sentence
from headscope.manifest import Manifest
from headscope.model.encode import Encoder, Example


def _chunks(documents: Iterable[Document], encoder: Encoder, budget: int) -> Iterator[list[Sentence]]:
    """Runs of consecutive sentences of one document that fit in ``budget`` pieces together."""
    for doc in documents:
        chunk: list[Sentence] = []
        used = 0
        for sentence, n in zip(doc.sentences, encoder.count_pieces(doc.sentences), strict=True):
            if chunk and used + n > budget:
                yield chunk
                chunk, used = [], 0
            chunk.append(sentence)
            used += n
        if chunk:
            yield chunk


def pack_segments(documents: Iterable[Document], encoder: Encoder, manifest: Manifest, seed: int,
                  start_index: int = 0, limit: int | None = None) -> Iterator[Example]:
    """Greedily fill segments with consecutive sentences of one document, then split them into A and B.

    A segment holds as many whole sentences as fit in ``encoder.max_length`` tokens. With two or more
    sentences the A/B split falls at a sentence boundary drawn with ``seed`` (B gets token type 1); a lone
    sentence makes a single-segment input ``[CLS] A [SEP]``; a sentence longer than the limit on its own is
    cut and counted as truncated. For a decoder LM (a tokenizer without a separator) a segment is one
    window of consecutive sentences with no A/B split, BOS first where the tokenizer adds one (``--bos``).
    Sentences are joined by one space and the window's string is tokenized whole (:class:`Encoder`).

    Yields
    ------
    Example
        ``kind == "segment"``, indices from ``start_index`` on.
    """
    if limit is not None and limit <= 0:
        return
    rng = np.random.default_rng(seed)
    index = start_index
    for chunk in _chunks(documents, encoder, encoder.max_length - encoder.n_special(pair=True)):
        if len(chunk) >= 2 and encoder.supports_pairs:
            split = int(rng.integers(1, len(chunk)))
            part_a, part_b = chunk[:split], chunk[split:]
        else:
            part_a, part_b = chunk, None
        ex = encoder.encode(index, "segment", part_a, part_b, manifest, truncate=True)
        if ex is None:
            continue
        manifest.count("segments")
        manifest.count("sentences_used", len(chunk))
        yield ex
        index += 1
        if limit is not None and index - start_index >= limit:
            return


def document_sequences(documents: Iterable[Document], encoder: Encoder, manifest: Manifest, start_index: int = 0,
                       limit: int | None = None) -> Iterator[Example]:
    """One sequence per document, cut to its first ``encoder.max_length`` tokens, no packing (``--conventions gu``).

    Gu et al.'s released ``eval_sink_open_source.py`` tokenizes each prompt whole (with the tokenizer's own
    special tokens: BOS where it adds one), asserts it has at least T tokens and keeps its first T. Here a
    document (a blank-line-separated block of raw text, its sentences joined by one space) is a prompt; one
    shorter than ``max_length`` tokens is left out and recorded with file and line (their script would stop);
    the documents cut are counted (``documents_cut``) rather than each reported.

    Yields
    ------
    Example
        ``kind == "segment"``, exactly ``encoder.max_length`` tokens, indices from ``start_index`` on.
    """
    if limit is not None and limit <= 0:
        return
    index = start_index
    for doc in documents:
        if not doc.sentences:
            continue
        # The cut is the protocol, not a problem of the input: counted (documents_cut), not a warning each.
        scratch = Manifest(log_events=False)
        ex = encoder.encode(index, "segment", list(doc.sentences), None, scratch, truncate=True)
        for event in scratch.events:
            if event.kind == "truncated":
                manifest.count("documents_cut")
            elif event.kind == "skipped":
                manifest.skip(event.file, event.line, event.reason)
            else:
                manifest.warn(event.file, event.line, event.reason)
        if ex is None:
            continue
        if ex.length < encoder.max_length:
            manifest.skip(doc.file, doc.line, f"document of {ex.length} tokens, fewer than --max-length "
                          f"{encoder.max_length} (--conventions gu: Gu et al.'s script requires every prompt to "
                          "have at least T tokens)")
            continue
        manifest.count("segments")
        manifest.count("sentences_used", len(doc.sentences))
        yield ex
        index += 1
        if limit is not None and index - start_index >= limit:
            return
