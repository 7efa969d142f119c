"""What the model reads, for each tokenizer family: the string as written, and every token on the right word.

Each family is built here with the ``tokenizers`` library (no hub): WordPiece uncased and cased (BERT),
WordPiece with ``<s>``/``</s>`` (MPNet), SentencePiece-style Metaspace BPE with BOS (Llama-2, Mistral),
byte-level BPE without a prefix space and without BOS (GPT-2, Llama-3, SmolLM2) and with a prefix space
(RoBERTa). For each, headscope's input ids must be exactly what the tokenizer makes of the plain string (the
way the model is used), ``decode`` gives the text back up to the tokenizer's own normalisation, and each word
of hand-made hard cases gets its own unit. The packaged SmolLM2 GGUF tokenizer is checked the same way when
it is installed.
"""

from __future__ import annotations

import importlib.util
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from headscope.corpus.conllu import read_conllu
from headscope.corpus.text import split_words, text_sentence
from headscope.corpus.types import Sentence
from headscope.manifest import Manifest
from headscope.model.encode import Encoder

#: Hard cases: a contraction, an abbreviation, a hyphenated compound, emoji, CJK, a tab and a double space.
HARD = "I don't  like\tthe U.S. New York-based café 😀 日本語 tests."
SIMPLE = "The cat sat on the mat."
#: The retrieval prompt's own words, so that the small vocabularies can spell a whole prompt (issue 36).
PROMPT_WORDS = ("The old dog was big and brown.\nBased on the content of the text book, Question: What was the old "
                "dog?\nAnswer:")
TRAINING = [HARD, SIMPLE, "the cat and the dog ?! ran , she said .", "?! ?! ?! wow?! yes?!", PROMPT_WORDS] * 20


def _wordpiece(lowercase: bool, mpnet: bool = False) -> Any:
    from tokenizers import BertWordPieceTokenizer, processors
    from transformers import PreTrainedTokenizerFast

    cls, sep, unk, pad, mask = ("<s>", "</s>", "<unk>", "<pad>", "<mask>") if mpnet else (
        "[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MASK]")
    wp = BertWordPieceTokenizer(lowercase=lowercase, strip_accents=lowercase, unk_token=unk, sep_token=sep,
                                cls_token=cls, pad_token=pad, mask_token=mask)
    wp.train_from_iterator(TRAINING, vocab_size=300, min_frequency=1, special_tokens=[pad, unk, cls, sep, mask])
    backend = wp._tokenizer
    ids = {t: backend.token_to_id(t) for t in (cls, sep)}
    pair = f"{cls} $A {sep} {sep} $B:1 {sep}:1" if mpnet else f"{cls} $A {sep} $B:1 {sep}:1"
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=pair, special_tokens=list(ids.items()))
    return PreTrainedTokenizerFast(tokenizer_object=backend, cls_token=cls, sep_token=sep, unk_token=unk,
                                   pad_token=pad, mask_token=mask, model_max_length=256)


def _metaspace_bpe() -> Any:
    """Llama-2 / Mistral style: Metaspace (``▁``) pre-tokenizer, byte fallback off, BOS added."""
    from tokenizers import SentencePieceBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(TRAINING, vocab_size=300, min_frequency=1, special_tokens=["<unk>", "<s>", "</s>"])
    backend = sp._tokenizer
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=256)


