"""Raw text: one sentence per line, a blank line between documents."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
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


def read_text(path: str | Path, manifest: Manifest,
              words: Callable[[str], list[str]] = split_words) -> Iterator[Document]:
    """Read a raw-text file into documents of sentences.

    Parameters
    ----------
    path : str or Path
        One sentence per line; a blank line ends a document.
    manifest : Manifest
        Receives the counts (``sentences_read``) and any bad line.
    words : callable
        Splits a sentence into words.
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
        ws = words(text)
        if not ws:
            manifest.skip(path, number, "line has no words")
            continue
        sentences.append(Sentence(ws, str(path), number))
    if sentences:
        yield Document(sentences, str(path), sentences[0].line)
    elif not any_text and Path(path).is_file() and Path(path).stat().st_size > 0:
        manifest.skip(path, None, "file has no text (only blank or unreadable lines)")
