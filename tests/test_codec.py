"""TokenCodec: the tokenizer as analyses see it, against hand-known facts of the tiny test tokenizers."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from headscope.engine.codec import TokenCodec


def test_wordpiece_codec(tiny_bert: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    codec = TokenCodec.of(tok)
    # BERT: [SEP] is the separator, there is no BOS or EOS; the special tokens are never drawn as ordinary ones.
    assert codec.sep_id == tok.convert_tokens_to_ids("[SEP]") and codec.bos_id is None and codec.eos_id is None
    assert {tok.convert_tokens_to_ids(t) for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]")} <= set(
        codec.special_ids)
    assert codec.size == len(tok) and not codec.has_chat_template
    ids = codec.encode("the cat")
    assert codec.decode(ids) == "the cat" and codec.token(codec.sep_id) == "[SEP]"
    # With special tokens: [CLS] first and [SEP] last, at offsets (0, 0); each word's offsets cut out the word.
    with_special, offsets = codec.encode_offsets("the cat")
    assert with_special == [tok.cls_token_id, *ids, tok.sep_token_id]
    assert offsets[0] == offsets[-1] == (0, 0)
    assert ["the cat"[s:e] for s, e in offsets[1:-1]] == ["the", "cat"]
    assert codec.encode_many(["the", "cat"]) == [codec.encode("the"), codec.encode("cat")]


def test_byte_level_codec_separator_falls_back_to_eos(tiny_llama: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    codec = TokenCodec.of(tok)
    assert tok.sep_token_id is None and codec.sep_id == codec.eos_id == tok.eos_token_id
    assert codec.require_bos() == tok.bos_token_id
    assert codec.decode(codec.encode(" a cat"), skip_special=True) == " a cat"
