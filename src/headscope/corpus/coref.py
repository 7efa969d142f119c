"""Coreference documents: readers, mention head words, and windows that keep mentions with antecedents.

Two input formats are read into :class:`~headscope.corpus.types.Document` objects whose sentences carry
their mentions in ``Sentence.annotations["mentions"]`` (a list of :class:`Mention`, sentence-local indices):

- CoNLL-U with CorefUD / GUM brackets in the MISC column, ``Entity=(3-person-...(7-place-...)`` to open and
  ``7)3)`` to close (the entity id is the first ``-``-separated field; a discontinuous part ``e5[1/2]`` is
  joined with its other parts into one mention). Read with :func:`headscope.corpus.conllu.read_conllu`, so
  mention head words come from the gold dependency tree.
- CoNLL-2012 ``*_conll`` (``#begin document (name); part 000`` ... ``#end document``; word in column 4,
  Penn Treebank tag in column 5, coreference brackets ``(12``, ``12)``, ``(12)``, ``(1|(2)`` in the last
  column). These files have no dependency tree: mention heads come from :func:`heuristic_head`, the parts
  of speech are mapped to UD (:data:`PTB_TO_UPOS`) and number/gender/person are derived from the tag and a
  pronoun table (:func:`ptb_features`).

A malformed span (a bracket never closed, closing an entity never opened, a mention crossing a sentence
boundary) is skipped with a message naming the file and line, counted as ``coref_spans_malformed``, and
reading goes on. The full choices are documented in ``docs/coref.md``.

Windows (:func:`plan_windows`): a document rarely fits in one model input. Each sentence is *scored* in
exactly one window; a window is a run of whole sentences ending at its last scored sentence, extended to the
left as far as ``max_length`` allows, and it scores as many consecutive sentences as it can while every
mention in them keeps its nearest antecedent inside the window. A mention is lost only when even a full
window cannot hold it together with its nearest antecedent (or its sentence alone is too long); the losses
are counted in the manifest (``coref_lost_*``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headscope.corpus.conllu import read_conllu
from headscope.corpus.text import read_lines
from headscope.corpus.types import Document, Sentence
from headscope.manifest import Manifest
from headscope.model.encode import Encoder, Example

#: Mention types, by the universal part of speech of the mention's head word (anything else is ``other``).
MENTION_TYPES = ("pronoun", "proper", "nominal", "other")
_TYPE_OF_UPOS = {"PRON": "pronoun", "PROPN": "proper", "NOUN": "nominal"}

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

#: Tags that end the pre-head part of a noun phrase in :func:`heuristic_head` (post-modifiers start there).
_POSTMODIFIER_TAGS = {"IN", "TO", "WDT", "WP", "WP$", "WRB", "CC", ",", ":", "-LRB-", "VB", "VBD", "VBG",
                      "VBN", "VBP", "VBZ", "MD"}


@dataclass(frozen=True)
class Mention:
    """One mention of an entity, inside one sentence."""

    entity: str
    """Entity (cluster) identifier, unique within its document."""
    words: tuple[int, ...]
    """0-based indices of the mention's words in its sentence, ascending (a contiguous span unless the
    source marked a discontinuous mention)."""
    head: int
    """0-based index in the sentence of the mention's head word."""
    line: int
    """1-based line of the word that opens the mention (for messages)."""

    @property
    def start(self) -> int:
        return self.words[0]

    @property
    def end(self) -> int:
        """Index of the last word (inclusive)."""
        return self.words[-1]


def mention_type(upos: str | None) -> str:
    """``pronoun`` (PRON), ``proper`` (PROPN), ``nominal`` (NOUN) or ``other``, from the head's UPOS."""
    return _TYPE_OF_UPOS.get(upos or "", "other")


def tree_head(heads: list[int], words: Iterable[int]) -> int:
    """The syntactic head of a set of words: the word whose head lies outside the set.

    Parameters
    ----------
    heads : list of int
        CoNLL-U heads of the sentence (1-based, 0 for the root).
    words : iterable of int
        0-based indices of the mention's words.

    Returns
    -------
    int
        The 0-based index of the head word. When several words have their head outside the set (the span
        is not one subtree), the one closest to the root wins, then the leftmost.
    """
    inside = set(words)

    def depth(k: int) -> int:
        d = 0
        while heads[k] != 0:
            k = heads[k] - 1
            d += 1
        return d

    exits = [k for k in sorted(inside) if heads[k] == 0 or heads[k] - 1 not in inside]
    return min(exits, key=lambda k: (depth(k), k))