def _byte_level(prefix_space: bool) -> Any:
    """Without a prefix space and BOS: GPT-2 / Llama-3 / SmolLM2 style; with both: RoBERTa style."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=prefix_space)
    bpe.train_from_iterator(TRAINING, vocab_size=400, min_frequency=1, special_tokens=["<s>", "</s>", "<pad>"])
    if not prefix_space:
        return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                       pad_token="<pad>", model_max_length=256)
    backend = bpe._tokenizer
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                   sep_token="</s>", pad_token="<pad>", model_max_length=256)


FAMILIES: dict[str, Callable[[], Any]] = {
    "wordpiece-uncased": lambda: _wordpiece(lowercase=True),
    "wordpiece-cased": lambda: _wordpiece(lowercase=False),
    "mpnet": lambda: _wordpiece(lowercase=True, mpnet=True),
    "metaspace-bpe": _metaspace_bpe,
    "byte-level": lambda: _byte_level(prefix_space=False),
    "byte-level-prefix-space": lambda: _byte_level(prefix_space=True),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> tuple[str, Any]:
    return request.param, FAMILIES[request.param]()


def _normalised(text: str, lowercase: bool) -> str:
    """The text as a WordPiece tokenizer sees it: no white space (it is not kept), lowercased and unaccented."""
    if lowercase:
        text = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
    return "".join(text.split())


def _check_reads_the_string(name: str, tokenizer: Any, text: str) -> None:
    encoder = Encoder(tokenizer, 256)
    manifest = Manifest()
    ex = encoder.encode(0, "segment", [text_sentence(text, "t.txt", 1)], None, manifest, truncate=True)
    assert ex is not None
    # Exactly the tokenizer's own tokenization of the plain string, special tokens included.
    assert ex.input_ids.tolist() == tokenizer(text)["input_ids"], name
    words_only = ex.input_ids[~(ex.is_cls | ex.is_sep)].tolist()
    decoded = tokenizer.decode(words_only)
    if name.startswith(("wordpiece", "mpnet")):  # WordPiece keeps no white space
        expected = _normalised(text, lowercase=name != "wordpiece-cased")
        got = _normalised(decoded, False)
        if tokenizer.unk_token in got:  # a character outside the vocabulary
            got, expected = got.replace(tokenizer.unk_token, ""), expected.replace("😀", "")
        assert got == expected, name
    else:
        assert decoded.strip() == text, name
    spans = text_sentence(text, "t", 1).spans
    assert spans is not None
    word_units = ex.sentence_units(0)
    assert (word_units >= 0).all(), (name, manifest.events)
    assert (np.diff(word_units) >= 0).all(), name
    # Two neighbouring words share a unit exactly when one token's characters (white space aside) overlap both.
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    for w in range(len(spans) - 1):
        bridged = any(a < spans[w][1] and b > spans[w + 1][0] and not text[a:b].isspace()
                      and any(not text[c].isspace() for c in range(max(a, spans[w][0]), min(b, spans[w][1])))
                      and any(not text[c].isspace() for c in range(max(a, spans[w + 1][0]), min(b, spans[w + 1][1])))
                      for a, b in offsets)
        assert (word_units[w] == word_units[w + 1]) == bridged, (name, w, split_words(text)[w:w + 2])
    for u in set(word_units.tolist()):  # a unit's label is the text its words cover
        members = np.flatnonzero(word_units == u)
        assert ex.units[u] == text[spans[members[0]][0]:spans[members[-1]][1]], name
    assert not manifest.events, name


def test_each_family_reads_the_text_as_written(family: tuple[str, Any]) -> None:
    name, tokenizer = family
    for text in (SIMPLE, HARD):
        _check_reads_the_string(name, tokenizer, text)


def test_units_follow_the_words_in_order(family: tuple[str, Any]) -> None:
    """Every piece of a word lies inside the word's characters (white space aside), in order."""
    name, tokenizer = family
    ex = Encoder(tokenizer, 256).encode(0, "segment", [text_sentence(HARD, "t.txt", 1)], None, Manifest(), True)
    assert ex is not None
    enc = tokenizer(HARD, return_offsets_mapping=True)
    spans = text_sentence(HARD, "t", 1).spans
    assert spans is not None
    special = ex.is_cls | ex.is_sep
    for p in np.flatnonzero(~special):
        a, b = enc["offset_mapping"][p]
        chars = [c for c in range(a, b) if not HARD[c].isspace()]
        if not chars:
            continue  # white space alone: joins the next word (checked below)
        unit = ex.unit_of_piece[p]
        members = np.flatnonzero(ex.sentence_units(0) == unit)  # a token spanning words: their shared unit
        start, end = spans[members[0]][0], spans[members[-1]][1]
        assert all(start <= c < end for c in chars), (name, ex.pieces[p], HARD[a:b], ex.units[unit])
    assert (np.diff(ex.unit_of_piece[~special]) >= 0).all(), name


