"""The state of one batch's capture (:class:`Stream`) and the layer of each attention call (:class:`CallOrder`).

A :class:`Stream` lives for one forward pass: the consumer the blocks go to, the alignment of left-padded
positions, the real-token mask, and what is built once per pass and shared by its layers (the additive mask,
the work buffers). The attention function and the hooks route read it (:mod:`headscope.engine.capture.attention`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from headscope.engine.capture.blocks import Consumer

WeightsKind = Literal["attention", "norm", "rollout"]


class Stream:
    """What the attention function and hooks need while one batch goes through the model.

    ``align`` [batch, seq] (left-padded forwards only) maps each right-aligned position to the forward's;
    ``real`` [batch, seq] is the real-token mask after alignment; ``layer_of`` is :class:`CallOrder`'s.
    """

    def __init__(self, consume: Consumer, layer_of: dict[int, list[int]], budget_bytes: int,
                 align: torch.Tensor | None, real: torch.Tensor, weights: WeightsKind = "attention",
                 projections: list[torch.nn.Module] | None = None) -> None:
        self.consume = consume
        self.order = CallOrder(layer_of)
        self.budget_bytes = budget_bytes
        self.align = align
        self.real = real
        self.seen: list[int] = []
        self.weights = weights
        self.projections = projections
        self.padded = bool((~real).any())
        self._buffers: dict[str, torch.Tensor] = {}
        self._triangular: dict[int, bool] = {}
        self._masks: dict[tuple[int, bool, int, int], tuple[torch.Tensor | None, torch.Tensor | None, bool]] = {}
        self.rollout = None
        if weights == "rollout":
            from headscope.engine.rollout import Rollout

            self.rollout = Rollout(real)

    def buffer(self, numel: int, device: torch.device, name: str = "block") -> torch.Tensor:
        """A flat float32 work buffer of ``numel`` elements, the same memory for every layer of the batch."""
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.device != device:
            self._buffers.pop(name, None)  # free the old one first
            self._buffers[name] = buf = torch.empty(numel, dtype=torch.float32, device=device)
        return buf[:numel]

    def lower_triangular(self, add: torch.Tensor) -> bool:
        """True when the additive mask ``add`` [1, 1, seq, seq] masks every key after its query (causal)."""
        key = id(add)
        if key not in self._triangular:
            upper = torch.ones(add.shape[-2:], dtype=torch.bool, device=add.device).triu(1)
            self._triangular[key] = bool(torch.isneginf(add[0, 0][upper]).all())
        return self._triangular[key]

    def additive_mask(self, mask: torch.Tensor | None, causal: bool, n: int, m: int
                      ) -> tuple[torch.Tensor | None, bool]:
        """The model's mask as float32 to add to the scores: 0 where a key is seen, -inf where it is not.

        Shape [batch or 1, head or 1, query, key], right-aligned, padded keys masked; None when every key is
        seen. The flag is True when the values are 0 and -inf only (a boolean mask), False for a model's
        own float mask (added as it is). The layers of a forward pass share one mask object, so it is built
        once per object (kept alive here, so its ``id`` cannot be reused within the batch).
        """
        cache_key = (id(mask), causal, n, m)
        hit = self._masks.get(cache_key)
        if hit is not None and hit[0] is mask:
            return hit[1], hit[2]
        device = self.real.device
        add: torch.Tensor | None = None
        if mask is None and causal:
            mask = torch.ones(n, m, dtype=torch.bool, device=device).tril()[None, None]
            source = None
        else:
            source = mask
        if mask is not None:
            mask = mask.expand(mask.shape[0], mask.shape[1], n, m)
            if self.align is not None:
                full = mask.expand(self.real.shape[0], -1, n, m)
                mask = gather_positions(gather_positions(full, self.align, 2), self.align, 3)
            if mask.dtype == torch.bool:
                add = torch.zeros(mask.shape, dtype=torch.float32, device=device).masked_fill_(~mask, float("-inf"))
            else:
                add = mask.float().clone()
        if self.padded and (mask is None or mask.dtype != torch.bool):
            keys = ~self.real[:, None, None, :]
            add = (torch.zeros(keys.shape[0], 1, n, m, dtype=torch.float32, device=device) if add is None
                   else add.expand(keys.shape[0], -1, -1, -1).clone()).masked_fill_(keys, float("-inf"))
        exact = mask is None or mask.dtype == torch.bool
        self._masks[cache_key] = (source, add, exact)
        return add, exact

    def layer(self, module: torch.nn.Module) -> int:
        """The layer index of this call of ``module`` (:class:`CallOrder`)."""
        layer = self.order.layer(module)
        self.seen.append(layer)
        return layer


class CallOrder:
    """The layer of each call of an attention module, in call order: a module called k times in one forward pass
    (ALBERT's one shared layer; any weight-shared attention) is k layers, its i-th call the i-th of them.

    ``layer_of`` maps ``id(module)`` to the layers of its calls in one forward pass. It is learnt from the first
    forward pass that meets it empty (the route's probe pass): there, the n-th attention call of the pass is
    layer n. Later passes read it: the i-th call of a module within the pass (counted modulo its number of
    calls, so one object may span several forward passes, as a KV budget does) is its i-th layer.
    """

    def __init__(self, layer_of: dict[int, list[int]], cycle: int | None = None) -> None:
        self.layer_of = layer_of
        self.learning = not layer_of
        self.cycle = cycle  # learning across forward passes: a pass has this many calls
        self.calls: dict[int, int] = {}
        self.total = 0

    def layer(self, module: torch.nn.Module) -> int:
        key = id(module)
        k = self.calls.get(key, 0)
        self.calls[key] = k + 1
        self.total += 1
        if self.learning:
            if self.cycle is None or self.total <= self.cycle:
                self.layer_of.setdefault(key, []).append(self.total - 1)
                return self.total - 1
            self.learning = False  # one whole forward pass learnt: read it from now on
        layers = self.layer_of.get(key)
        if not layers:
            raise RuntimeError(f"{type(module).__name__}: an attention module the probe pass did not call "
                               f"(known: {len(self.layer_of)} modules)")
        return layers[k % len(layers)]


def gather_positions(x: torch.Tensor, align: torch.Tensor, dim: int) -> torch.Tensor:
    """Reorder dimension ``dim`` (the sequence) of ``x`` [batch, ...] by ``align`` [batch, seq] per sequence."""
    shape = [1] * x.dim()
    shape[0], shape[dim] = align.shape
    return x.gather(dim, align.view(shape).expand(x.shape))

