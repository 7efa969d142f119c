"""Encoded coreference windows and the mentions the ``coref`` analysis reads from them.

:func:`iter_coref_examples` reads the coreference files (:mod:`headscope.corpus.coref_readers`), cuts each
document into windows (:mod:`headscope.corpus.coref_windows`) and encodes every window as a
:class:`WindowExample`: an :class:`~headscope.model.encode.Example` of kind ``window`` that carries its
:class:`WindowMention` list. The list is computed once, when the example is built (the manifest counts
need it there), and the analysis (:mod:`headscope.analyses.coref`) reads ``WindowExample.mentions`` as it is:
it imports nothing from this layer at run time, so a window it is given must be a :class:`WindowExample`
(:func:`window_mentions` also computes the list of a plain encoded window, for tests and tools).

This lives in the model layer, beside the encoder, because a window mention is a position in an encoded
example (its head word's unit): the corpus layer knows sentences and words only, and the engine reads the
windows from here without importing an analysis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

from headscope.corpus.coref_readers import read_coref
from headscope.corpus.coref_windows import WINDOW_NOTE, earlier_mentions, plan_windows, window_sentences
from headscope.corpus.mentions import Mention, mention_type
from headscope.manifest import Manifest
from headscope.model.encode import Encoder, Example


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
    """One of :data:`~headscope.corpus.mentions.MENTION_TYPES`."""
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


@dataclass
class WindowExample(Example):
    """An encoded coreference window that carries its mentions.

    A subclass rather than a field of :class:`~headscope.model.encode.Example` so that the model layer
    knows nothing of coreference. Built by :meth:`from_example`; the mentions travel with the example
    (through batching and to Ray workers) so that they are computed once.
    """

    mentions: list[WindowMention] | None = None
    """The window's mentions as :func:`compute_window_mentions` gives them; read, never modify."""

    @classmethod
    def from_example(cls, example: Example) -> WindowExample:
        """The window example of an encoded window, with its mentions computed.

        Parameters
        ----------
        example : Example
            A freshly encoded window (its arrays and sentences are shared, not copied).

        Returns
        -------
        WindowExample
        """
        fields = {f.name: getattr(example, f.name) for f in dataclasses.fields(Example)}
        return cls(**fields, mentions=compute_window_mentions(example))


def window_mentions(example: Example) -> list[WindowMention]:
    """The mentions of a window example, ordered by head word, with their antecedents in the window.

    Parameters
    ----------
    example : Example
        A window; a :class:`WindowExample` returns the list it carries, any other example (one encoded by
        hand, say) has its mentions computed from its sentences' ``annotations["mentions"]``.

    Returns
    -------
    list of WindowMention
        Shared with the example when it carries them: do not modify.
    """
    if isinstance(example, WindowExample) and example.mentions is not None:
        return example.mentions
    return compute_window_mentions(example)


def compute_window_mentions(example: Example) -> list[WindowMention]:
    """Compute the mentions of a window from its sentences (prefer :func:`window_mentions`).

    Parameters
    ----------
    example : Example
        An encoded window whose sentences carry ``annotations["mentions"]`` and, optionally,
        ``annotations["coref_scored"]`` (missing means scored).

    Returns
    -------
    list of WindowMention
        Ordered by head word, then start word, then entity; antecedents point into this list.
    """
    raw: list[tuple[int, int, int, Mention, bool]] = []
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


def iter_coref_examples(paths: list[str], encoder: Encoder, manifest: Manifest,
                        start_index: int, forms: bool = False) -> Iterator[WindowExample]:
    """Encode every window of every coreference document as a :class:`WindowExample` of kind ``window``.

    Parameters
    ----------
    paths : list of str
        Coreference files, in either format (:func:`~headscope.corpus.coref_readers.read_coref`).
    encoder : Encoder
        Counts the pieces of each sentence (for the window plan) and encodes the windows.
    manifest : Manifest
        Receives the counts below, the skipped sentences and ``notes["coref_windows"]``.
    start_index : int
        ``Example.index`` of the first window; the rest follow in order.
    forms : bool
        Read the words joined by single spaces instead of each sentence's text (``--treebank-input forms``).

    Yields
    ------
    WindowExample
        Each window; its sentences are shallow copies of the document's with ``annotations["coref_scored"]``
        telling whether this window scores them, and it carries its mentions (:func:`window_mentions`).

    Notes
    -----
    Counts: ``coref_windows``, ``coref_mentions_anaphoric`` (mentions with an earlier mention of the same
    entity in the document), ``coref_mentions_evaluated``, the ``coref_lost_*`` counts, and
    ``coref_antecedents`` / ``coref_antecedents_in_window`` (earlier same-entity mentions of the evaluated
    mentions, in the document and inside the window).
    """
    manifest.notes["coref_windows"] = WINDOW_NOTE
    special = encoder.n_special(pair=False)
    budget = encoder.max_length - special
    index = start_index
    for path in paths:
        for doc in read_coref(path, manifest):
            sentences = doc.sentences
            pieces = encoder.count_pieces(sentences, forms)
            plan = plan_windows(sentences, pieces, budget)
            for s in plan.skipped_sentences:
                manifest.skip(sentences[s].file, sentences[s].line,
                              f"sentence of {pieces[s]} pieces does not fit in a window of {encoder.max_length} "
                              "tokens; its mentions and the links through it are lost")
            earlier = earlier_mentions(sentences)
            manifest.count("coref_mentions_anaphoric", plan.anaphoric)
            manifest.count("coref_lost_window", plan.lost_window)
            manifest.count("coref_lost_long_sentence", plan.lost_long_sentence)
            evaluated_in_doc = 0
            for window in plan.windows:
                encoded = encoder.encode(index, "window", window_sentences(sentences, window), None, manifest,
                                         truncate=False, forms=forms)
                if encoded is None:
                    continue
                index += 1
                manifest.count("coref_windows")
                ex = WindowExample.from_example(encoded)
                assert ex.mentions is not None  # from_example always computes them
                for wm in ex.mentions:
                    if wm.evaluated:
                        evaluated_in_doc += 1
                        position = (window.first + wm.sentence, wm.word - ex.word_offsets[wm.sentence])
                        manifest.count("coref_antecedents", earlier[wm.entity, position])
                        manifest.count("coref_antecedents_in_window", len(wm.antecedents))
                yield ex
            manifest.count("coref_mentions_evaluated", evaluated_in_doc)
            manifest.count("coref_lost_no_pieces",
                           plan.anaphoric - plan.lost_window - plan.lost_long_sentence - evaluated_in_doc)
