"""Surface statistics: hand-computed values, a plain-loop reference, padding and merge invariance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from contexts import analysis_context
from headscope.analyses.surface import STATISTICS, SurfaceStatistics, sequence_statistics
from headscope.engine.capture import LayerAttention
from headscope.engine.scratch import Scratch
from reference import random_attention, surface_reference


def _pad_batch(maps: list[np.ndarray], masks: list[dict[str, np.ndarray]], n_layers: int = 1, n_heads: int = 1):
    """Stack (n_i, n_i) maps into [batch, layer, head, n, n] with zero padding, as the capture gives."""
    n = max(m.shape[-1] for m in maps)
    b = len(maps)
    attn = torch.zeros(b, n_layers, n_heads, n, n)
    flags = {k: torch.zeros(b, n, dtype=torch.bool) for k in ("is_cls", "is_sep", "is_punct")}
    for k, (m, mk) in enumerate(zip(maps, masks, strict=True)):
        size = m.shape[-1]
        attn[k, ..., :size, :size] = torch.as_tensor(m, dtype=torch.float32)
        for key in flags:
            flags[key][k, :size] = torch.as_tensor(mk[key])
    lengths = torch.tensor([m.shape[-1] for m in maps])
    return attn, lengths, flags


def test_hand_computed_values() -> None:
    # [CLS] the dog . [SEP]: a head that puts half of every row on [SEP] and half on the previous token
    # (the [CLS] row, with no previous token, puts all on itself).
    n = 5
    A = np.zeros((n, n))
    A[0, 0] = 1.0
    for i in range(1, n):
        A[i, 4] += 0.5
        A[i, i - 1] += 0.5
    masks = {"is_cls": np.array([1, 0, 0, 0, 0], bool), "is_sep": np.array([0, 0, 0, 0, 1], bool),
             "is_punct": np.array([0, 0, 0, 1, 0], bool)}
    attn, lengths, flags = _pad_batch([A], [masks])
    stats = {k: v[0][0, 0, 0].item() for k, v in sequence_statistics(attn, lengths, **flags).items()}
    assert stats["sep"] == pytest.approx(4 * 0.5 / 5)  # rows 1-4 each give 0.5
    assert stats["cls"] == pytest.approx((1.0 + 0.5) / 5)  # row 0 on itself, row 1's previous token
    assert stats["punct"] == pytest.approx(0.5 / 5)  # row 4's previous token is "."
    assert stats["prev"] == pytest.approx(4 * 0.5 / 4)
    assert stats["next"] == pytest.approx(0.5 / 4)  # only row 3, whose next token is the [SEP]
    assert stats["self"] == pytest.approx((1.0 + 0.5) / 5)  # [CLS] on itself, [SEP] half on itself
    assert stats["entropy"] == pytest.approx(4 * math.log(2) / 5)  # rows 1-4 split 50/50, row 0 certain
    assert stats["entropy_uniform"] == pytest.approx(math.log(5))
    assert stats["cls_entropy"] == pytest.approx(0.0)
    assert stats["sep_to_sep"] == pytest.approx(0.5)  # the [SEP] row: 0.5 on itself
    assert stats["other_to_sep"] == pytest.approx(3 * 0.5 / 4)  # rows 1-3 put 0.5 on [SEP], row 0 none
    assert stats["confidence"] == pytest.approx((1.0 + 0.5 * 4) / 5)


def test_hand_computed_sep_row_sums() -> None:
    # Row 4 (the [SEP]) has 0.5 on [SEP] (itself) and 0.5 on "." : recheck the class sums by columns.
    A = np.zeros((5, 5))
    A[0, 0] = 1.0
    for i in range(1, 5):
        A[i, 4] += 0.5
        A[i, i - 1] += 0.5
    assert A[:, 4].sum() == pytest.approx(2.0)  # 0.5 from each of rows 1-4
    masks = {"is_cls": np.eye(5, dtype=bool)[0], "is_sep": np.eye(5, dtype=bool)[4],
             "is_punct": np.eye(5, dtype=bool)[3]}
    attn, lengths, flags = _pad_batch([A], [masks])
    stats = sequence_statistics(attn, lengths, **flags)
    assert stats["sep"][0].item() == pytest.approx(2.0 / 5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("reuse_buffers", [False, True])
def test_vectorised_equals_plain_loop(causal: bool, reuse_buffers: bool) -> None:
    rng = np.random.default_rng(0)
    maps, masks = [], []
    for n in (3, 7, 12, 5):
        maps.append(random_attention(rng, n, causal))
        sep = np.zeros(n, bool)
        sep[-1] = True
        if n > 6:
            sep[n // 2] = True
        masks.append({"is_cls": np.eye(n, dtype=bool)[0], "is_sep": sep, "is_punct": rng.random(n) < 0.3})
    attn, lengths, flags = _pad_batch(maps, masks)
    scratch = Scratch() if reuse_buffers else None
    if scratch is not None:  # a buffer left dirty by a larger earlier batch must not leak into the result
        scratch.get("entropy", (2, *attn.shape[1:]), attn.dtype, attn.device).fill_(7.0)
    fast = sequence_statistics(attn, lengths, **flags, causal=causal, scratch=scratch)
    for k, (A, mk) in enumerate(zip(maps, masks, strict=True)):
        ref = surface_reference(A, mk["is_cls"], mk["is_sep"], mk["is_punct"], causal=causal)
        for key in STATISTICS:
            values, valid = fast[key]
            if key in ref:
                assert bool(valid[k]), key
                assert values[k, 0, 0].item() == pytest.approx(ref[key], abs=1e-5), key
            else:
                assert not bool(valid[k]), key


class _Batch:
    def __init__(self, attn, lengths, flags):
        self.lengths = lengths
        self.is_cls, self.is_sep, self.is_punct = flags["is_cls"], flags["is_sep"], flags["is_punct"]


def _accumulate(maps, masks, groups, block_rows=None):
    acc = SurfaceStatistics()
    acc.start(analysis_context(1, 1))
    for group in groups:
        attn, lengths, flags = _pad_batch([maps[i] for i in group], [masks[i] for i in group])
        rows = block_rows or attn.shape[-1]
        for q0 in range(0, attn.shape[-1], rows):
            acc.update(_Batch(attn, lengths, flags), LayerAttention(0, attn[:, 0, :, q0:q0 + rows], q0))
    return acc


def test_batching_and_merge_do_not_change_the_result() -> None:
    rng = np.random.default_rng(1)
    sizes = [4, 9, 6, 11, 3, 8]
    maps = [random_attention(rng, n) for n in sizes]
    masks = [{"is_cls": np.eye(n, dtype=bool)[0], "is_sep": np.eye(n, dtype=bool)[-1],
              "is_punct": np.zeros(n, bool)} for n in sizes]
    one_by_one = _accumulate(maps, masks, [[i] for i in range(6)]).means()
    together = _accumulate(maps, masks, [list(range(6))]).means()
    halves = _accumulate(maps, masks, [[0], [1], [2]]).merge(_accumulate(maps, masks, [[3], [4], [5]])).means()
    blocks = {k: _accumulate(maps, masks, [list(range(6))], block_rows=k).means() for k in (1, 3, 5)}
    for key in STATISTICS:
        # Another batch composition changes float32 summation order only.
        torch.testing.assert_close(one_by_one[key], together[key], atol=1e-6, rtol=0)
        # Merging shards adds the same float64 sums: equal to one run.
        torch.testing.assert_close(one_by_one[key], halves[key], atol=1e-12, rtol=0)
        # Blocks of query rows add up to the whole layer.
        for k, by_block in blocks.items():
            torch.testing.assert_close(by_block[key], together[key], atol=1e-6, rtol=0, msg=f"{key}, {k} rows")
    # The corpus value is the mean of per-sequence values.
    ref = np.mean([surface_reference(A, **mk)["sep"]
                   for A, mk in zip(maps, masks, strict=True)])
    assert one_by_one["sep"].item() == pytest.approx(ref, abs=1e-6)
