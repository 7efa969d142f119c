"""Layer-by-layer capture: every route gives the weights of 0.1's stacked eager path, whatever the blocks,
batching, padding side and dtype, on encoders (BERT, RoBERTa, MPNet) and decoders (Llama with grouped-query
attention and rotary positions, Mistral with a sliding window, GPT-2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from headscope.config import parse_bytes
from headscope.corpus.types import Sentence
from headscope.engine.batch import collate
from headscope.engine.capture import LayerAttention, capture, capture_stacked, ensure_route, query_block_rows
from headscope.manifest import Manifest
from headscope.model.encode import Encoder
from headscope.model.load import AttentionUnavailableError, LoadedModel, load_model

TEXTS = ["the dog saw the cat .", "a man and a woman saw the river , she said", "he ran",
         "the king ate a big red book and the queen ate an old book", "it was new"]
MODELS = ["tiny_bert", "tiny_roberta", "tiny_mpnet", "tiny_llama", "tiny_mistral", "tiny_gpt2"]
ROUTE = {"tiny_bert": "interface", "tiny_roberta": "interface", "tiny_mpnet": "hooks", "tiny_llama": "interface",
         "tiny_mistral": "interface", "tiny_gpt2": "interface"}


def _loaded(request: pytest.FixtureRequest, name: str, **kwargs: object) -> LoadedModel:
    loaded = load_model(str(request.getfixturevalue(name)), device="cpu", **kwargs)  # type: ignore[arg-type]
    ensure_route(loaded)  # the engine's choice, as where a run opens its context
    return loaded


def _examples(loaded: LoadedModel) -> list:
    encoder = Encoder(loaded.tokenizer, 64, use_token_types=(getattr(loaded.model.config, "type_vocab_size", 0)
                                                             or 0) > 1)
    manifest = Manifest()
    return [encoder.encode(i, "sentence", [Sentence(t.split(), "t.txt", i + 1)], None, manifest, False)
            for i, t in enumerate(TEXTS)]


def _layers(loaded: LoadedModel, batch, **kwargs: object) -> list[torch.Tensor]:
    """Every layer, blocks concatenated, checking that blocks arrive in order."""
    layers: list[list[LayerAttention]] = []

    def keep(block: LayerAttention) -> None:
        if block.is_first:
            layers.append([])
        assert block.layer == len(layers) - 1
        assert block.query_start == sum(b.weights.shape[2] for b in layers[-1])
        layers[-1].append(LayerAttention(block.layer, block.weights.clone(), block.query_start))

    capture(loaded, batch, keep, **{"budget_bytes": 1 << 30, **kwargs})  # type: ignore[arg-type]
    assert all(blocks[-1].is_last for blocks in layers)
    return [torch.cat([b.weights for b in blocks], dim=2) for blocks in layers]


@pytest.mark.parametrize("name", MODELS)
def test_streamed_weights_equal_the_stacked_eager_path(request: pytest.FixtureRequest, name: str) -> None:
    loaded = _loaded(request, name)
    assert loaded.route == ROUTE[name]
    examples = _examples(loaded)
    batch = collate(examples, int(loaded.tokenizer.pad_token_id))
    reference = capture_stacked(loaded, batch, route="stacked")  # output_attentions on eager attention
    streamed = _layers(loaded, batch)
    assert len(streamed) == loaded.info.n_layers == reference.shape[1]
    mask = batch.mask
    for layer, weights in enumerate(streamed):
        torch.testing.assert_close(weights, reference[:, layer], atol=1e-5, rtol=0)
        # Rows of real queries sum to 1; padded rows and columns are exactly 0.
        sums = weights.sum(-1)
        torch.testing.assert_close(sums[mask[:, None, :].expand_as(sums)], torch.ones(int(mask.sum()) * sums.shape[1]))
        assert (weights * ~mask[:, None, :, None]).abs().max() == 0
        assert (weights * ~mask[:, None, None, :]).abs().max() == 0
    if loaded.info.is_causal:
        assert torch.triu(streamed[0], diagonal=1).abs().max() == 0
    if name == "tiny_mistral":  # sliding window of 4: key j is seen from i only when i - j < 4
        n = streamed[0].shape[-1]
        far = torch.tril(torch.ones(n, n, dtype=torch.bool), diagonal=-4)
        assert streamed[0][..., far].abs().max() == 0


@pytest.mark.parametrize("name", MODELS)
def test_blocks_batching_and_padding_side_do_not_change_the_weights(request: pytest.FixtureRequest,
                                                                       name: str) -> None:
    loaded = _loaded(request, name)
    examples = _examples(loaded)
    pad = int(loaded.tokenizer.pad_token_id)
    batch = collate(examples, pad)
    whole = _layers(loaded, batch)
    n, heads = batch.input_ids.shape[1], loaded.info.n_heads
    budget = 3 * 4 * len(examples) * heads * n * 3  # three query rows per block
    assert query_block_rows(len(examples), heads, n, budget) == 3
    for layer, weights in enumerate(_layers(loaded, batch, budget_bytes=budget)):
        torch.testing.assert_close(weights, whole[layer], atol=1e-6, rtol=0)
    for layer, weights in enumerate(_layers(loaded, batch, padding_side="left")):
        torch.testing.assert_close(weights, whole[layer], atol=1e-5, rtol=0)
    for row, ex in enumerate(examples):
        alone = _layers(loaded, collate([ex], pad), padding_side="left" if row % 2 else "right")
        for layer, weights in enumerate(alone):
            m = ex.length
            torch.testing.assert_close(weights[0], whole[layer][row, :, :m, :m], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_llama"])
def test_bfloat16_model_float32_weights(request: pytest.FixtureRequest, name: str) -> None:
    full = _loaded(request, name)
    half = _loaded(request, name, dtype="bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    examples = _examples(full)
    batch = collate(examples, int(full.tokenizer.pad_token_id))
    for a, b in zip(_layers(full, batch), _layers(half, batch), strict=True):
        assert b.dtype == torch.float32
        # bfloat16 keeps 8 bits of mantissa: weights move by a few 1e-2 at most on these random models.
        assert (a - b).abs().max() < 0.05


def test_a_model_without_weights_by_any_route_is_named(tiny_bert: Path) -> None:
    loaded = load_model(str(tiny_bert), device="cpu")

    def nothing(*args: object, **kwargs: object) -> None:
        return None

    # A capture that sees no layer says which model and which option to change.
    loaded.base.forward = nothing  # type: ignore[method-assign]
    batch = collate(_examples(loaded)[:1], 0)
    with pytest.raises(AttentionUnavailableError, match=r"tiny-bert.*saw no attention layer.*--capture"):
        capture(loaded, batch, lambda block: None, budget_bytes=1 << 20)


def test_memory_sizes_parse() -> None:
    assert parse_bytes("1GiB") == 1 << 30
    assert parse_bytes("512MiB") == 512 << 20
    assert parse_bytes("2GB") == 2_000_000_000
    assert parse_bytes("4000") == 4000
    for bad in ("", "lots", "-1GiB", "1XB"):
        with pytest.raises(ValueError, match="not a memory size"):
            parse_bytes(bad)