def test_pairs_and_special_tokens_as_the_tokenizer_makes_them(family: tuple[str, Any]) -> None:
    name, tokenizer = family
    encoder = Encoder(tokenizer, 256)
    a, b = "The dog saw the cat.", "She ran to the house."
    ex = encoder.encode(0, "segment", [text_sentence(a, "t", 1)], [text_sentence(b, "t", 2)], Manifest(), True)
    assert ex is not None
    if encoder.supports_pairs:
        assert ex.input_ids.tolist() == tokenizer(a, b)["input_ids"], name
        assert ex.segment[ex.sentence_units(1)[0] == ex.unit_of_piece].all()
        assert ex.segment[-1] == 1 and ex.segment[0] == 0
    else:  # a decoder LM reads one window: the sentences joined by one space
        assert ex.input_ids.tolist() == tokenizer(a + " " + b)["input_ids"], name
        assert (ex.segment == 0).all()


def test_a_token_spanning_two_words_makes_one_unit_of_both() -> None:
    """Byte-level BPE learned "?!" as one token; split_words makes "?" and "!" two words: both get its unit."""
    tokenizer = _byte_level(prefix_space=False)
    text = "wow?! yes"
    assert "?!" in tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    ex = Encoder(tokenizer, 64).encode(0, "segment", [text_sentence(text, "t", 1)], None, Manifest(), True)
    assert ex is not None
    units = ex.sentence_units(0).tolist()
    assert split_words(text) == ["wow", "?", "!", "yes"]
    assert units[1] == units[2] and units[0] != units[1] != units[3]
    assert ex.units[units[1]] == "?!"


def test_white_space_token_joins_the_next_word() -> None:
    tokenizer = _byte_level(prefix_space=False)
    text = "the  cat"  # the second space is a token of its own in byte-level BPE
    ex = Encoder(tokenizer, 64).encode(0, "segment", [text_sentence(text, "t", 1)], None, Manifest(), True)
    assert ex is not None
    assert "Ġ" in ex.pieces
    lone = ex.pieces.index("Ġ")
    assert ex.units[ex.unit_of_piece[lone]] == "cat"


def test_word_the_tokenizer_drops_is_reported() -> None:
    tokenizer = _wordpiece(lowercase=True)
    manifest = Manifest()
    ex = Encoder(tokenizer, 64).encode(0, "segment", [text_sentence("the \u200b cat", "f.txt", 9)], None,
                                       manifest, True)
    assert ex is not None
    assert ex.sentence_units(0).tolist()[1] == -1
    assert manifest.counts["warnings"] == 1 and manifest.events[0].line == 9


def test_bos_auto_yes_no() -> None:
    tokenizer = _byte_level(prefix_space=False)  # adds no BOS of its own
    plain = tokenizer(SIMPLE)["input_ids"]
    auto = Encoder(tokenizer, 64).encode(0, "segment", [text_sentence(SIMPLE, "t", 1)], None, Manifest(), True)
    yes = Encoder(tokenizer, 64, bos="yes").encode(0, "segment", [text_sentence(SIMPLE, "t", 1)], None,
                                                   Manifest(), True)
    assert auto is not None and yes is not None
    assert auto.input_ids.tolist() == plain and not auto.is_cls.any()
    assert yes.input_ids.tolist() == [tokenizer.bos_token_id, *plain]
    assert yes.is_cls.tolist() == [True] + [False] * len(plain) and yes.units[1:] == auto.units
    with_bos = _metaspace_bpe()  # adds BOS itself
    no = Encoder(with_bos, 64, bos="no").encode(0, "segment", [text_sentence(SIMPLE, "t", 1)], None, Manifest(),
                                                 True)
    assert no is not None and no.input_ids.tolist() == with_bos(SIMPLE)["input_ids"][1:]
    assert Encoder(with_bos, 64).describe()["bos"].endswith("added by the tokenizer")
    with pytest.raises(ValueError, match="decoder LMs"):
        Encoder(_wordpiece(lowercase=True), 64, bos="yes")


