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

    @property
    def has_tree(self) -> bool:
        return self.heads is not None and self.deprels is not None


@dataclass
class Document:
    """Consecutive sentences of one document (raw text: separated by a blank line)."""

    sentences: list[Sentence]
    file: str
    line: int
    doc_id: str | None = None
