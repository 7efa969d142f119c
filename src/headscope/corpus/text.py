"""Raw text: one sentence per line, a blank line between documents."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from headscope.corpus.types import Document, Sentence
from headscope.manifest import Manifest

_WORD_RE = re.compile(r"\w+(?:['’.-]\w+)*|[^\w\s]")


def split_words(text: str) -> list[str]:
    """Split raw text into words, punctuation marks standing alone (as treebanks do).

    >>> split_words("Hello, world's end.")
    ['Hello', ',', "world's", 'end', '.']
    """
    return _WORD_RE.findall(text)


def word_spans(text: str) -> list[tuple[int, int]]:
    """The ``[start, end)`` offsets in ``text`` of the words :func:`split_words` finds (every character that is
    not white space belongs to exactly one word).

    >>> word_spans("Hi, you")
    [(0, 2), (2, 3), (4, 7)]
    """
    return [m.span() for m in _WORD_RE.finditer(text)]


def text_sentence(text: str, file: str, line: int) -> Sentence:
    """One raw-text sentence: its words, where each stands in ``text``, and ``text`` itself."""
    spans = word_spans(text)
    return Sentence([text[a:b] for a, b in spans], file, line, text=text, spans=spans)


def read_lines(path: str | Path, manifest: Manifest) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` of a UTF-8 file, reporting what cannot be read instead of failing.

    A missing or empty file and a line that is not valid UTF-8 are recorded in ``manifest`` with file and
    line; reading goes on with the next line or file.
    """
    p = Path(path)
    if not p.is_file():
        manifest.skip(p, None, "file not found" if not p.exists() else "not a regular file")
        return
    if p.stat().st_size == 0:
        manifest.skip(p, None, "file is empty")
        return
    with open(p, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                manifest.skip(p, number, f"not valid UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})"
                              "; line skipped")
                continue
            yield number, text.rstrip("\r\n").removeprefix("\ufeff") if number == 1 else text.rstrip("\r\n")


def read_text(path: str | Path, manifest: Manifest) -> Iterator[Document]:
    """Read a raw-text file into documents of sentences.

    Each sentence keeps its line as written (without the line's leading and trailing white space; tabs and
    double spaces inside it stay) as ``Sentence.text``, with the span of every word in it.

    Parameters
    ----------
    path : str or Path
        One sentence per line; a blank line ends a document.
    manifest : Manifest
        Receives the counts (``sentences_read``) and any bad line.
    """
    sentences: list[Sentence] = []
    any_text = False
    for number, line in read_lines(path, manifest):
        text = line.strip()
        if not text:
            if sentences:
                yield Document(sentences, str(path), sentences[0].line)
                sentences = []
            continue
        any_text = True
        manifest.count("sentences_read")
        sentence = text_sentence(text, str(path), number)
        if not sentence.words:
            manifest.skip(path, number, "line has no words")
            continue
        sentences.append(sentence)
    if sentences:
        yield Document(sentences, str(path), sentences[0].line)
    elif not any_text and Path(path).is_file() and Path(path).stat().st_size > 0:
        manifest.skip(path, None, "file has no text (only blank or unreadable lines)")
