"""The units the readers produce: sentences (optionally with a dependency tree) and documents."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sentence:
    """One sentence as a list of words, with where it came from and any annotation the source has.

    Dependency fields follow CoNLL-U: ``heads[k]`` is the 1-based index of word ``k``'s head, 0 for the root.
    """

    words: list[str]
    """The word forms, in order (multiword tokens expanded to their syntactic words)."""
    file: str
    """The file the sentence was read from."""
    line: int
    """1-based line of the sentence's first line in ``file``."""
    doc_id: str | None = None
    """Document identifier, when the source has one."""
    sent_id: str | None = None
    """Sentence identifier (CoNLL-U ``# sent_id``), when the source has one."""
    heads: list[int] | None = None
    """Per word, the 1-based index of its head word, 0 for the root; None without a tree."""
    deprels: list[str] | None = None
    """Per word, the dependency relation to its head, subtypes kept (``obl:tmod``)."""
    upos: list[str] | None = None
    """Per word, the universal part of speech."""
    feats: list[dict[str, str]] | None = None
    """Per word, the morphological features."""
    misc: list[dict[str, str]] | None = None
    """Per word, the MISC column (coreference ``Entity=`` lives here in CorefUD files)."""
    silver: bool = False
    """True when the tree comes from an automatic parser (``--parse spacy``), not from gold annotation."""
    annotations: dict[str, Any] = field(default_factory=dict)
    """Analysis-specific data attached by a reader (for example coreference mentions)."""
    text: str | None = None
    """The sentence as it was written (a raw-text line; CoNLL-U ``# text`` or the forms rebuilt with
    ``SpaceAfter=No``; spaCy's input), None when the source has only words."""
    spans: list[tuple[int, int]] | None = None
    """Per word, its ``[start, end)`` character offsets in ``text``; the syntactic words of one multiword token
    share the token's span. None exactly when ``text`` is None."""

    @property
    def has_tree(self) -> bool:
        return self.heads is not None and self.deprels is not None

    def as_text(self, forms: bool = False) -> tuple[str, list[tuple[int, int]]]:
        """The string the model reads for this sentence and each word's span in it.

        Parameters
        ----------
        forms : bool
            Ignore ``text`` and join the words with single spaces (Clark et al.'s way of feeding a treebank).

        Returns
        -------
        text : str
        spans : list of (int, int)
            One ``[start, end)`` per word of ``words``.
        """
        if not forms and self.text is not None and self.spans is not None:
            return self.text, self.spans
        return join_words(self.words)


def join_words(words: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """``words`` joined by single spaces, and the span of each word in the result."""
    spans = []
    position = 0
    for w in words:
        spans.append((position, position + len(w)))
        position += len(w) + 1
    return " ".join(words), spans


@dataclass
class Document:
    """Consecutive sentences of one document (raw text: separated by a blank line)."""

    sentences: list[Sentence]
    file: str
    line: int
    doc_id: str | None = None
