"""Gates on the output of each attention head, as forward pre-hooks (``head_mask`` is gone from transformers).

Every self-attention layer ends in an output projection whose input is the heads' contexts concatenated,
``[batch, seq, head * head_dim]``. A pre-hook on that projection multiplies head h's slice by
``values[layer, h]``: 0 switches the head off (Michel et al. 2019's gate xi_h), 1 leaves the output
bit-for-bit unchanged, and a ``values`` tensor with ``requires_grad`` gives ``dL/dxi`` for head importance.

Example
-------
>>> with HeadGates(loaded.model, n_layers, n_heads) as gates:   # doctest: +SKIP
...     gates.values[3, 5] = 0.0
...     out = loaded.model(**inputs)
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

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
    "SelfAttention.o",          # T5
)


def find_output_projections(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention output projection of every layer, in layer order.

    Raises
    ------
    ValueError
        When no known projection is found, or when the model reuses one module across layers (ALBERT).
    """
    for suffix in OUTPUT_PROJECTIONS:
        found = [m for name, m in model.named_modules() if name == suffix or name.endswith("." + suffix)]
        if found:
            if len({id(m) for m in found}) != len(found):
                raise ValueError(f"{type(model).__name__} shares one attention output module across layers; "
                                 "per-layer head gates are not supported for it")
            return found
    raise ValueError(f"{type(model).__name__}: no self-attention output projection found (looked for names "
                     f"ending in {', '.join(OUTPUT_PROJECTIONS)})")


class HeadGates:
    """Multiply each head's output by a gate, for every forward pass while active.

    Parameters
    ----------
    model : torch.nn.Module
        A transformers model (with or without its LM head).
    n_layers, n_heads : int
        The model's layers and heads per layer.

    Attributes
    ----------
    values : Tensor of shape [layer, head]
        The gates, 1 at start; edit in place (``values[l, h] = 0``) or call :meth:`set`.
    """

    def __init__(self, model: torch.nn.Module, n_layers: int, n_heads: int) -> None:
        self.model = model
        self.projections = find_output_projections(model)
        if len(self.projections) != n_layers:
            raise ValueError(f"found {len(self.projections)} attention output projections for {n_layers} layers")
        self.n_heads = n_heads
        param = next(model.parameters())
        self.values = torch.ones(n_layers, n_heads, dtype=param.dtype, device=param.device)
        self._handles: list[Any] = []

    def set(self, heads: list[tuple[int, int]] | None = None, value: float = 0.0) -> HeadGates:
        """Open every gate, then set the gates of ``heads`` (pairs ``(layer, head)``) to ``value``."""
        with torch.no_grad():
            self.values.fill_(1.0)
            for layer, head in heads or []:
                self.values[layer, head] = value
        return self

    def _hook(self, layer: int) -> Callable[[torch.nn.Module, tuple[Any, ...]], tuple[Any, ...] | None]:
        def gate(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            gates = self.values[layer]
            if not gates.requires_grad and bool((gates == 1).all()):
                return None  # all open: leave the forward pass untouched
            x = args[0]
            shape = x.shape
            heads = x.reshape(*shape[:-1], self.n_heads, shape[-1] // self.n_heads)
            gated = (heads * gates.to(x.dtype)[:, None]).reshape(shape)
            return (gated, *args[1:])

        return gate

    def attach(self) -> HeadGates:
        """Register the hooks (idempotent)."""
        if not self._handles:
            self._handles = [proj.register_forward_pre_hook(self._hook(layer))
                             for layer, proj in enumerate(self.projections)]
        return self

    def detach(self) -> None:
        """Remove the hooks; the model is as before."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> HeadGates:
        return self.attach()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.detach()
