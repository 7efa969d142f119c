"""Word-level attention on hand-made alignments (sum over attended pieces, mean or first over attending)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headscope.engine.wordlevel import word_attention
from reference import random_attention, word_attention_reference


def test_hand_made_alignment() -> None:
    # [CLS] un ##believ ##able dog [SEP] -> units: [CLS], unbelievable, dog, [SEP]
    A = np.array([
        [0.1, 0.2, 0.3, 0.1, 0.2, 0.1],
        [0.0, 0.5, 0.1, 0.1, 0.2, 0.1],
        [0.2, 0.2, 0.2, 0.2, 0.1, 0.1],
        [0.3, 0.0, 0.0, 0.3, 0.3, 0.1],
        [0.1, 0.1, 0.1, 0.1, 0.5, 0.1],
        [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
    ])
    unit_of_piece = torch.tensor([[0, 1, 1, 1, 2, 3]])
    W = word_attention(torch.tensor(A, dtype=torch.float32)[None, None, None], unit_of_piece)[0, 0, 0].numpy()
    # From the split word: mean of rows 1-3; to it: sum of columns 1-3.
    assert W[1, 1] == pytest.approx(np.mean([0.5 + 0.1 + 0.1, 0.2 + 0.2 + 0.2, 0.0 + 0.0 + 0.3]))
    assert W[1, 0] == pytest.approx(np.mean([0.0, 0.2, 0.3]))
    assert W[0, 1] == pytest.approx(0.2 + 0.3 + 0.1)
    assert W[2, 2] == pytest.approx(0.5)
    np.testing.assert_allclose(W.sum(-1), 1.0, atol=1e-6)
    first = word_attention(torch.tensor(A, dtype=torch.float32)[None, None, None], unit_of_piece,
                           mode="first")[0, 0, 0].numpy()
    np.testing.assert_allclose(first[1], [0.0, 0.7, 0.2, 0.1], atol=1e-6)


@pytest.mark.parametrize("mode", ["mean", "first"])
def test_batched_equals_reference_with_padding(mode: str) -> None:
    rng = np.random.default_rng(0)
    alignments = [[0, 1, 1, 2, 3], [0, 1, 2, 2, 2, 3, 4, 4, 5], [0, 1, 2]]
    n = max(len(a) for a in alignments)
    attn = torch.zeros(len(alignments), 2, 3, n, n)
    unit = torch.full((len(alignments), n), -1)
    maps = []
    for k, a in enumerate(alignments):
        size = len(a)
        per_head = [[random_attention(rng, size) for _ in range(3)] for _ in range(2)]
        maps.append(per_head)
        attn[k, :, :, :size, :size] = torch.tensor(np.array(per_head), dtype=torch.float32)
        unit[k, :size] = torch.tensor(a)
    W = word_attention(attn, unit, mode=mode)
    for k, a in enumerate(alignments):
        groups = [[p for p, u in enumerate(a) if u == g] for g in range(max(a) + 1)]
        for layer in range(2):
            for head in range(3):
                ref = word_attention_reference(maps[k][layer][head], groups, mode)
                m = len(groups)
                np.testing.assert_allclose(W[k, layer, head, :m, :m].numpy(), ref, atol=1e-6)
                assert torch.all(W[k, layer, head, m:, :] == 0) and torch.all(W[k, layer, head, :, m:] == 0)


def test_layer_by_layer_word_attention_from_blocks_equals_the_dense_pooling(tiny_bert) -> None:
    from transformers import AutoTokenizer

    from headscope.corpus.types import Sentence
    from headscope.engine.batch import collate
    from headscope.engine.wordlevel import WordAttention
    from headscope.manifest import Manifest
    from headscope.model.encode import Encoder

    enc = Encoder(AutoTokenizer.from_pretrained(tiny_bert), 32)
    examples = [enc.encode(i, "sentence", [Sentence(t.split(), "f", i + 1)], None, Manifest(), truncate=False)
                for i, t in enumerate(["the dogs saw", "a big old house .", "zzyzx qwv"])]
    batch = collate(examples, 0)
    n = batch.input_ids.shape[1]
    mask = batch.mask
    attn = torch.softmax(torch.randn(3, 2, 4, n, n), -1) * mask[:, None, None, :, None] * mask[:, None, None, None, :]
    for mode in ("mean", "first"):
        dense = word_attention(attn, batch.unit_of_piece, int(batch.n_units.max()), mode)
        for rows in (1, 3, n):
            builder = WordAttention(batch.unit_of_piece, int(batch.n_units.max()), mode)
            for layer in range(2):
                done = None
                for q0 in range(0, n, rows):
                    assert done is None  # the map is handed out only after the layer's last block
                    done = builder.add(attn[:, layer, :, q0:q0 + rows], q0)
                assert done is not None
                torch.testing.assert_close(done, dense[:, layer], atol=1e-6, rtol=0, msg=f"{mode}, {rows} rows")


@pytest.mark.parametrize("block_rows", [None, 3])
def test_float16_word_attention_equals_clarks_get_word_word_attention_bit_for_bit(block_rows: int | None) -> None:
    """``float16=True`` (syntax under --conventions clark) against bpe_utils.get_word_word_attention run by NumPy on
    float16 maps: words of 1 to 4 pieces, a padded second row, the layer given in blocks of query rows."""
    from headscope.engine.wordlevel import WordAttention
    from test_conventions import clark_word_word_attention

    rng = np.random.default_rng(7)
    pieces = [[1, 3, 1, 4, 2, 1], [1, 2, 1]]  # per row: pieces of each unit ([CLS] w.. [SEP])
    seq = sum(pieces[0])
    unit_of_piece = torch.full((2, seq), -1, dtype=torch.int64)
    for r, counts in enumerate(pieces):
        units = np.repeat(np.arange(len(counts)), counts)
        unit_of_piece[r, :len(units)] = torch.from_numpy(units)
    heads = 3
    maps = np.zeros((2, heads, seq, seq), dtype=np.float16)
    for r, counts in enumerate(pieces):
        n = sum(counts)
        raw = rng.dirichlet(np.ones(n) * 0.3, size=(heads, n))  # peaked rows: sums that round in float16
        maps[r, :, :n, :n] = raw.astype(np.float16)
    words = WordAttention(unit_of_piece, len(pieces[0]), mode="first", float16=True)
    weights = torch.from_numpy(maps.astype(np.float32))
    step = block_rows or seq
    for start in range(0, seq, step):
        out = words.add(weights[:, :, start:start + step], start)
    assert out is not None
    for r, counts in enumerate(pieces):
        n, m = sum(counts), len(counts)
        words_to_tokens = [list(range(sum(counts[:u]), sum(counts[:u + 1]))) for u in range(m)]
        for h in range(heads):
            expected = clark_word_word_attention(maps[r, h, :n, :n], words_to_tokens)
            assert expected.dtype == np.float16
            assert np.array_equal(out[r, h, :m, :m].numpy(), expected.astype(np.float32)), (r, h)
        assert not out[r, :, m:].any() and not out[r, :, :, m:].any()  # empty unit slots stay 0
