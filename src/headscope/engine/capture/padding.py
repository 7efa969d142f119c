"""Padding: a :class:`~headscope.engine.batch.Batch` is right-padded; a forward pass may be either.

The weights handed over are right-aligned whatever the forward's padding side; :func:`shift` gives the positions
that map one onto the other, :func:`model_inputs` the inputs of a left-padded forward.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.model.load import LoadedModel

PaddingSide = Literal["right", "left"]


def shift(batch: Batch, sign: int) -> torch.Tensor:
    """[batch, seq] positions: ``sign=1`` maps right-aligned to left-padded positions, ``-1`` the reverse."""
    n = batch.input_ids.shape[1]
    pad = (n - batch.lengths)[:, None]
    return (torch.arange(n, device=batch.input_ids.device)[None, :] + sign * pad) % n


def model_inputs(loaded: LoadedModel, batch: Batch, padding_side: PaddingSide = "right") -> dict[str, torch.Tensor]:
    """The forward pass's inputs, padded on ``padding_side`` (a :class:`Batch` is always right-padded).

    With left padding, models that number positions from 0 get ``position_ids`` counted from each
    sequence's first real token, so a sequence's result does not depend on its padding; RoBERTa- and
    MPNet-style embeddings count positions from the input ids themselves.
    """
    inputs = batch.model_inputs()
    if padding_side == "right":
        return inputs
    source = shift(batch, -1)
    inputs = {name: t.gather(1, source) for name, t in inputs.items()}
    if _takes_positions(loaded):
        inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    return inputs


def _takes_positions(loaded: LoadedModel) -> bool:
    embeddings = getattr(loaded.base, "embeddings", None)
    if embeddings is not None and hasattr(embeddings, "padding_idx"):
        return False
    return "position_ids" in inspect.signature(loaded.base.forward).parameters

