"""CoNLL-U treebanks, read with the ``conllu`` package and validated sentence by sentence.

A sentence with a malformed line, an out-of-range head, a cycle or not exactly one root is skipped and
recorded in the manifest with the file and the line of the problem; reading goes on.
Multiword-token ranges (``3-4``) are kept out of the words (their syntactic words are the words) and
empty nodes (``5.1``) are ignored, as in the basic dependency tree.

Each sentence keeps the string it was written as (:func:`sentence_text`): ``# text`` where it agrees with the
word forms, else the forms rebuilt with ``SpaceAfter=No`` honoured (a warning with the file and line, counted
as ``text_rebuilt``). The model reads that string (``--treebank-input text``, the default), or the syntactic
words joined by single spaces (``--treebank-input forms``, as Clark et al.'s code fed BERT).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import conllu

from headscope.corpus.text import read_lines
from headscope.corpus.types import Sentence
from headscope.manifest import Manifest

_ID = re.compile(r"^(\d+)(?:-(\d+)|\.(\d+))?$")


class ConlluError(ValueError):
    """A sentence that cannot be used; ``line`` is the 1-based line of the problem."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def collapse_relation(deprel: str) -> str:
    """The universal relation without its subtype: ``obl:tmod`` -> ``obl``."""
    return deprel.split(":", 1)[0]


def _blocks(path: str | Path, manifest: Manifest) -> Iterator[tuple[int, list[tuple[int, str]]]]:
    block: list[tuple[int, str]] = []
    for number, line in read_lines(path, manifest):
        if line.strip():
            block.append((number, line))
        elif block:
            yield block[0][0], block
            block = []
    if block:
        yield block[0][0], block


def _validate(block: list[tuple[int, str]]) -> None:
    """Check the token lines of one sentence; raise :class:`ConlluError` naming the bad line."""
    expected = 1
    heads: dict[int, tuple[int, int]] = {}
    for number, line in block:
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise ConlluError(number, f"expected 10 tab-separated columns, found {len(cols)}")
        m = _ID.match(cols[0])
        if m is None:
            raise ConlluError(number, f"ID {cols[0]!r} is not an integer, a range a-b or a decimal a.b")
        if m.group(2) is not None or m.group(3) is not None:
            continue
        word_id = int(m.group(1))
        if word_id != expected:
            raise ConlluError(number, f"word ID {word_id} out of sequence (expected {expected})")
        expected += 1
        if not cols[6].isdigit():
            raise ConlluError(number, f"HEAD {cols[6]!r} is not a non-negative integer")
        if not cols[7] or cols[7] == "_":
            raise ConlluError(number, "DEPREL is empty")
        heads[word_id] = (int(cols[6]), number)
    n = expected - 1
    if n == 0:
        raise ConlluError(block[0][0], "sentence has no words")
    roots = [i for i, (h, _) in heads.items() if h == 0]
    for i, (h, number) in heads.items():
        if h > n:
            raise ConlluError(number, f"HEAD {h} of word {i} is out of range (sentence has {n} words)")
    if len(roots) != 1:
        raise ConlluError(block[0][0], f"sentence has {len(roots)} roots, expected exactly 1")
    for start in heads:
        seen = set()
        node = start
        while node != 0:
            if node in seen:
                raise ConlluError(heads[start][1], f"HEAD chain from word {start} has a cycle")
            seen.add(node)
            node = heads[node][0]


def _surface_tokens(tokenlist: Any) -> list[tuple[str, list[int], bool]]:
    """The tokens as written: ``(form, indices of its syntactic words, space after)`` in order.

    A multiword token (``3-4 don't``) is one surface token for its syntactic words; a plain word is its own.
    """
    out: list[tuple[str, list[int], bool]] = []
    words = 0
    covered_to = 0
    for token in tokenlist:
        token_id = token["id"]
        misc = token["misc"] or {}
        space = misc.get("SpaceAfter") != "No"
        if isinstance(token_id, tuple) and len(token_id) == 3 and token_id[1] == "-":
            first, last = int(token_id[0]), int(token_id[2])
            out.append((token["form"], list(range(words, words + last - first + 1)), space))
            covered_to = last
        elif isinstance(token_id, int):
            if token_id > covered_to:
                out.append((token["form"], [words], space))
            words += 1
    return out