def heuristic_head(tags: list[str], words: Iterable[int]) -> int:
    """Head word of a mention without a dependency tree, from Penn Treebank tags.

    The pre-head part of the noun phrase ends at the first post-modifier (a preposition, ``to``, a
    wh-word, a conjunction, a comma/colon/bracket or a verb, after the first word); its head is the last
    noun, pronoun or number in that part (``the king 's daughter`` -> daughter, ``the city of Paris`` ->
    city, ``John and Mary`` -> John), else its last word.

    Parameters
    ----------
    tags : list of str
        Penn Treebank tag of every word of the sentence.
    words : iterable of int
        0-based indices of the mention's words.
    """
    span = sorted(words)
    prefix = [span[0]]
    for k in span[1:]:
        if tags[k] in _POSTMODIFIER_TAGS:
            break
        prefix.append(k)
    nominal = [k for k in prefix if tags[k].startswith(("NN", "PRP", "WP", "CD"))]
    return nominal[-1] if nominal else prefix[-1]


def ptb_features(word: str, tag: str) -> dict[str, str]:
    """UD-style Person/Number/Gender of a CoNLL-2012 word, from its tag and :data:`PRONOUN_FEATURES`."""
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


def _attach_mentions(sentences: list[Sentence], brackets: _Brackets, head_of: Any) -> None:
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
    """True for CoNLL-2012 files: named ``*_conll`` or starting with ``#begin document``."""
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
    """Documents of a coreference file in either format (see :func:`is_conll2012`)."""
    reader = read_conll2012 if is_conll2012(path) else read_corefud
    for doc in reader(path, manifest):
        manifest.count("coref_documents")
        manifest.count("coref_mentions", sum(len(s.annotations["mentions"]) for s in doc.sentences))
        yield doc


# --------------------------------------------------------------------------------------------------------
# Windows


@dataclass(frozen=True)
class Window:
    """Sentences ``first..last`` (inclusive) of a document as one model input."""

    first: int
    """First sentence of the window (left context starts here)."""
    scored_from: int
    """First sentence whose mentions this window scores; ``scored_from..last`` are scored."""
    last: int
    """Last sentence of the window, also its last scored sentence."""


@dataclass
class WindowPlan:
    """The windows of one document and what they cannot score."""

    windows: list[Window]
    skipped_sentences: list[int]
    """Sentences longer than a window by themselves: in no window."""
    lost_long_sentence: int
    """Anaphoric mentions lost because they, or all their antecedents, sit in a skipped sentence (or the
    skipped sentence lies between them)."""
    lost_window: int
    """Anaphoric mentions whose nearest antecedent is further back than one window can reach."""


def nearest_antecedents(sentences: list[Sentence]) -> list[list[tuple[Mention, tuple[int, int] | None]]]:
    """Per sentence, each mention with the (sentence, head word) of its nearest antecedent, or None.

    An antecedent is an earlier mention of the same entity; "earlier" compares head-word positions.
    """
    last_seen: dict[str, tuple[int, int]] = {}
    out: list[list[tuple[Mention, tuple[int, int] | None]]] = []
    for s, sentence in enumerate(sentences):
        mentions = sentence.annotations.get("mentions", [])
        here: list[tuple[Mention, tuple[int, int] | None]] = []
        by_head = sorted(mentions, key=lambda m: m.head)
        # Mentions of this sentence whose heads come earlier count too: update in head order.
        pending: dict[str, list[tuple[int, int]]] = {}
        for m in by_head:
            earlier = [p for p in pending.get(m.entity, []) if p[1] < m.head]
            candidates = earlier + ([last_seen[m.entity]] if m.entity in last_seen else [])
            nearest = max(candidates) if candidates else None
            here.append((m, nearest))
            pending.setdefault(m.entity, []).append((s, m.head))
        for entity, positions in pending.items():
            last_seen[entity] = max(positions)
        out.append(here)
    return out


