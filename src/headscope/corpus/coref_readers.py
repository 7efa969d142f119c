"""Coreference readers: CoNLL-U with CorefUD / GUM ``Entity=`` brackets, and CoNLL-2012 ``*_conll``.

Both formats are read into :class:`~headscope.corpus.types.Document` objects whose sentences carry their
mentions in ``Sentence.annotations["mentions"]`` (a list of :class:`~headscope.corpus.mentions.Mention`,
sentence-local indices); :func:`read_coref` picks the reader by format (:func:`is_conll2012`).

- CoNLL-U with CorefUD / GUM brackets in the MISC column, ``Entity=(3-person-...(7-place-...)`` to open and
  ``7)3)`` to close (the entity id is the first ``-``-separated field; a discontinuous part ``e5[1/2]`` is
  joined with its other parts into one mention). Read with :func:`headscope.corpus.conllu.read_conllu`, so
  mention head words come from the gold dependency tree (:func:`~headscope.corpus.mentions.tree_head`).
- CoNLL-2012 ``*_conll`` (``#begin document (name); part 000`` ... ``#end document``; word in column 4,
  Penn Treebank tag in column 5, coreference brackets ``(12``, ``12)``, ``(12)``, ``(1|(2)`` in the last
  column). These files have no dependency tree: mention heads come from
  :func:`~headscope.corpus.mentions.heuristic_head`, the parts of speech are mapped to UD
  (:data:`PTB_TO_UPOS`) and number/gender/person are derived from the tag and a pronoun table
  (:func:`ptb_features`).

A malformed span (a bracket never closed, closing an entity never opened, a mention crossing a sentence
boundary) is skipped with a message naming the file and line, counted as ``coref_spans_malformed``, and
reading goes on. The full choices are documented in ``docs/coref.md``. Cutting documents into model inputs
is :mod:`headscope.corpus.coref_windows`' job.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

from headscope.corpus.conllu import read_conllu
from headscope.corpus.mentions import Mention, heuristic_head, tree_head
from headscope.corpus.text import read_lines
from headscope.corpus.types import Document, Sentence
from headscope.manifest import Manifest

#: Penn Treebank tags (CoNLL-2012) to universal parts of speech, as the UD English converters map them.
PTB_TO_UPOS = {
    "PRP": "PRON", "PRP$": "PRON", "WP": "PRON", "WP$": "PRON", "EX": "PRON",
    "NNP": "PROPN", "NNPS": "PROPN", "NN": "NOUN", "NNS": "NOUN",
    "DT": "DET", "PDT": "DET", "WDT": "DET", "CD": "NUM", "JJ": "ADJ", "JJR": "ADJ", "JJS": "ADJ",
    "RB": "ADV", "RBR": "ADV", "RBS": "ADV", "WRB": "ADV", "IN": "ADP", "TO": "PART", "POS": "PART",
    "RP": "ADP", "CC": "CCONJ", "MD": "AUX", "UH": "INTJ", "SYM": "SYM", "FW": "X", "LS": "X",
    "VB": "VERB", "VBD": "VERB", "VBG": "VERB", "VBN": "VERB", "VBP": "VERB", "VBZ": "VERB",
}

#: Person, number and gender of English personal pronouns (UD English FEATS), for CoNLL-2012 input.
PRONOUN_FEATURES: dict[str, dict[str, str]] = {}
for _forms, _feats in (
    ("i me my mine myself", {"Person": "1", "Number": "Sing"}),
    ("we us our ours ourselves", {"Person": "1", "Number": "Plur"}),
    ("you your yours yourself yourselves", {"Person": "2"}),
    ("he him his himself", {"Person": "3", "Number": "Sing", "Gender": "Masc"}),
    ("she her hers herself", {"Person": "3", "Number": "Sing", "Gender": "Fem"}),
    ("it its itself", {"Person": "3", "Number": "Sing", "Gender": "Neut"}),
    ("they them their theirs themselves", {"Person": "3", "Number": "Plur"}),
):
    for _form in _forms.split():
        PRONOUN_FEATURES[_form] = _feats

#: CoNLL-2012 escapes of brackets and sentence-final punctuation, undone so the tokenizer sees the text.
_PTB_FORMS = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}",
              "/.": ".", "/?": "?", "/-": "-"}


def ptb_features(word: str, tag: str) -> dict[str, str]:
    """UD-style Person/Number/Gender of a CoNLL-2012 word, from its tag and :data:`PRONOUN_FEATURES`.

    Parameters
    ----------
    word : str
        The word form (case does not matter).
    tag : str
        Its Penn Treebank tag.

    Returns
    -------
    dict of str to str
        UD FEATS of the word (a fresh dict; empty when nothing is known).
    """
    if tag in ("PRP", "PRP$"):
        return dict(PRONOUN_FEATURES.get(word.lower(), {}))
    if tag in ("NNS", "NNPS"):
        return {"Number": "Plur"}
    if tag in ("NN", "NNP"):
        return {"Number": "Sing"}
    return {}


# --------------------------------------------------------------------------------------------------------
# Bracket parsing shared by both formats


class _Brackets:
    """Open/close bookkeeping of one document's mentions; reports malformed spans to the manifest."""

    def __init__(self, path: str, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest
        self.open: dict[str, list[tuple[int, int, int]]] = {}  # key -> stack of (sentence, word, line)
        self.parts: dict[str, list[tuple[int, list[int], int]]] = {}  # discontinuous: entity -> parts
        self.done: list[tuple[str, int, list[int], int]] = []  # (entity, sentence, words, line)

    def bad(self, line: int, reason: str) -> None:
        self.manifest.skip(self.path, line, f"malformed coreference span: {reason}; mention skipped")
        self.manifest.count("coref_spans_malformed")

    def opening(self, key: str, sentence: int, word: int, line: int) -> None:
        self.open.setdefault(key, []).append((sentence, word, line))

    def closing(self, key: str, sentence: int, word: int, line: int) -> None:
        stack = self.open.get(key)
        if not stack:
            self.bad(line, f"closes entity {key!r}, which is not open")
            return
        s0, w0, line0 = stack.pop()
        if s0 != sentence:
            self.bad(line0, f"mention of entity {key!r} opened here crosses a sentence boundary "
                     f"(closed at line {line})")
            return
        entity, part = _split_part(key)
        words = list(range(w0, word + 1))
        if part is None:
            self.done.append((entity, sentence, words, line0))
            return
        index, total = part
        parts = self.parts.setdefault(entity, [])
        parts.append((sentence, words, line0))
        if index == total:  # the last part closes: join the parts into one mention
            del self.parts[entity]
            if len({s for s, _, _ in parts}) > 1:
                self.bad(parts[0][2], f"discontinuous mention of entity {entity!r} crosses a sentence boundary")
                return
            joined = sorted({w for _, ws, _ in parts for w in ws})
            self.done.append((entity, sentence, joined, parts[0][2]))

    def finish(self) -> None:
        """Report what is still open at the end of the document."""
        for key, stack in self.open.items():
            for _, _, line in stack:
                self.bad(line, f"mention of entity {key!r} opened here is never closed")
        for entity, parts in self.parts.items():
            self.bad(parts[0][2], f"discontinuous mention of entity {entity!r} misses its last part")
        self.open.clear()
        self.parts.clear()


_PART = re.compile(r"^(.*)\[(\d+)/(\d+)\]$")


def _split_part(key: str) -> tuple[str, tuple[int, int] | None]:
    m = _PART.match(key)
    return (key, None) if m is None else (m.group(1), (int(m.group(2)), int(m.group(3))))


#: How a reader finds the head word of a mention: (sentence, the mention's word indices) -> head index.
HeadFinder = Callable[[Sentence, list[int]], int]


def _attach_mentions(sentences: list[Sentence], brackets: _Brackets, head_of: HeadFinder) -> None:
    """Turn closed brackets into :class:`Mention` objects on each sentence's annotations."""
    per_sentence: list[list[Mention]] = [[] for _ in sentences]
    seen: set[tuple[str, int, tuple[int, ...]]] = set()
    for entity, s, words, line in brackets.done:
        key = (entity, s, tuple(words))
        if key in seen:  # the same entity marked twice on the same words adds nothing
            continue
        seen.add(key)
        per_sentence[s].append(Mention(entity, tuple(words), head_of(sentences[s], words), line))
    for sentence, mentions in zip(sentences, per_sentence, strict=True):
        mentions.sort(key=lambda m: (m.start, -m.end, m.entity))
        sentence.annotations["mentions"] = mentions


# --------------------------------------------------------------------------------------------------------
# CoNLL-U with Entity= (CorefUD, GUM)

_ENTITY_TOKEN = re.compile(r"\(([^()]+?)\)|\(([^()]+)|([^()]+)\)")


def _entity_id(field: str) -> str:
    """The entity key of a bracket's content: its first ``-``-separated field (with any ``[i/n]`` part)."""
    return field.split("-", 1)[0]


def _conllu_head(sentence: Sentence, words: list[int]) -> int:
    assert sentence.heads is not None  # read_conllu keeps only sentences with a valid tree
    return tree_head(sentence.heads, words)


def read_corefud(path: str | Path, manifest: Manifest) -> Iterator[Document]:
    """Documents of a CoNLL-U file with CorefUD/GUM ``Entity=`` brackets in MISC.

    A document starts at each ``# newdoc``; mentions come from the brackets and their head words from the
    dependency tree (:func:`tree_head`).

    Parameters
    ----------
    path : str or Path
        The file.
    manifest : Manifest
        Receives every skipped span or sentence with its file and line.

    Yields
    ------
    Document
        Each document, its sentences carrying ``annotations["mentions"]`` (sorted by start, longest first).
    """
    path = str(path)
    sentences: list[Sentence] = []
    brackets = _Brackets(path, manifest)

    def flush() -> Document | None:
        brackets.finish()
        if not sentences:
            return None
        _attach_mentions(sentences, brackets, _conllu_head)
        return Document(list(sentences), path, sentences[0].line, sentences[0].doc_id)

    for sentence in read_conllu(path, manifest):
        if sentences and sentence.doc_id != sentences[-1].doc_id:
            doc = flush()
            if doc is not None:
                yield doc
            sentences.clear()
            brackets = _Brackets(path, manifest)
        s = len(sentences)
        sentences.append(sentence)
        lines = sentence.annotations.get("word_lines") or [sentence.line] * len(sentence.words)
        for k, misc in enumerate(sentence.misc or []):
            value = misc.get("Entity")
            if not value or value == "_":
                continue
            pos = 0
            for m in _ENTITY_TOKEN.finditer(value):
                if m.start() != pos:
                    brackets.bad(lines[k], f"cannot read Entity={value!r} at character {pos}")
                    break
                pos = m.end()
                both, opening, closing = m.groups()
                if both is not None:
                    key = _entity_id(both)
                    brackets.opening(key, s, k, lines[k])
                    brackets.closing(key, s, k, lines[k])
                elif opening is not None:
                    brackets.opening(_entity_id(opening), s, k, lines[k])
                else:
                    brackets.closing(_entity_id(closing), s, k, lines[k])
            else:
                if pos != len(value):
                    brackets.bad(lines[k], f"cannot read Entity={value!r} at character {pos}")
    doc = flush()
    if doc is not None:
        yield doc


# --------------------------------------------------------------------------------------------------------
# CoNLL-2012 *_conll

_BEGIN = re.compile(r"^#begin document \((.*)\);?\s*(?:part\s+(\d+))?")
_COREF_PIECE = re.compile(r"^\((\w+)\)$|^\((\w+)$|^(\w+)\)$")


def _conll2012_head(sentence: Sentence, words: list[int]) -> int:
    return heuristic_head(sentence.annotations["xpos"], words)


def read_conll2012(path: str | Path, manifest: Manifest) -> Iterator[Document]:
    """Documents (one per ``#begin document ...; part N``) of a CoNLL-2012 ``*_conll`` file.

    A sentence with a line of fewer than 12 columns is skipped (file and line in the manifest); its
    brackets are not read, so mentions it opens or closes are reported as malformed too.

    Parameters
    ----------
    path : str or Path
        The file.
    manifest : Manifest
        Receives every skipped span or sentence with its file and line.

    Yields
    ------
    Document
        Each document, its sentences carrying ``annotations["mentions"]`` (sorted by start, longest first).
    """
    path = str(path)
    sentences: list[Sentence] = []
    brackets = _Brackets(path, manifest)
    doc_id: str | None = None
    rows: list[tuple[int, list[str]]] = []

    def end_sentence() -> None:
        if not rows:
            return
        manifest.count("sentences_read")
        bad = next(((n, cols) for n, cols in rows if len(cols) < 12), None)
        if bad is not None:
            manifest.skip(path, bad[0], f"CoNLL-2012 line has {len(bad[1])} columns, expected at least 12; "
                          "sentence skipped")
            rows.clear()
            return
        tags = [cols[4] for _, cols in rows]
        words = [_PTB_FORMS.get(cols[3], cols[3]) for _, cols in rows]
        sentence = Sentence(
            words=words, file=path, line=rows[0][0], doc_id=doc_id,
            upos=[PTB_TO_UPOS.get(t, "PUNCT" if not t[:1].isalpha() else "X") for t in tags],
            feats=[ptb_features(w, t) for w, t in zip(words, tags, strict=True)],
            annotations={"xpos": tags, "word_lines": [n for n, _ in rows]},
        )
        s = len(sentences)
        sentences.append(sentence)
        for k, (number, cols) in enumerate(rows):
            column = cols[-1]
            if column in ("-", "_"):
                continue
            for piece in column.split("|"):
                m = _COREF_PIECE.match(piece)
                if m is None:
                    brackets.bad(number, f"cannot read coreference {piece!r} in {column!r}")
                    continue
                both, opening, closing = m.groups()
                if both is not None:
                    brackets.opening(both, s, k, number)
                    brackets.closing(both, s, k, number)
                elif opening is not None:
                    brackets.opening(opening, s, k, number)
                else:
                    brackets.closing(closing, s, k, number)
        rows.clear()

    def end_document() -> Document | None:
        end_sentence()
        brackets.finish()
        if not sentences:
            return None
        _attach_mentions(sentences, brackets, _conll2012_head)
        return Document(list(sentences), path, sentences[0].line, doc_id)

    for number, line in read_lines(path, manifest):
        if line.startswith(("#begin document", "#end document")):
            doc = end_document()
            if doc is not None:
                yield doc
            sentences.clear()
            brackets = _Brackets(path, manifest)
            if line.startswith("#begin document"):
                m = _BEGIN.match(line)
                doc_id = f"{m.group(1)}:{m.group(2) or '0'}" if m else f"{Path(path).name}:{number}"
            continue
        if not line.strip():
            end_sentence()
            continue
        if line.startswith("#"):
            continue
        rows.append((number, line.split()))
    doc = end_document()
    if doc is not None:
        yield doc


def is_conll2012(path: str | Path) -> bool:
    """True for CoNLL-2012 files: named ``*_conll`` or starting with ``#begin document``.

    Parameters
    ----------
    path : str or Path
        The file; an unreadable file is not CoNLL-2012 (the CoNLL-U reader then reports it).

    Returns
    -------
    bool
    """
    p = Path(path)
    if p.name.endswith(("_conll", ".v4_gold_conll", ".v4_auto_conll")):
        return True
    try:
        with open(p, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.strip():
                    return line.startswith("#begin document")
    except OSError:
        return False
    return False


def read_coref(path: str | Path, manifest: Manifest) -> Iterator[Document]:
    """Documents of a coreference file in either format (see :func:`is_conll2012`).

    Parameters
    ----------
    path : str or Path
        A CoNLL-U file with ``Entity=`` annotations or a CoNLL-2012 file.
    manifest : Manifest
        Receives the skipped spans and sentences, ``coref_documents`` and ``coref_mentions``.

    Yields
    ------
    Document
        Each document, its sentences carrying ``annotations["mentions"]``.
    """
    reader = read_conll2012 if is_conll2012(path) else read_corefud
    for doc in reader(path, manifest):
        manifest.count("coref_documents")
        manifest.count("coref_mentions", sum(len(s.annotations["mentions"]) for s in doc.sentences))
        yield doc
