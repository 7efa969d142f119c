"""Tokenisation and piece-to-word alignment.

Every input becomes an :class:`Example`: model token ids plus the map from each position to a *unit*.
Units are the words of the input plus each special token as its own unit ("special tokens stay in as their
own words", Clark et al.). Word-level attention (:mod:`headscope.engine.wordlevel`) sums and averages over
the pieces of a unit, so every linguistic analysis works in units and never looks words up by string.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from headscope.corpus.types import Sentence
from headscope.manifest import Manifest

if TYPE_CHECKING:
    from headscope.config import Punctuation
    from headscope.model.load import LoadedModel


@dataclass
class Example:
    """One model input: ids, role masks, and the piece-to-unit alignment. All arrays have shape (seq,)."""

    index: int
    """Position in corpus order (stable across batch sizes and runs)."""
    kind: str
    """``segment`` (raw text, possibly an A/B pair), ``sentence`` (treebank) or ``window`` (coreference)."""
    input_ids: np.ndarray
    """int64 token ids, special tokens included."""
    token_type_ids: np.ndarray | None
    """int64 token types (1 for segment B) when the model uses them, else None."""
    segment: np.ndarray
    """int8, 0 for [CLS], A and its [SEP]; 1 for B and the final [SEP]."""
    is_cls: np.ndarray
    """bool, the classification/beginning token (``cls_token``, else ``bos_token``) added by the tokenizer."""
    is_sep: np.ndarray
    """bool, separator/end tokens (``sep_token``, else ``eos_token``) added by the tokenizer."""
    is_punct: np.ndarray
    """bool, punctuation pieces by the run's punctuation class."""
    unit_of_piece: np.ndarray
    """int64, the unit each position belongs to; units are numbered in order of position."""
    units: list[str]
    """Label of each unit: the special token's string or the word."""
    word_units: np.ndarray
    """int64 of shape (n_words,): the unit of each input word, -1 when the word got no piece."""
    sentences: list[Sentence]
    """The source sentences, in order; their words concatenated are the example's words."""
    word_offsets: list[int]
    """Index of each sentence's first word in the concatenated word list."""
    pieces: list[str] = field(default_factory=list)
    """Token strings, for display."""

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def has_tree(self) -> bool:
        """True when any of the example's sentences has a dependency tree (gold or silver)."""
        return any(s.has_tree for s in self.sentences)

    @property
    def n_units(self) -> int:
        return len(self.units)

    @property
    def file(self) -> str:
        return self.sentences[0].file

    @property
    def line(self) -> int:
        return self.sentences[0].line

    def sentence_units(self, k: int) -> np.ndarray:
        """Unit index of each word of sentence ``k`` (-1 where the word got no piece)."""
        start = self.word_offsets[k]
        return self.word_units[start:start + len(self.sentences[k].words)]


