"""Encoding: special tokens by role, segments and token types, piece-to-unit alignment, dropped words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from headscope.corpus.types import Sentence
from headscope.manifest import Manifest
from headscope.model.encode import Encoder


@pytest.fixture(scope="module")
def encoder(tiny_bert: Path) -> Encoder:
    return Encoder(AutoTokenizer.from_pretrained(tiny_bert), max_length=24)


def _s(text: str, line: int = 1) -> Sentence:
    return Sentence(text.split(" "), "f.txt", line)


def test_pair_roles_segments_and_units(encoder: Encoder) -> None:
    m = Manifest()
    ex = encoder.encode(0, "segment", [_s("the dogs saw")], [_s("a cat .", 2)], m, truncate=True)
    assert ex is not None
    assert ex.pieces == ["[CLS]", "the", "dog", "##s", "saw", "[SEP]", "a", "cat", ".", "[SEP]"]
    assert ex.is_cls.tolist() == [True] + [False] * 9
    assert np.flatnonzero(ex.is_sep).tolist() == [5, 9]
    assert ex.is_punct.tolist() == [False] * 8 + [True, False]
    assert ex.segment.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert ex.token_type_ids.tolist() == [0] * 6 + [1] * 4
    # Units: [CLS] the dogs saw [SEP] a cat . [SEP]; "dogs" spans two pieces.
    assert ex.units == ["[CLS]", "the", "dogs", "saw", "[SEP]", "a", "cat", ".", "[SEP]"]
    assert ex.unit_of_piece.tolist() == [0, 1, 2, 2, 3, 4, 5, 6, 7, 8]
    assert ex.word_units.tolist() == [1, 2, 3, 5, 6, 7]
    assert ex.sentence_units(1).tolist() == [5, 6, 7]
    assert not m.events


def test_repeated_words_get_distinct_units(encoder: Encoder) -> None:
    ex = encoder.encode(0, "sentence", [_s("the cat saw the cat")], None, Manifest(), truncate=False)
    assert ex.word_units.tolist() == [1, 2, 3, 4, 5]


def test_dropped_word_is_reported_with_file_and_line(encoder: Encoder) -> None:
    m = Manifest()
    ex = encoder.encode(0, "sentence", [Sentence(["the", "\u200b", "cat"], "tb.conllu", 17)], None, m,
                        truncate=False)
    assert ex.word_units.tolist() == [1, -1, 2]
    assert m.counts["warnings"] == 1
    assert m.events[0].file == "tb.conllu" and m.events[0].line == 17
    assert "got no pieces" in m.events[0].reason


def test_too_long_sentence_skipped_or_truncated(encoder: Encoder) -> None:
    words = " ".join(["cat"] * 40)
    m = Manifest()
    assert encoder.encode(0, "sentence", [_s(words, 5)], None, m, truncate=False) is None
    assert m.counts["skipped"] == 1 and m.events[0].line == 5 and "longer than" in m.events[0].reason
    m2 = Manifest()
    ex = encoder.encode(0, "segment", [_s(words, 6)], None, m2, truncate=True)
    assert ex.length == 24 and m2.counts["truncated"] == 1
    # Words cut away by truncation are not reported as dropped by the tokenizer.
    assert m2.counts["warnings"] == 0
    assert (ex.word_units[:22] >= 0).all() and (ex.word_units[22:] == -1).all()


def test_literal_special_token_text_is_not_a_separator(encoder: Encoder) -> None:
    ex = encoder.encode(0, "sentence", [_s("the [SEP] cat")], None, Manifest(), truncate=False)
    # Only tokens the tokenizer added count as [SEP]; the word in the text stays a word.
    assert ex.is_sep.sum() == 1 and ex.is_sep[-1]


def test_roberta_style_special_tokens_found_by_role(tiny_roberta: Path) -> None:
    from headscope.model.load import load_model

    loaded = load_model(str(tiny_roberta))
    assert loaded.info.max_length == 64  # 66 positions less RoBERTa's padding offset
    enc = Encoder(loaded.tokenizer, 64, use_token_types=False)
    ex = enc.encode(0, "segment", [_s("the dog saw")], [_s("a cat .")], Manifest(), truncate=True)
    assert ex.pieces[0] == "<s>" and ex.is_cls.tolist() == [True] + [False] * 9
    assert np.flatnonzero(ex.is_sep).tolist() == [4, 5, 9]  # <s> A </s></s> B </s>
    assert ex.segment.tolist() == [0] * 6 + [1] * 4
    assert ex.token_type_ids is None
    assert ex.units[1:4] == ["the", "dog", "saw"] and ex.is_punct[8]