def test_truncated_window_keeps_the_budget_with_an_added_bos() -> None:
    tokenizer = _byte_level(prefix_space=False)
    long = " ".join(["the cat ran."] * 40)
    manifest = Manifest()
    ex = Encoder(tokenizer, 32, bos="yes").encode(0, "segment", [text_sentence(long, "t", 3)], None, manifest,
                                                   True)
    assert ex is not None and ex.length == 32 and ex.is_cls[0]
    assert manifest.counts["truncated"] == 1 and manifest.counts.get("warnings", 0) == 0


CONLLU = """# sent_id = 1
# text = I don't know, New York-based.
1	I	I	PRON	PRP	_	3	nsubj	_	_
2-3	don't	_	_	_	_	_	_	_	_
2	do	do	AUX	VBP	_	4	aux	_	_
3	n't	not	PART	RB	_	4	advmod	_	_
4	know	know	VERB	VB	_	0	root	_	SpaceAfter=No
5	,	,	PUNCT	,	_	4	punct	_	_
6	New	New	PROPN	NNP	_	7	compound	_	_
7	York-based	York-based	ADJ	JJ	_	4	obj	_	SpaceAfter=No
8	.	.	PUNCT	.	_	4	punct	_	_

# sent_id = 2
# text = Something   else entirely.
1	It	it	PRON	PRP	_	2	nsubj	_	_
2	ran	run	VERB	VBD	_	0	root	_	SpaceAfter=No
3	.	.	PUNCT	.	_	2	punct	_	_

"""


def test_conllu_text_multiword_tokens_and_forms(tmp_path: Path) -> None:
    path = tmp_path / "tb.conllu"
    path.write_text(CONLLU, encoding="utf-8")
    manifest = Manifest()
    first, second = list(read_conllu(path, manifest))
    # Note: the syntactic words of line 5 ("do", "n't") are indexed 1 and 2 (words 2 and 3 of the sentence).
    assert first.text == "I don't know, New York-based." and first.words[1:3] == ["do", "n't"]
    assert first.spans is not None and first.spans[1] == first.spans[2] == (2, 7)
    # A # text that does not match its forms is reported at its line and rebuilt from the forms.
    assert second.text == "It ran." and manifest.counts["text_rebuilt"] == 1
    assert manifest.events[0].line == 14 and "# text does not match" in manifest.events[0].reason
    tokenizer = _byte_level(prefix_space=False)
    encoder = Encoder(tokenizer, 64)
    ex = encoder.encode(0, "sentence", [first], None, Manifest(), truncate=False)
    assert ex is not None and tokenizer.decode(ex.input_ids) == first.text
    units = ex.sentence_units(0)
    assert units[1] == units[2] and ex.units[units[1]] == "don't"  # both syntactic words get the token
    forms = encoder.encode(0, "sentence", [first], None, Manifest(), truncate=False, forms=True)
    assert forms is not None and tokenizer.decode(forms.input_ids) == "I do n't know , New York-based ."
    assert len(set(forms.sentence_units(0).tolist())) == 8


