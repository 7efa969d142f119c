"""Readers and segment packing: bad input is reported with file and line and counted, never dropped."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from headscope.corpus.text import read_text, split_words
from headscope.corpus.wiki import split_sentences
from headscope.manifest import Manifest
from headscope.model.encode import Encoder
from headscope.model.segments import pack_segments


def test_split_words_and_sentences() -> None:
    assert split_words("Hello, world's end (1990).") == ["Hello", ",", "world's", "end", "(", "1990", ")", "."]
    assert split_sentences("It was Mr. Smith. He met J. Doe at 5. Then rain fell! Done?") == [
        "It was Mr. Smith.", "He met J. Doe at 5.", "Then rain fell!", "Done?"]


def test_documents_split_on_blank_lines(text_file: Path) -> None:
    m = Manifest()
    docs = list(read_text(text_file, m))
    assert [len(d.sentences) for d in docs] == [4, 3]
    assert docs[1].sentences[0].line == 6
    assert m.counts["sentences_read"] == 7


def test_missing_empty_and_non_utf8(tmp_path: Path) -> None:
    m = Manifest()
    assert list(read_text(tmp_path / "nope.txt", m)) == []
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert list(read_text(empty, m)) == []
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"The cat saw the dog.\nCaf\xe9 latte is good.\nThe dog ran.\n")
    docs = list(read_text(bad, m))
    assert [s.line for s in docs[0].sentences] == [1, 3]
    reasons = {(Path(e.file).name, e.line): e.reason for e in m.events}
    assert "file not found" in reasons[("nope.txt", None)]
    assert "empty" in reasons[("empty.txt", None)]
    assert "UTF-8" in reasons[("bad.txt", 2)]
    assert m.counts["skipped"] == 3


@pytest.fixture(scope="module")
def encoder(tiny_bert: Path) -> Encoder:
    return Encoder(AutoTokenizer.from_pretrained(tiny_bert), max_length=20)


def test_segments_fit_and_split_is_seeded(text_file: Path, encoder: Encoder) -> None:
    def run(seed: int):
        m = Manifest()
        return [(len(ex.sentences), ex.segment.tolist(), ex.length)
                for ex in pack_segments(read_text(text_file, m), encoder, m, seed)], m

    first, m = run(0)
    again, _ = run(0)
    assert first == again
    assert all(length <= 20 for _, _, length in first)
    assert sum(n for n, _, _ in first) + m.counts["skipped"] == 7  # every sentence is used once
    # Every multi-sentence segment has a B part with segment id 1, ending in the final [SEP].
    for n, seg, _ in first:
        assert seg[0] == 0 and (seg[-1] == 1) == (n >= 2)


def test_segment_limit(text_file: Path, encoder: Encoder) -> None:
    m = Manifest()
    out = list(pack_segments(read_text(text_file, m), encoder, m, 0, limit=2))
    assert [ex.index for ex in out] == [0, 1]