def plan_windows(sentences: list[Sentence], pieces: list[int], budget: int) -> WindowPlan:
    """Cut one document into windows of at most ``budget`` pieces (special tokens not included).

    Parameters
    ----------
    sentences : list of Sentence
        The document, with ``annotations["mentions"]``.
    pieces : list of int
        Model pieces of each sentence.
    budget : int
        Pieces a window may hold (``max_length`` minus the special tokens).

    Returns
    -------
    WindowPlan
        Every kept sentence is scored in exactly one window. Windows end at their last scored sentence and
        reach left as far as the budget allows; a window scores consecutive sentences while the left edge
        of the full window ending at the last of them still holds the nearest antecedent of every mention
        in them.
    """
    n = len(sentences)
    skipped = [s for s in range(n) if pieces[s] > budget]
    skipped_set = set(skipped)
    cum = np.concatenate([[0], np.cumsum(pieces)])
    # Runs of consecutive sentences that fit: a too-long sentence breaks the text (its words are unseen).
    run_of = np.full(n, -1)
    run = -1
    for s in range(n):
        if s in skipped_set:
            continue
        if s == 0 or (s - 1) in skipped_set:
            run += 1
        run_of[s] = run
    # start[j]: leftmost sentence of the fullest window ending at j.
    start = list(range(n))
    for j in range(n):
        a = j
        while a > 0 and run_of[a - 1] == run_of[j] and cum[j + 1] - cum[a - 1] <= budget:
            a -= 1
        start[j] = a
    need = list(range(n))  # need[j]: the window scoring sentence j must start at or before this sentence
    lost_long = lost_window = 0
    for s, items in enumerate(nearest_antecedents(sentences)):
        for _, nearest in items:
            if nearest is None:
                continue
            if s in skipped_set or run_of[nearest[0]] != run_of[s]:
                lost_long += 1
            elif nearest[0] < start[s]:
                lost_window += 1
            else:
                need[s] = min(need[s], nearest[0])
    windows: list[Window] = []
    j0 = 0
    while j0 < n:
        if j0 in skipped_set:
            j0 += 1
            continue
        j1 = j0
        low = need[j0]
        while (j1 + 1 < n and run_of[j1 + 1] == run_of[j0] and start[j1 + 1] <= min(low, need[j1 + 1])):
            j1 += 1
            low = min(low, need[j1])
        windows.append(Window(first=start[j1], scored_from=j0, last=j1))
        j0 = j1 + 1
    return WindowPlan(windows, skipped, lost_long, lost_window)


# --------------------------------------------------------------------------------------------------------
# Mentions of an encoded window


@dataclass(frozen=True)
class WindowMention:
    """A mention as seen inside one encoded window (positions are the window's)."""

    entity: str
    """Entity identifier (document-level)."""
    sentence: int
    """Index of the mention's sentence in ``Example.sentences``."""
    word: int
    """Index of the head word in the window's concatenated words."""
    unit: int
    """Unit of the head word in the example (-1 when the tokenizer gave it no piece)."""
    mention_type: str
    """One of :data:`MENTION_TYPES`."""
    text: str
    """The mention's words, lowercased and space-joined (string-match sieve)."""
    head_text: str
    """The head word, lowercased (head-match baseline and sieve)."""
    number: str | None
    """``Sing``/``Plur`` from the head word's features, None when unknown."""
    gender: str | None
    """``Masc``/``Fem``/``Neut``, None when unknown."""
    person: str | None
    """``1``/``2``/``3``; nouns and proper nouns without the feature are ``3``."""
    scored: bool
    """True when the window scores this mention's sentence."""
    antecedents: tuple[int, ...]
    """Indices (in the window's mention list) of earlier mentions of the same entity whose head word has a
    unit; empty for first mentions."""

    @property
    def evaluated(self) -> bool:
        """Scored here, with a head word the model sees and at least one antecedent in the window."""
        return self.scored and self.unit >= 0 and bool(self.antecedents)


def window_mentions(example: Example) -> list[WindowMention]:
    """The mentions of a window example, ordered by head word, with their antecedents in the window."""
    raw: list[tuple[int, int, Sentence, Mention, bool]] = []
    for k, sentence in enumerate(example.sentences):
        scored = bool(sentence.annotations.get("coref_scored", True))
        for m in sentence.annotations.get("mentions", []):
            raw.append((example.word_offsets[k] + m.head, m.start, k, m, scored))
    raw.sort(key=lambda r: (r[0], r[1], r[3].entity))
    out: list[WindowMention] = []
    seen: dict[str, list[int]] = {}
    for word, _, k, m, scored in raw:
        sentence = example.sentences[k]
        unit = int(example.word_units[word])
        feats = (sentence.feats or [{}] * len(sentence.words))[m.head]
        upos = sentence.upos[m.head] if sentence.upos is not None else None
        person = feats.get("Person") or ("3" if upos in ("NOUN", "PROPN") else None)
        antecedents = tuple(i for i in seen.get(m.entity, []) if out[i].word < word and out[i].unit >= 0)
        out.append(WindowMention(
            entity=m.entity, sentence=k, word=word, unit=unit, mention_type=mention_type(upos),
            text=" ".join(sentence.words[w] for w in m.words).lower(), head_text=sentence.words[m.head].lower(),
            number=feats.get("Number"), gender=feats.get("Gender"), person=person, scored=scored,
            antecedents=antecedents))
        seen.setdefault(m.entity, []).append(len(out) - 1)
    return out