def test_arcs_inside_a_multiword_token_are_left_out(tmp_path: Path) -> None:
    from headscope.analyses.syntax import batch_arcs

    path = tmp_path / "tb.conllu"
    path.write_text(CONLLU, encoding="utf-8")
    first = next(read_conllu(path, Manifest()))
    encoder = Encoder(_byte_level(prefix_space=False), 64)
    text = encoder.encode(0, "sentence", [first], None, Manifest(), truncate=False)
    forms = encoder.encode(0, "sentence", [first], None, Manifest(), truncate=False, forms=True)
    assert text is not None and forms is not None
    arcs_text, _, unaligned_text = batch_arcs([text], False, "headscope")
    arcs_forms, _, unaligned_forms = batch_arcs([forms], False, "headscope")
    # "do" -> "know" and "n't" -> "know" stay; no arc joins do and n't here, so nothing is left out...
    assert unaligned_text == unaligned_forms == 0
    # ...but an arc inside the token would be: make "n't" depend on "do".
    first.heads = [3, 4, 2, 0, 4, 7, 4, 4]
    text = encoder.encode(0, "sentence", [first], None, Manifest(), truncate=False)
    assert text is not None
    arcs_text, _, unaligned_text = batch_arcs([text], False, "headscope")
    assert unaligned_text == 1 and len(arcs_text.dep_unit) == len(arcs_forms.dep_unit) - 1


def test_sentences_without_text_read_their_words_joined_by_spaces() -> None:
    sentence = Sentence(["New", "York", "."], "x", 1)
    assert sentence.as_text() == ("New York .", [(0, 3), (4, 8), (9, 10)])


@pytest.mark.integration
def test_smollm2_reads_the_sentence_as_written() -> None:
    """The packaged SmolLM2 GGUF tokenizer (byte-level BPE, no prefix space, no BOS): this failed before 0.2,
    when words were tokenized one by one and the model read "Thecatsatonthemat."."""
    from headscope.model.load import PACKAGED_MODELS

    packaged = PACKAGED_MODELS["smollm2"]
    if not packaged.installed or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2 is not installed")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(packaged.path()), gguf_file=packaged.gguf_file)
    encoder = Encoder(tokenizer, 512)
    ex = encoder.encode(0, "segment", [text_sentence(SIMPLE, "t", 1)], None, Manifest(), truncate=True)
    assert ex is not None and tokenizer.decode(ex.input_ids) == SIMPLE
    assert encoder.bos_source == "none"
    _check_reads_the_string("smollm2", tokenizer, HARD)
    story = [text_sentence("What if Google Morphed Into GoogleOS?", "t", 1),
             text_sentence("It would be odd.", "t", 2)]
    ex = encoder.encode(0, "segment", story, None, Manifest(), truncate=True)
    assert ex is not None and tokenizer.decode(ex.input_ids) == "What if Google Morphed Into GoogleOS? It would be odd."


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_roberta", "tiny_mpnet", "tiny_llama", "tiny_gpt2"])
def test_saved_tokenizers_of_each_model_class(fixture: str, request: pytest.FixtureRequest) -> None:
    """The tokenizers the test models save (BertTokenizerFast, RobertaTokenizerFast, MPNetTokenizerFast, and
    byte-level BPE for Llama and GPT-2), loaded back as a user would: single inputs and pairs as the
    tokenizer makes them of the plain strings."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(fixture))
    encoder = Encoder(tokenizer, 64)
    a, b = "The dog saw the cat, she said.", "A man ran to the house!"
    single = encoder.encode(0, "segment", [text_sentence(a, "t", 1)], None, Manifest(), True)
    pair = encoder.encode(0, "segment", [text_sentence(a, "t", 1)], [text_sentence(b, "t", 2)], Manifest(), True)
    assert single is not None and pair is not None
    assert single.input_ids.tolist() == tokenizer(a)["input_ids"]
    expected = tokenizer(a, b) if encoder.supports_pairs else tokenizer(a + " " + b)
    assert pair.input_ids.tolist() == expected["input_ids"]
    assert [pair.units[u] for u in pair.word_units] == split_words(a) + split_words(b)


#: Where ../shared/tools/get-mpnet.sh puts all-mpnet-base-v2 by default.
MPNET = Path.home() / ".cache" / "headscope-dev" / "all-mpnet-base-v2"


@pytest.mark.integration
def test_real_mpnet_tokenizer() -> None:
    """all-mpnet-base-v2's own tokenizer (assembled by ../shared/tools/get-mpnet.sh; skipped without it)."""
    if not (MPNET / "tokenizer.json").is_file() and not (MPNET / "vocab.txt").is_file():
        pytest.skip("all-mpnet-base-v2 is not assembled (../shared/tools/get-mpnet.sh)")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(MPNET))
    _check_reads_the_string("mpnet-real", tokenizer, HARD)
    _check_reads_the_string("mpnet-real", tokenizer, SIMPLE)


