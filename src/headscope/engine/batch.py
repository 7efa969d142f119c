"""A padded batch of examples on the model's device, and length-bucketed batching."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from headscope.model.encode import Example


@dataclass
class Batch:
    """Padded tensors of shape [batch, seq] (right padding) plus the examples they came from."""

    input_ids: torch.Tensor
    """int64 [batch, seq]; padding holds the pad id."""
    attention_mask: torch.Tensor
    """int64 [batch, seq]; 1 at real positions."""
    token_type_ids: torch.Tensor | None
    """int64 [batch, seq], or None when the model takes no token types."""
    segment: torch.Tensor
    """int64 [batch, seq]: 0 for A, 1 for B; padding 0 (mask it)."""
    is_cls: torch.Tensor
    """bool [batch, seq]."""
    is_sep: torch.Tensor
    """bool [batch, seq]."""
    is_punct: torch.Tensor
    """bool [batch, seq]."""
    unit_of_piece: torch.Tensor
    """int64 [batch, seq]: unit of each position, -1 on padding."""
    lengths: torch.Tensor
    """int64 [batch]: real positions per example."""
    n_units: torch.Tensor
    """int64 [batch]: units (words + special tokens) per example."""
    examples: list[Example]

    @property
    def mask(self) -> torch.Tensor:
        """bool [batch, seq], True at real positions."""
        return self.attention_mask.bool()

    @property
    def size(self) -> int:
        return len(self.examples)

    def select(self, rows: list[int]) -> Batch:
        """The sub-batch of the given rows (same padding width)."""
        idx = torch.tensor(rows, dtype=torch.int64, device=self.input_ids.device)
        tensors = {name: getattr(self, name).index_select(0, idx) for name in (
            "input_ids", "attention_mask", "segment", "is_cls", "is_sep", "is_punct", "unit_of_piece",
            "lengths", "n_units")}
        types = None if self.token_type_ids is None else self.token_type_ids.index_select(0, idx)
        return Batch(token_type_ids=types, examples=[self.examples[r] for r in rows], **tensors)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.token_type_ids is not None:
            inputs["token_type_ids"] = self.token_type_ids
        return inputs


def collate(examples: list[Example], pad_id: int, device: torch.device | str = "cpu") -> Batch:
    """Pad ``examples`` to the longest one and move the tensors to ``device``."""
    n = max(ex.length for ex in examples)
    b = len(examples)

    def pad(name: str, dtype: type[np.generic], fill: int) -> torch.Tensor:
        out = np.full((b, n), fill, dtype=dtype)
        for k, ex in enumerate(examples):
            out[k, :ex.length] = getattr(ex, name)
        return torch.from_numpy(out).to(device)

    has_types = examples[0].token_type_ids is not None
    lengths = torch.tensor([ex.length for ex in examples], dtype=torch.int64, device=device)
    mask = (torch.arange(n, device=device)[None, :] < lengths[:, None]).to(torch.int64)
    return Batch(
        input_ids=pad("input_ids", np.int64, pad_id),
        attention_mask=mask,
        token_type_ids=pad("token_type_ids", np.int64, 0) if has_types else None,
        segment=pad("segment", np.int64, 0),
        is_cls=pad("is_cls", np.bool_, False),
        is_sep=pad("is_sep", np.bool_, False),
        is_punct=pad("is_punct", np.bool_, False),
        unit_of_piece=pad("unit_of_piece", np.int64, -1),
        lengths=lengths,
        n_units=torch.tensor([ex.n_units for ex in examples], dtype=torch.int64, device=device),
        examples=examples,
    )


def probe_batch(input_ids: np.ndarray, device: torch.device | str = "cpu") -> Batch:
    """A one-sequence batch of bare token ids, for the checks made when a model is loaded."""
    n = int(input_ids.shape[0])
    ids = torch.as_tensor(input_ids, dtype=torch.int64, device=device)[None, :]
    zeros = torch.zeros(1, n, dtype=torch.int64, device=device)
    no = torch.zeros(1, n, dtype=torch.bool, device=device)
    return Batch(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=None, segment=zeros,
                 is_cls=no, is_sep=no, is_punct=no, unit_of_piece=torch.arange(n, device=device)[None, :],
                 lengths=torch.tensor([n], device=device), n_units=torch.tensor([n], device=device), examples=[])


#: Bytes of work per attention weight while a block is computed and consumed: the scores, the softmax and
#: one analysis temporary of the same size (the entropy's), all float32.
BYTES_PER_WEIGHT = 3 * 4


def sequences_per_batch(n_heads: int, seq: int, budget_bytes: int) -> int:
    """Sequences of length ``seq`` whose whole layer of attention fits in ``budget_bytes`` (at least 1)."""
    return max(1, budget_bytes // max(n_heads * seq * seq * BYTES_PER_WEIGHT, 1))


def split_for_memory(examples: list[Example], n_heads: int, budget_bytes: int) -> list[list[Example]]:
    """Cut a length-bucketed group so that one layer's attention of each part fits in ``budget_bytes``.

    Results do not depend on how sequences are batched, so this changes speed and memory only.
    """
    longest = max(ex.length for ex in examples)
    size = sequences_per_batch(n_heads, longest, budget_bytes)
    return [examples[k:k + size] for k in range(0, len(examples), size)]


def bucket_batches(examples: Iterable[Example], batch_size: int, pool_batches: int = 32
                   ) -> Iterator[list[Example]]:
    """Group examples of similar length so little compute goes to padding.

    Examples are read ``batch_size * pool_batches`` at a time, sorted by length within that pool and cut
    into batches, so memory stays bounded however long the corpus is. The grouping is deterministic.
    """
    pool: list[Example] = []
    size = batch_size * pool_batches

    def flush() -> Iterator[list[Example]]:
        pool.sort(key=lambda ex: (ex.length, ex.index))
        for start in range(0, len(pool), batch_size):
            yield pool[start:start + batch_size]
        pool.clear()

    for ex in examples:
        pool.append(ex)
        if len(pool) >= size:
            yield from flush()
    if pool:
        yield from flush()
