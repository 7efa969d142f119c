"""Per-head KV budgets: each budgeted head sees the first position (the sink) and its last W keys only.

The budget is a change of each layer's attention mask, made by headscope's attention function
(:func:`~headscope.engine.capture.attention.masking_keys`) for the model's own forward (span's causal check,
:class:`~headscope.engine.forwards.vocabulary.Loss` ``kv_budget``) or a capture alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from headscope.engine.capture import CallOrder, capture, ensure_route, probe_batch
from headscope.engine.capture.attention import masking_keys

if TYPE_CHECKING:
    from headscope.model.load import LoadedModel


class KVBudget:
    """The key windows of every head while a budgeted forward runs (:func:`kv_budget`): a
    :class:`~headscope.engine.capture.attention.KeyMask` the attention function applies to each layer's mask."""

    refusal = "a KV budget (kv_budget) counts positions from the first key: capture it right-padded"

    def __init__(self, windows: torch.Tensor, layer_of: dict[int, list[int]]) -> None:
        self.windows = windows  # int64 [layer, head]; 0: every key
        self.order = CallOrder(layer_of, cycle=int(windows.shape[0]))

    def mask(self, module: torch.nn.Module, mask: torch.Tensor | None, query: torch.Tensor, keys: int
             ) -> torch.Tensor | None:
        """``mask`` with each budgeted head of ``module``'s layer limited to key 0 and its last W keys.

        The result is [batch or 1, head, query, key]: a boolean mask stays boolean (True: seen), a float mask
        gets the dtype's minimum where the budget hides a key. Query ``r`` is position ``keys - n + r`` (right
        padding: position 0 is each sequence's first token, the sink).
        """
        layer = self.order.layer(module)
        if layer >= self.windows.shape[0]:
            raise RuntimeError(f"kv_budget: attention layer {layer} has no row in windows of shape "
                               f"{tuple(self.windows.shape)}")
        windows = self.windows[layer].to(query.device)
        if not bool((windows > 0).any()):
            return mask
        n = int(query.shape[2])
        heads = int(query.shape[1])
        if windows.shape[0] != heads:
            raise RuntimeError(f"kv_budget: {heads} heads in attention layer {layer}, windows give {windows.shape[0]}")
        pos = torch.arange(keys - n, keys, device=query.device)[:, None]
        key = torch.arange(keys, device=query.device)[None, :]
        window = windows[:, None, None]
        # [head, query, key]: the sink, the last W keys (the query itself included), or every key (W = 0)
        seen = (key == 0)[None] | ((pos - key)[None] < window) | (window <= 0)
        if mask is None:
            causal = (key <= pos)[None, None]
            return causal & seen[None]
        mask = mask[..., :keys]
        if mask.dtype == torch.bool:
            return mask & seen[None]
        return mask.expand(mask.shape[0], heads, n, keys).masked_fill(~seen[None], torch.finfo(mask.dtype).min)


@contextlib.contextmanager
def kv_budget(loaded: LoadedModel, windows: Any) -> Iterator[None]:
    """For the duration, head ``(layer, head)`` with ``windows[layer, head] = W > 0`` attends only to the first
    position (the attention sink) and to its last ``W`` keys (itself included), as a streaming KV cache of one
    sink and a window of ``W`` would let it (Xiao et al. 2024); ``W = 0`` leaves the head whole.

    Works through headscope's attention function (the ``interface`` capture route), for the model's own
    forward (losses) and for a capture alike; inputs right-padded (position 0 is the first token).

    Parameters
    ----------
    loaded : LoadedModel
    windows : array-like of shape (n_layers, n_heads)
        Non-negative integers.
    """
    route = ensure_route(loaded)
    if route != "interface":
        raise ValueError(f"a KV budget needs headscope's attention function (the 'interface' capture route); "
                         f"{loaded.info.name} is captured by the {route!r} route")
    values = torch.as_tensor(np.asarray(windows), dtype=torch.int64)
    shape = (loaded.info.n_layers, loaded.info.n_heads)
    if tuple(values.shape) != shape or bool((values < 0).any()):
        raise ValueError(f"kv_budget windows must be non-negative integers of shape {shape}, got "
                         f"{tuple(values.shape)}")
    if not loaded.capture_state.get("layer_of"):  # learn the layer of each attention call first (CallOrder)
        capture(loaded, probe_batch(loaded), lambda block: None, budget_bytes=1 << 30)
    with masking_keys(KVBudget(values, loaded.capture_state.setdefault("layer_of", {}))):
        yield