# --- inputs headscope builds itself: retrieval's haystacks, span's windows (issue 36) ---------------------------

#: The decoder families (retrieval and span run on causal LMs only).
DECODER_FAMILIES = ("metaspace-bpe", "byte-level")
#: Sentences as written (characters the families' small vocabularies know): a tab, a double space, "?!" glued on.
STORY = [HARD, SIMPLE, "the cat  and the dog ?! ran , she said .", "wow?! yes?!"]


def _generated_ctx(tokenizer: Any, adds_bos: bool) -> Any:
    from contexts import analysis_context
    from headscope.engine.codec import TokenCodec

    return analysis_context(causal=True, codec=TokenCodec.of(tokenizer), adds_bos=adds_bos, texts=STORY * 6)


@pytest.mark.parametrize("name", DECODER_FAMILIES)
def test_span_windows_read_the_text_as_written(name: str) -> None:
    from headscope.analyses.span import text_windows

    tokenizer = FAMILIES[name]()
    windows = text_windows(_generated_ctx(tokenizer, adds_bos=True), 3, 40)
    assert len(windows) == 3 and all(len(w) == 40 for w in windows)
    assert all(int(w[0]) == tokenizer.bos_token_id for w in windows)
    # The windows, one after the other, decode to the sentences as written joined by one space (the last
    # window ends inside a sentence).
    stream = tokenizer.decode([i for w in windows for i in w[1:].tolist()])
    whole = " ".join(STORY * 6)
    assert stream.strip() and whole.startswith(stream.strip()), name


@pytest.mark.parametrize("name", DECODER_FAMILIES)
@pytest.mark.parametrize("wu", [False, True])
def test_retrieval_haystacks_read_the_text_as_written(name: str, wu: bool) -> None:
    from headscope.analyses.retrieval_prompts import build_prompt, build_prompt_wu, haystack_sentences
    from headscope.engine.codec import TokenCodec

    tokenizer = FAMILIES[name]()
    pool = haystack_sentences(_generated_ctx(tokenizer, adds_bos=True), 60)
    texts = [t for t, _ in pool]
    assert texts == (STORY * 6)[:len(texts)]  # each sentence as written: double space, tab kept
    counts = [n for _, n in pool]
    needle, question = "The old dog was big and brown.", "What was the old dog?"
    codec = TokenCodec.of(tokenizer)
    prompt = (build_prompt_wu(codec, texts, counts, needle, question, "big and brown", 0.5, 0) if wu
              else build_prompt(codec, texts, counts, needle, question, 0.5, 0))
    decoded = tokenizer.decode(prompt.ids.tolist(), skip_special_tokens=True)
    cut = next(k for k in range(len(texts) + 1) if " ".join([*texts[:k], needle, *texts[k:]]) in decoded)
    context = " ".join([*texts[:cut], needle, *texts[cut:]])
    ask = (f"{context}Based on the content of the book, Question: {question}\nAnswer:" if wu
           else f"{context}\nBased on the content of the text, Question: {question}\nAnswer:")
    assert decoded.strip() == ask, name
    if not wu:  # headscope's span is the needle sentence exactly
        start, stop = prompt.span
        assert tokenizer.decode(prompt.ids[start:stop].tolist()).strip() == needle