class Encoder:
    """Turns sentences into :class:`Example` objects for one tokenizer.

    Parameters
    ----------
    tokenizer : transformers fast tokenizer
    max_length : int
        Longest sequence allowed, special tokens included.
    punctuation : {"clark", "all"}
        ``clark``: pieces that are exactly "." or ","; ``all``: pieces made only of punctuation.
    use_token_types : bool
        Pass ``token_type_ids`` to the model (BERT-style models with two token types).
    """

    def __init__(self, tokenizer: Any, max_length: int, punctuation: Punctuation = "clark",
                 use_token_types: bool = True) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.punctuation = punctuation
        self.use_token_types = use_token_types
        self._punct_cache: dict[int, bool] = {}
        t = tokenizer
        self.cls_id = t.cls_token_id if t.cls_token_id is not None else t.bos_token_id
        self.sep_id = t.sep_token_id if t.sep_token_id is not None else t.eos_token_id
        # Decoder-LM tokenizers have no separator to build "A [SEP] B [SEP]" with: pairs become one sequence.
        self.supports_pairs = t.sep_token_id is not None

    @classmethod
    def for_model(cls, loaded: LoadedModel, max_length: int, punctuation: Punctuation = "clark") -> Encoder:
        """The encoder of a loaded model (:class:`headscope.model.load.LoadedModel`).

        Token types are passed only to models that learned more than one (BERT): RoBERTa-style models have a
        single type, and passing segment B's type 1 would index past their embedding table.
        """
        type_vocab = getattr(loaded.model.config, "type_vocab_size", 0) or 0
        return cls(loaded.tokenizer, max_length, punctuation, use_token_types=type_vocab > 1)

    def n_special(self, pair: bool) -> int:
        return int(self.tokenizer.num_special_tokens_to_add(pair=pair and self.supports_pairs))

    def count_pieces(self, words: list[str]) -> int:
        if not words:
            return 0
        enc = self.tokenizer(words, is_split_into_words=True, add_special_tokens=False)
        return len(enc["input_ids"])

    def _is_punct(self, token_id: int) -> bool:
        cached = self._punct_cache.get(token_id)
        if cached is None:
            text = self.tokenizer.convert_tokens_to_string(
                [self.tokenizer.convert_ids_to_tokens(token_id)]).strip().removeprefix("##")
            if self.punctuation == "clark":
                cached = text in (".", ",")
            else:
                cached = bool(text) and all(unicodedata.category(c).startswith("P") for c in text)
            self._punct_cache[token_id] = cached
        return cached

    def encode(self, index: int, kind: str, part_a: list[Sentence], part_b: list[Sentence] | None,
               manifest: Manifest, truncate: bool) -> Example | None:
        """Encode one input: sentences of segment A and (optionally) of segment B.

        Parameters
        ----------
        truncate : bool
            When the input is longer than ``max_length``: cut it (raw text) or skip it (treebanks, whose
            trees a cut would break). Either way the manifest counts it with file and line.

        Returns
        -------
        Example or None
            None when the input was skipped (and recorded in ``manifest``).
        """
        sentences = list(part_a) + list(part_b or [])
        words_a = [w for s in part_a for w in s.words]
        words_b = [w for s in (part_b or []) for w in s.words]
        first = sentences[0]
        if not words_a and not words_b:
            manifest.skip(first.file, first.line, "no words")
            return None
        all_words = words_a + words_b
        boundary = len(words_a)  # first word of segment B
        pair = bool(words_b) and self.supports_pairs
        if words_b and not pair:
            words_a, words_b = all_words, []
        tok = self.tokenizer
        args: tuple[Any, ...] = (words_a, words_b) if pair else (words_a,)
        enc = tok(*args, is_split_into_words=True, truncation=False)
        n_tokens = len(enc["input_ids"])
        if n_tokens > self.max_length:
            if not truncate:
                manifest.skip(first.file, first.line,
                              f"{n_tokens} tokens, longer than the model allows here ({self.max_length})")
                return None
            enc = tok(*args, is_split_into_words=True, truncation="longest_first",
                      max_length=self.max_length)
            manifest.truncate(first.file, first.line,
                              f"{n_tokens} tokens cut to {self.max_length} (--max-length / model limit)")
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        word_ids = enc.word_ids()
        seq_ids = enc.sequence_ids() if pair else [None if w is None else 0 for w in word_ids]
        n_words_a = len(words_a)  # words of the first tokenizer input (all words for decoder LMs)
        n = len(ids)
        unit_of_piece = np.empty(n, dtype=np.int64)
        is_cls = np.zeros(n, dtype=bool)
        is_sep = np.zeros(n, dtype=bool)
        is_punct = np.zeros(n, dtype=bool)
        segment = np.zeros(n, dtype=np.int8)
        word_units = np.full(len(all_words), -1, dtype=np.int64)
        units: list[str] = []
        current_seg = 0
        last_word: int | None = None
        for p, (w, s) in enumerate(zip(word_ids, seq_ids, strict=True)):
            token_id = int(ids[p])
            if w is None:  # a special token the tokenizer added: its own unit
                units.append(tok.convert_ids_to_tokens(token_id))
                unit_of_piece[p] = len(units) - 1
                # A bos token stands in for [CLS] only at the start of a decoder LM's sequence.
                is_cls[p] = token_id == self.cls_id and (tok.cls_token_id is not None or p == 0)
                is_sep[p] = token_id == self.sep_id and not is_cls[p]
                segment[p] = current_seg
                last_word = None
                continue
            flat = w + (n_words_a if s == 1 else 0)
            if flat >= boundary:
                current_seg = 1
            segment[p] = current_seg
            if flat != last_word:
                units.append(all_words[flat])
                word_units[flat] = len(units) - 1
                last_word = flat
            unit_of_piece[p] = word_units[flat]
            is_punct[p] = self._is_punct(token_id)
        if boundary < len(all_words):
            # The final separator belongs to segment B, as BERT's token types say.
            last_sep = np.flatnonzero(is_sep)
            if len(last_sep):
                segment[last_sep[-1]] = segment[last_sep[-1] - 1] if last_sep[-1] > 0 else 0
        self._report_dropped(word_units, sentences, manifest, truncated=n_tokens > self.max_length)
        offsets = list(np.cumsum([0] + [len(s.words) for s in sentences[:-1]]).astype(int))
        token_types = None
        if self.use_token_types and "token_type_ids" in enc:
            token_types = np.asarray(enc["token_type_ids"], dtype=np.int64)
        return Example(
            index=index, kind=kind, input_ids=ids, token_type_ids=token_types, segment=segment,
            is_cls=is_cls, is_sep=is_sep, is_punct=is_punct, unit_of_piece=unit_of_piece, units=units,
            word_units=word_units, sentences=sentences, word_offsets=[int(o) for o in offsets],
            pieces=tok.convert_ids_to_tokens(ids.tolist()),
        )

    @staticmethod
    def _report_dropped(word_units: np.ndarray, sentences: list[Sentence], manifest: Manifest,
                        truncated: bool) -> None:
        missing = np.flatnonzero(word_units < 0)
        if not len(missing):
            return
        last_kept = np.flatnonzero(word_units >= 0)
        cut_from = (last_kept[-1] + 1) if (truncated and len(last_kept)) else len(word_units)
        start = 0
        for s in sentences:
            stop = start + len(s.words)
            for k in missing[(missing >= start) & (missing < min(stop, cut_from))]:
                manifest.warn(s.file, s.line, f"word {k - start + 1} {s.words[k - start]!r} got no "
                              "pieces from the tokenizer; it is left out of word-level analyses")
            start = stop