WINDOW_NOTE = ("coreference documents are cut into windows of whole sentences of at most --max-length "
               "tokens; each sentence is scored in one window, which reaches back as far as the length allows "
               "and always holds the nearest antecedent of the mentions it scores when any window can. "
               "coref_lost_window counts anaphoric mentions whose nearest antecedent is further back than "
               "one window; coref_lost_long_sentence those cut off by a sentence longer than a window; "
               "coref_lost_no_pieces those whose head word (or every antecedent head) got no model piece.")


def iter_coref_examples(paths: list[str], encoder: Encoder, manifest: Manifest,
                        start_index: int) -> Iterator[Example]:
    """Encode every window of every coreference document as an :class:`Example` of kind ``window``.

    The window's sentences are shallow copies of the document's with ``annotations["coref_scored"]``
    telling whether this window scores them; :func:`window_mentions` turns an example into its mentions.
    Counts go to ``manifest``: ``coref_windows``, ``coref_mentions_anaphoric`` (mentions with an earlier
    mention of the same entity in the document), ``coref_mentions_evaluated``, the ``coref_lost_*``
    counts, and ``coref_antecedents`` / ``coref_antecedents_in_window`` (earlier same-entity mentions of
    the evaluated mentions, in the document and inside the window).
    """
    manifest.notes["coref_windows"] = WINDOW_NOTE
    special = encoder.n_special(pair=False)
    budget = encoder.max_length - special
    index = start_index
    for path in paths:
        for doc in read_coref(path, manifest):
            sentences = doc.sentences
            pieces = [encoder.count_pieces(s.words) for s in sentences]
            plan = plan_windows(sentences, pieces, budget)
            for s in plan.skipped_sentences:
                manifest.skip(sentences[s].file, sentences[s].line,
                              f"sentence of {pieces[s]} pieces does not fit in a window of {encoder.max_length} "
                              "tokens; its mentions and the links through it are lost")
            items = nearest_antecedents(sentences)
            anaphoric = sum(1 for per in items for _, near in per if near is not None)
            earlier = _earlier_positions(sentences)
            manifest.count("coref_mentions_anaphoric", anaphoric)
            manifest.count("coref_lost_window", plan.lost_window)
            manifest.count("coref_lost_long_sentence", plan.lost_long_sentence)
            evaluated_in_doc = 0
            for window in plan.windows:
                part = [dataclasses.replace(sentences[s], annotations={
                    **sentences[s].annotations, "coref_scored": s >= window.scored_from})
                    for s in range(window.first, window.last + 1)]
                ex = encoder.encode(index, "window", part, None, manifest, truncate=False)
                if ex is None:
                    continue
                index += 1
                manifest.count("coref_windows")
                for wm in window_mentions(ex):
                    if wm.evaluated:
                        evaluated_in_doc += 1
                        position = (window.first + wm.sentence, wm.word - ex.word_offsets[wm.sentence])
                        manifest.count("coref_antecedents", earlier[wm.entity, position])
                        manifest.count("coref_antecedents_in_window", len(wm.antecedents))
                yield ex
            manifest.count("coref_mentions_evaluated", evaluated_in_doc)
            manifest.count("coref_lost_no_pieces",
                           anaphoric - plan.lost_window - plan.lost_long_sentence - evaluated_in_doc)


def _earlier_positions(sentences: list[Sentence]) -> dict[tuple[str, tuple[int, int]], int]:
    """For each (entity, (sentence, head word)) of a document, how many mentions of the entity come earlier."""
    positions: dict[str, list[tuple[int, int]]] = {}
    for s, sentence in enumerate(sentences):
        for m in sentence.annotations["mentions"]:
            positions.setdefault(m.entity, []).append((s, m.head))
    return {(entity, p): sum(1 for q in ps if q < p) for entity, ps in positions.items() for p in ps}
