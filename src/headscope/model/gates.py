"""Gates on the output of each attention head, as forward pre-hooks (``head_mask`` is gone from transformers).

Every self-attention layer ends in an output projection whose input is the heads' contexts concatenated,
``[batch, seq, head * head_dim]``. A pre-hook on that projection multiplies head h's slice by
``values[layer, h]``: 0 switches the head off (Michel et al. 2019's gate xi_h), 1 leaves the output
bit-for-bit unchanged, and a ``values`` tensor with ``requires_grad`` gives ``dL/dxi`` for head importance.

Two extensions, for mean ablation and attribution patching (``head_effects``):

- ``replacement`` (shape [layer, head, head_dim]): the gate interpolates, ``xi * x + (1 - xi) * r``, so a
  closed head outputs ``r`` (its mean output, say) instead of 0, and ``-dL/dxi`` at ``xi = 1`` is
  ``sum over tokens (r - x) . dL/dx``, the first-order estimate of replacing the head's output by ``r``;
- per-row gates (``values`` of shape [row, layer, head]): each row of the batch has its own gates, so that
  one forward of a batch repeated k times closes k different heads.

:class:`HeadSums` sums each head's output (the same slice) over the real tokens of every forward.

Example
-------
>>> with HeadGates(loaded.model, n_layers, n_heads) as gates:   # doctest: +SKIP
...     gates.values[3, 5] = 0.0
...     out = loaded.model(**inputs)
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import torch

#: Dotted-name endings of the self-attention output projection, per architecture family.
OUTPUT_PROJECTIONS = (
    "attention.output.dense",   # BERT, RoBERTa, XLM-R, ELECTRA, DeBERTa, MiniLM
    "attention.out_lin",        # DistilBERT
    "attention.attn.o",         # MPNet
    "attention.dense",          # ALBERT-like, GPT-NeoX
    "self_attn.o_proj",         # Llama, Mistral, Qwen, SmolLM, Gemma, Phi-3
    "self_attn.out_proj",       # BART/Marian/OPT encoders and decoders, Phi
    "attn.c_proj",              # GPT-2
    "attn.out_proj",            # GPT-J, GPT-Neo
    "self_attention.dense",     # BLOOM, Falcon
    "attn.Wo",                  # ModernBERT
    "SelfAttention.o",          # T5
)


def find_output_projections(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention output projection modules, in module order, each once.

    A model whose layers share weights (ALBERT) has fewer of them than layers: each is then called once per
    layer that uses it (:class:`HeadGates` counts the calls).

    Raises
    ------
    ValueError
        When no known projection is found.
    """
    for suffix in OUTPUT_PROJECTIONS:
        found = [m for name, m in model.named_modules() if name == suffix or name.endswith("." + suffix)]
        if found:
            return found
    raise ValueError(f"{type(model).__name__}: no self-attention output projection found (looked for names "
                     f"ending in {', '.join(OUTPUT_PROJECTIONS)})")


_H = TypeVar("_H", bound="_Hooks")


