"""Tokenisation and piece-to-word alignment.

Every input becomes an :class:`Example`: model token ids plus the map from each position to a *unit*.
Units are the words of the input plus each special token as its own unit ("special tokens stay in as their
own words", Clark et al.). Word-level attention (:mod:`headscope.engine.wordlevel`) sums and averages over
the pieces of a unit, so every linguistic analysis works in units and never looks words up by string.

The model reads strings, as it does in use: the sentences of an input are joined into one string (one space
between sentences), tokenized with the tokenizer's own special tokens (``tokenizer(text_a, text_b)`` for an
encoder's segment pair), and each token is assigned to words by its character offsets
(``return_offsets_mapping``). The rules (``docs/inputs.md``):

- a token belongs to every word it overlaps, counting only its characters that are not white space; words
  that share a token become one unit (a byte-level piece such as ``".,"`` spanning two words, or the
  syntactic words of a CoNLL-U multiword token, which share the token's span);
- a token that overlaps no word (white space only, or an empty offset) joins the unit of the next token of
  its sequence that has one, else of the previous one;
- a word no token overlaps gets no unit (-1), reported with file and line.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from headscope.corpus.types import Sentence
from headscope.manifest import Manifest
from headscope.model.align import align_pieces, join_sentences, unit_label

if TYPE_CHECKING:
    from headscope.config import Bos, Punctuation
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


def adds_bos(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` puts its BOS token first in an encoded string."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("probe")["input_ids"]
    return len(ids) > 0 and int(ids[0]) == int(bos)


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
    bos : {"auto", "yes", "no"}
        BOS first in every input of a decoder LM: as the tokenizer does (``auto``), always, or never.
    """

    def __init__(self, tokenizer: Any, max_length: int, punctuation: Punctuation = "clark",
                 use_token_types: bool = True, bos: Bos = "auto") -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.punctuation = punctuation
        self.use_token_types = use_token_types
        self.bos = bos
        self._punct_cache: dict[int, bool] = {}
        t = tokenizer
        self.cls_id = t.cls_token_id if t.cls_token_id is not None else t.bos_token_id
        self.sep_id = t.sep_token_id if t.sep_token_id is not None else t.eos_token_id
        # Decoder-LM tokenizers have no separator to build "A [SEP] B [SEP]" with: pairs become one sequence.
        self.supports_pairs = t.sep_token_id is not None
        self.tokenizer_adds_bos = not self.supports_pairs and adds_bos(t)
        if bos != "auto" and self.supports_pairs:
            raise ValueError("--bos applies to decoder LMs (tokenizers without a separator token); this "
                             "tokenizer builds [CLS]/[SEP] inputs, leave --bos auto")
        if bos == "yes" and t.bos_token_id is None:
            raise ValueError("--bos yes: the tokenizer has no BOS token")
        #: Where the first token of a decoder LM's input comes from: ``tokenizer``, ``added`` or ``none``.
        self.bos_source = ("none" if bos == "no" or (bos == "auto" and not self.tokenizer_adds_bos)
                           else "tokenizer" if self.tokenizer_adds_bos else "added")

    @classmethod
    def for_model(cls, loaded: LoadedModel, max_length: int, punctuation: Punctuation = "clark",
                  bos: Bos = "auto") -> Encoder:
        """The encoder of a loaded model (:class:`headscope.model.load.LoadedModel`).

        Token types are passed only to models that learned more than one (BERT): RoBERTa-style models have a
        single type, and passing segment B's type 1 would index past their embedding table.
        """
        type_vocab = getattr(loaded.model.config, "type_vocab_size", 0) or 0
        return cls(loaded.tokenizer, max_length, punctuation, use_token_types=type_vocab > 1, bos=bos)

    @property
    def adds_bos(self) -> bool:
        """True when every input of a decoder LM starts with BOS (the tokenizer's or one added by ``--bos``)."""
        return self.bos_source != "none"

    def describe(self) -> dict[str, Any]:
        """How inputs are built, for ``run.json``."""
        t = self.tokenizer
        return {
            "tokenization": "strings, with the tokenizer's own special tokens; tokens assigned to words by "
                            "character offsets",
            "sentence_join": "one space",
            "pairs": "tokenizer(text_a, text_b)" if self.supports_pairs else "one sequence per window",
            "bos": {"tokenizer": f"{t.bos_token} first, added by the tokenizer",
                    "added": f"{t.bos_token} first, added by headscope (--bos yes)",
                    "none": "no BOS" + (" (--bos no)" if self.bos == "no" else " (the tokenizer adds none)")
                    }[self.bos_source] if not self.supports_pairs else None,
            "special_tokens": [tok for tok in (t.cls_token, t.sep_token) if tok] if self.supports_pairs else None,
        }

    def n_special(self, pair: bool) -> int:
        n = int(self.tokenizer.num_special_tokens_to_add(pair=pair and self.supports_pairs))
        if not self.supports_pairs:
            n += int(self.bos_source == "added") - int(self.tokenizer_adds_bos and self.bos_source == "none")
        return n

    def count_pieces(self, sentences: list[Sentence], forms: bool = False) -> list[int]:
        """Tokens each sentence takes inside a window, special tokens excluded (an upper bound: the larger of
        the sentence alone and after the joining space, which is exact where tokens never cross a space)."""
        texts = [s.as_text(forms)[0] for s in sentences]
        if not texts:
            return []
        tok = self.tokenizer
        alone = tok(texts, add_special_tokens=False)["input_ids"]
        joined = tok([" " + t for t in texts], add_special_tokens=False)["input_ids"]
        return [max(len(a), len(b)) for a, b in zip(alone, joined, strict=True)]

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

    def _tokenize(self, texts: tuple[str, ...], max_length: int | None) -> Any:
        budget = max_length
        if budget is not None and self.bos_source == "added":
            budget -= 1
        kwargs: dict[str, Any] = ({"truncation": "longest_first", "max_length": budget} if budget is not None
                                  else {"truncation": False})
        enc = self.tokenizer(*texts, return_offsets_mapping=True, **kwargs)
        ids = list(enc["input_ids"])
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        seq_ids = list(enc.sequence_ids())
        types = list(enc["token_type_ids"]) if "token_type_ids" in enc else None
        if not self.supports_pairs:
            bos = self.tokenizer.bos_token_id
            if self.bos_source == "added":
                ids, offsets, seq_ids = [bos, *ids], [(0, 0), *offsets], [None, *seq_ids]
            elif self.tokenizer_adds_bos and self.bos_source == "none" and ids and seq_ids[0] is None:
                ids, offsets, seq_ids = ids[1:], offsets[1:], seq_ids[1:]
            types = None
        return ids, offsets, seq_ids, types

    def encode(self, index: int, kind: str, part_a: list[Sentence], part_b: list[Sentence] | None,
               manifest: Manifest, truncate: bool, forms: bool = False) -> Example | None:
        """Encode one input: sentences of segment A and (optionally) of segment B.

        Parameters
        ----------
        truncate : bool
            When the input is longer than ``max_length``: cut it (raw text) or skip it (treebanks, whose
            trees a cut would break). Either way the manifest counts it with file and line.
        forms : bool
            Read each sentence as its words joined by single spaces instead of its text (``--treebank-input
            forms``).

        Returns
        -------
        Example or None
            None when the input was skipped (and recorded in ``manifest``).
        """
        part_b = list(part_b or [])
        sentences = list(part_a) + part_b
        first = sentences[0]
        n_words = sum(len(s.words) for s in sentences)
        if n_words == 0:
            manifest.skip(first.file, first.line, "no words")
            return None
        pair = bool(part_b) and any(s.words for s in part_b) and self.supports_pairs
        parts = [list(part_a), part_b] if pair else [sentences]
        joined = [join_sentences(p, forms) for p in parts]
        texts = tuple(text for text, _ in joined)
        ids, offsets, seq_ids, types = self._tokenize(texts, None)
        n_tokens = len(ids)
        if n_tokens > self.max_length:
            if not truncate:
                manifest.skip(first.file, first.line,
                              f"{n_tokens} tokens, longer than the model allows here ({self.max_length})")
                return None
            ids, offsets, seq_ids, types = self._tokenize(texts, self.max_length)
            manifest.truncate(first.file, first.line,
                              f"{n_tokens} tokens cut to {self.max_length} (--max-length / model limit)")
        n = len(ids)
        word_base = [0, len(joined[0][1])]
        owner, unit_words = align_pieces(offsets, seq_ids, joined, word_base)
        unit_of_piece = np.empty(n, dtype=np.int64)
        is_cls = np.zeros(n, dtype=bool)
        is_sep = np.zeros(n, dtype=bool)
        is_punct = np.zeros(n, dtype=bool)
        segment = np.zeros(n, dtype=np.int8)
        word_units = np.full(n_words, -1, dtype=np.int64)
        units: list[str] = []
        unit_of_owner: dict[int, int] = {}
        tok = self.tokenizer
        current_seg = 0
        for p in range(n):
            token_id = int(ids[p])
            s = seq_ids[p]
            if s is None:  # a special token the tokenizer (or --bos yes) added: its own unit
                units.append(tok.convert_ids_to_tokens(token_id))
                unit_of_piece[p] = len(units) - 1
                # A bos token stands in for [CLS] only at the start of a decoder LM's sequence.
                is_cls[p] = token_id == self.cls_id and (tok.cls_token_id is not None or p == 0)
                is_sep[p] = token_id == self.sep_id and not is_cls[p]
                segment[p] = current_seg
                continue
            current_seg = max(current_seg, int(s) if pair else 0)
            segment[p] = current_seg
            key = int(owner[p])
            if key not in unit_of_owner:
                unit_of_owner[key] = len(units)
                words = unit_words.get(key, [])
                units.append(unit_label(words, joined, word_base) if words else str(tok.convert_ids_to_tokens(
                    token_id)))
                word_units[words] = unit_of_owner[key]
            unit_of_piece[p] = unit_of_owner[key]
            is_punct[p] = self._is_punct(token_id)
        if pair:
            # The final separator belongs to segment B, as BERT's token types say.
            last_sep = np.flatnonzero(is_sep)
            if len(last_sep):
                segment[last_sep[-1]] = segment[last_sep[-1] - 1] if last_sep[-1] > 0 else 0
        self._report_dropped(word_units, sentences, manifest, truncated=n_tokens > self.max_length)
        offsets_w = list(np.cumsum([0] + [len(s.words) for s in sentences[:-1]]).astype(int))
        token_types = None
        if self.use_token_types and types is not None:
            token_types = np.asarray(types, dtype=np.int64)
        ids_array = np.asarray(ids, dtype=np.int64)
        return Example(
            index=index, kind=kind, input_ids=ids_array, token_type_ids=token_types, segment=segment,
            is_cls=is_cls, is_sep=is_sep, is_punct=is_punct, unit_of_piece=unit_of_piece, units=units,
            word_units=word_units, sentences=sentences, word_offsets=[int(o) for o in offsets_w],
            pieces=tok.convert_ids_to_tokens(ids_array.tolist()),
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


def probe_example(index: int, ids: np.ndarray, has_bos: bool, tokenizer: Any, kind: str = "induction_probe"
                  ) -> Example:
    """An :class:`Example` of bare token ids (each token its own unit), for inputs an analysis builds itself
    (decoder_heads' induction probe, retrieval's prompts)."""
    n = int(ids.shape[0])
    is_cls = np.zeros(n, dtype=bool)
    is_cls[0] = has_bos
    pieces = tokenizer.convert_ids_to_tokens(ids.tolist())
    return Example(index=index, kind=kind, input_ids=ids, token_type_ids=None,
                   segment=np.zeros(n, dtype=np.int8), is_cls=is_cls, is_sep=np.zeros(n, dtype=bool),
                   is_punct=np.zeros(n, dtype=bool), unit_of_piece=np.arange(n, dtype=np.int64),
                   units=[str(p) for p in pieces], word_units=np.arange(n, dtype=np.int64), sentences=[],
                   word_offsets=[], pieces=pieces)