def sentence_text(tokenlist: Any) -> tuple[str, list[tuple[int, int]], str | None]:
    """The sentence's string, each syntactic word's span in it, and why ``# text`` was not used (or None).

    The string is ``# text`` when present and its characters other than white space are the surface tokens
    in order; otherwise the surface tokens joined with a space, none where ``SpaceAfter=No``. The syntactic
    words of a multiword token all get the token's span.
    """
    surface = _surface_tokens(tokenlist)
    n_words = sum(len(ws) for _, ws, _ in surface)
    spans: list[tuple[int, int]] = [(0, 0)] * n_words
    given = tokenlist.metadata.get("text")
    problem = None
    if given is not None:
        position = 0
        for form, ws, _ in surface:
            while position < len(given) and given[position].isspace():
                position += 1
            if not given.startswith(form, position):
                problem = (f"# text does not match the word forms at {form!r} (character {position + 1} of "
                           "# text)")
                break
            for w in ws:
                spans[w] = (position, position + len(form))
            position += len(form)
        else:
            if given[position:].strip():
                problem = f"# text has {given[position:].strip()!r} after the last word form"
            else:
                return given, spans, None
    parts = []
    position = 0
    for form, ws, space in surface:
        for w in ws:
            spans[w] = (position, position + len(form))
        parts.append(form + (" " if space else ""))
        position += len(parts[-1])
    return "".join(parts).rstrip(" "), spans, problem


def read_conllu(path: str | Path, manifest: Manifest, limit: int | None = None) -> Iterator[Sentence]:
    """Yield the valid sentences of a CoNLL-U file with their basic dependency trees.

    Parameters
    ----------
    path : str or Path
    manifest : Manifest
        Counts ``sentences_read``; records every skipped sentence with file and line.
    limit : int, optional
        Stop after this many sentences read.
    """
    return read_blocks(path, _blocks(path, manifest), manifest, limit)


def read_blocks(path: str | Path, blocks: Iterator[tuple[int, list[tuple[int, str]]]], manifest: Manifest,
                limit: int | None = None) -> Iterator[Sentence]:
    """:func:`read_conllu` over ``blocks`` (first line, numbered lines of one sentence) named ``path``: a file's
    blocks, or sentences held in memory (:func:`headscope.corpus.memory.tokenlist_blocks`)."""
    doc_id: str | None = None
    n_read = 0
    for first_line, block in blocks:
        comments = [text for _, text in block if text.startswith("#")]
        for c in comments:
            if c.startswith("# newdoc"):
                doc_id = c.split("=", 1)[1].strip() if "=" in c else f"{Path(path).name}:{first_line}"
        if len(comments) == len(block):
            continue  # a block of comments only (file header)
        if limit is not None and n_read >= limit:
            return
        n_read += 1
        manifest.count("sentences_read")
        try:
            _validate(block)
            tokenlist = conllu.parse("\n".join(text for _, text in block) + "\n\n")[0]
            words = [t for t in tokenlist if isinstance(t["id"], int)]
            forms = [t["form"] for t in words]
            heads = [int(t["head"]) for t in words]
            deprels = [t["deprel"] for t in words]
            upos = [t["upos"] for t in words]
            feats = [dict(t["feats"] or {}) for t in words]
            misc = [dict(t["misc"] or {}) for t in words]
        except ConlluError as exc:
            manifest.skip(path, exc.line, f"malformed CoNLL-U sentence: {exc}")
            continue
        except Exception as exc:  # the conllu package's own parse errors, and columns it could not parse
            manifest.skip(path, first_line, f"malformed CoNLL-U sentence: {type(exc).__name__}: {exc}")
            continue
        text, spans, problem = sentence_text(tokenlist)
        if problem is not None:
            text_line = next((n for n, t in block if t.startswith("# text")), first_line)
            manifest.warn(path, text_line, f"{problem}; the sentence's text is rebuilt from its word forms "
                          "(SpaceAfter=No honoured)")
            manifest.count("text_rebuilt")
        yield Sentence(
            text=text,
            spans=spans,
            file=str(path),
            line=first_line,
            doc_id=doc_id,
            sent_id=tokenlist.metadata.get("sent_id"),
            words=forms,
            heads=heads,
            deprels=deprels,
            upos=upos,
            feats=feats,
            misc=misc,
            # Readers of per-word annotations (coreference brackets) report errors at the word's own line.
            annotations={"word_lines": [n for n, text in block if text.split("\t", 1)[0].isdigit()]},
        )