class _Hooks:
    """Hooks on every layer's attention output projection while active (``with``), removed on exit: the model
    is then as before."""

    def __init__(self, model: torch.nn.Module, n_layers: int, n_heads: int) -> None:
        self.model = model
        self.base = getattr(model, "base_model", model)
        self.projections = find_output_projections(model)
        # Fewer projections than layers: shared layers (ALBERT), one module called once per layer. The layer of
        # a call is then its place among the projection calls of the forward pass (reset by a pre-hook on the
        # base model), which is the layer order whatever module each layer uses.
        self.shared = len(self.projections) < n_layers
        if len(self.projections) > n_layers:
            raise ValueError(f"found {len(self.projections)} attention output projections for {n_layers} layers")
        self.n_layers, self.n_heads = n_layers, n_heads
        self._handles: list[Any] = []
        self._calls = 0

    def _register(self) -> list[Any]:
        raise NotImplementedError

    def _hook(self, layer: int) -> Callable[[torch.nn.Module, tuple[Any, ...]], Any]:
        raise NotImplementedError

    def _register_projections(self) -> list[Any]:
        """A pre-hook on each projection: ``self._hook(layer)`` of the layer it is, fixed or counted (shared)."""
        if not self.shared:
            return [proj.register_forward_pre_hook(self._hook(layer)) for layer, proj in enumerate(self.projections)]
        hooks = [self._hook(layer) for layer in range(self.n_layers)]

        def reset(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            self._calls = 0

        def counted(module: torch.nn.Module, args: tuple[Any, ...]) -> Any:
            layer = self._calls
            if layer >= self.n_layers:
                raise ValueError(f"{type(self.base).__name__}: more attention output projection calls in one "
                                 f"forward pass than its {self.n_layers} layers")
            self._calls += 1
            return hooks[layer](module, args)

        return [self.base.register_forward_pre_hook(reset),
                *(proj.register_forward_pre_hook(counted) for proj in self.projections)]

    def attach(self: _H) -> _H:
        """Register the hooks (idempotent)."""
        if not self._handles:
            self._calls = 0
            self._handles = self._register()
        return self

    def detach(self) -> None:
        """Remove the hooks; the model is as before."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self: _H) -> _H:
        return self.attach()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.detach()


class HeadGates(_Hooks):
    """Multiply each head's output by a gate, for every forward pass while active.

    Parameters
    ----------
    model : torch.nn.Module
        A transformers model (with or without its LM head).
    n_layers, n_heads : int
        The model's layers and heads per layer.

    Attributes
    ----------
    values : Tensor of shape [layer, head] or [row, layer, head]
        The gates, 1 at start; edit in place (``values[l, h] = 0``) or call :meth:`set`. Assign a tensor of
        shape [row, layer, head] for per-row gates (the projection's input must then have that many rows).
    replacement : Tensor of shape [layer, head, head_dim] or None
        What a closed gate puts in place of the head's output: the gated slice is
        ``xi * x + (1 - xi) * replacement``; None (the default) is 0, ``xi * x``.
    """

    def __init__(self, model: torch.nn.Module, n_layers: int, n_heads: int) -> None:
        super().__init__(model, n_layers, n_heads)
        param = next(model.parameters())
        self.values = torch.ones(n_layers, n_heads, dtype=param.dtype, device=param.device)
        self.replacement: torch.Tensor | None = None

    def set(self, heads: list[tuple[int, int]] | None = None, value: float = 0.0) -> HeadGates:
        """Open every gate, then set the gates of ``heads`` (pairs ``(layer, head)``) to ``value``."""
        with torch.no_grad():
            self.values.fill_(1.0)
            for layer, head in heads or []:
                self.values[layer, head] = value
        return self

    def _hook(self, layer: int) -> Callable[[torch.nn.Module, tuple[Any, ...]], tuple[Any, ...] | None]:
        def gate(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            per_row = self.values.dim() == 3
            gates = self.values[:, layer] if per_row else self.values[layer]
            if not gates.requires_grad and bool((gates == 1).all()):
                return None  # all open: leave the forward pass untouched
            x = args[0]
            shape = x.shape
            heads = x.reshape(*shape[:-1], self.n_heads, shape[-1] // self.n_heads)
            g = gates.to(x.dtype)
            if per_row:
                if shape[0] != g.shape[0]:
                    raise ValueError(f"per-row gates for {g.shape[0]} rows, but the forward has {shape[0]}")
                g = g.reshape(g.shape[0], *([1] * (heads.dim() - 3)), self.n_heads, 1)  # [row, (seq,) head, 1]
            else:
                g = g[:, None]
            gated = heads * g
            if self.replacement is not None:
                gated = gated + (1 - g) * self.replacement[layer].to(x.dtype)
            return (gated.reshape(shape), *args[1:])

        return gate

    def _register(self) -> list[Any]:
        return self._register_projections()


class HeadSums(_Hooks):
    """Sum each head's output (its slice of the attention output projection's input) over the real tokens of
    every forward pass while active, in float64: the sums and counts of a mean that merges exactly.

    Real tokens are those of the ``attention_mask`` the base model is called with (all positions when it is
    called without one), read by a pre-hook on the base model, so that the inputs a loss builds (masked-LM
    inputs, the two halves of the contrastive loss) are counted as the model reads them.

    Parameters
    ----------
    model : torch.nn.Module
        A transformers model (with or without its LM head).
    n_layers, n_heads : int
        The model's layers and heads per layer.

    Attributes
    ----------
    sums : Tensor of shape [layer, head, head_dim] or None
        float64, on the model's device; None until the first forward.
    tokens : int
        Real tokens summed (each forward of the base model counted once, not once per layer).
    """

    def __init__(self, model: torch.nn.Module, n_layers: int, n_heads: int) -> None:
        super().__init__(model, n_layers, n_heads)
        self.sums: torch.Tensor | None = None
        self.tokens = 0
        self._mask: torch.Tensor | None = None

    def _inputs(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if mask is None and ids is None:
            raise ValueError("HeadSums: the base model was called without input_ids, inputs_embeds or a mask")
        if mask is not None:
            self._mask = mask.bool()
        else:
            assert ids is not None
            self._mask = torch.ones(ids.shape[:2], dtype=torch.bool, device=ids.device)
        if self._mask.dim() != 2:
            raise ValueError(f"HeadSums needs a [batch, seq] attention mask, got shape {tuple(self._mask.shape)}")
        self.tokens += int(self._mask.sum())

    def _hook(self, layer: int) -> Callable[[torch.nn.Module, tuple[Any, ...]], None]:
        def add(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            mask = self._mask
            if mask is None or tuple(mask.shape) != tuple(x.shape[:2]):
                raise ValueError(f"HeadSums: the projection's input {tuple(x.shape)} does not match the mask "
                                 f"{None if mask is None else tuple(mask.shape)}")
            heads = x.reshape(*x.shape[:2], self.n_heads, x.shape[-1] // self.n_heads)
            summed = torch.einsum("bs,bshd->hd", mask.to(torch.float64), heads.to(torch.float64))
            if self.sums is None:
                self.sums = torch.zeros(self.n_layers, *summed.shape, dtype=torch.float64, device=summed.device)
            self.sums[layer] += summed

        return add

    def _register(self) -> list[Any]:
        return [self.base.register_forward_pre_hook(self._inputs, with_kwargs=True), *self._register_projections()]
