"""The executor: one forward of one batch, run by its kind.

:func:`run_forward` looks the forward's type up in :data:`RUNNERS` and calls the runner, which does what that
kind asks and nothing else; the checks that need the model (a loss it can compute, a route a KV budget works
through) happen here, the ones that need only the forward when it is built (``__post_init__``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from headscope.engine.forwards.ablations import ablations, gated, variant_losses
from headscope.engine.forwards.generation import greedy_with_attention
from headscope.engine.forwards.gradients import attention_gradients, gate_gradient, head_attribution
from headscope.engine.forwards.kv_budget import kv_budget
from headscope.engine.forwards.losses import batch_loss, has_lm_loss, lm_forward, lm_labels, loss_kind, sequence_losses
from headscope.engine.forwards.vocabulary import (
    Ablate,
    AttentionGradients,
    Attribution,
    Forward,
    ForwardOutput,
    GateGradient,
    Generate,
    HeadSums,
    LMLoss,
    Loss,
    Observe,
)
from headscope.model.gates import HeadSums as SumHook

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.model.load import LoadedModel


@dataclass(frozen=True)
class Setting:
    """How the engine runs the forwards of a pass (the same for every forward of it)."""

    seed: int
    """The run's seed (the masked-LM draw depends on it and on each example's index)."""
    on_block: Callable[[Any], None] | None = None
    """:class:`Observe`: receives each :class:`~headscope.engine.capture.LayerAttention`."""
    budget_bytes: int = 0
    """The most memory one block of attention takes (:class:`Observe`; also the layer cache of :class:`Ablate`)."""
    padding_side: Literal["left", "right"] = "right"
    """Padding of an :class:`Observe` forward."""
    quiet: bool = True
    """No progress of the work inside one forward (:class:`Ablate`'s heads)."""


def run_forward(loaded: LoadedModel, batch: Batch, forward: Forward | Generate, seed: int,
                on_block: Callable[[Any], None] | None = None, budget_bytes: int = 0,
                padding_side: Literal["left", "right"] = "right", quiet: bool = True) -> ForwardOutput:
    """Run one :class:`Forward` (or :class:`Generate`) of ``batch`` and return what it asked for.

    ``on_block`` receives each :class:`~headscope.engine.capture.LayerAttention` of an :class:`Observe` forward
    (captured within ``budget_bytes``, as the main pass; also the memory of :class:`Ablate`'s layer cache).
    ``quiet``: no progress of the work inside one forward (:class:`Ablate`'s heads).

    Raises
    ------
    TypeError
        ``forward`` is of no kind the engine runs.
    ValueError
        The model cannot do what the forward asks (no loss, a KV budget off the ``interface`` route, ...).
    """
    runner = RUNNERS.get(type(forward))
    if runner is None:
        raise TypeError(f"the engine runs {', '.join(k.__name__ for k in RUNNERS)}; got {type(forward).__name__}")
    return runner(loaded, batch, forward, Setting(seed, on_block, budget_bytes, padding_side, quiet))


def _observe(loaded: LoadedModel, batch: Batch, forward: Observe, how: Setting) -> ForwardOutput:
    from headscope.engine.capture import capture

    if how.on_block is None:
        raise ValueError("an Observe forward needs on_block (where its attention blocks go)")
    with torch.inference_mode():
        capture(loaded, batch, how.on_block, how.budget_bytes, padding_side=how.padding_side)
    return ForwardOutput()


def _loss(loaded: LoadedModel, batch: Batch, forward: Loss, how: Setting) -> ForwardOutput:
    budget = contextlib.nullcontext() if forward.kv_budget is None else kv_budget(loaded, forward.kv_budget)
    with budget:
        kind = loss_kind(loaded)
        if forward.gates is not None and np.ndim(forward.gates) == 3:
            return variant_losses(loaded, batch, kind, how.seed, forward.gates, forward.replace)
        with gated(loaded, forward.gates, forward.replace), torch.inference_mode():
            if forward.per_sequence:
                losses, terms = sequence_losses(loaded, batch, kind, how.seed)
                return ForwardOutput(loss=float(losses.sum()), terms=int(terms.sum()),
                                     sequence_loss=losses, sequence_terms=terms)
            summed, n = batch_loss(loaded, batch, kind, how.seed)
            return ForwardOutput(loss=float(summed), terms=n)


def _lm_loss(loaded: LoadedModel, batch: Batch, forward: LMLoss, how: Setting) -> ForwardOutput:
    with gated(loaded, forward.gates), torch.inference_mode():
        labels = None
        inputs = batch.model_inputs()
        if has_lm_loss(loaded):
            inputs, labels = lm_labels(loaded, batch, how.seed)
        last, loss, n = lm_forward(loaded, inputs, labels, loaded.info.is_causal)
    return ForwardOutput(loss=0.0 if loss is None else float(loss), terms=n, hidden=last)


def _head_sums(loaded: LoadedModel, batch: Batch, forward: HeadSums, how: Setting) -> ForwardOutput:
    info = loaded.info
    with SumHook(loaded.model, info.n_layers, info.n_heads) as sums, torch.inference_mode():
        if forward.loss == "objective":
            summed, n = batch_loss(loaded, batch, loss_kind(loaded), how.seed)
            out = ForwardOutput(loss=float(summed), terms=n)
        else:
            lm_forward(loaded, batch.model_inputs(), None, info.is_causal)
            out = ForwardOutput()
    out.head_sums = None if sums.sums is None else sums.sums.cpu().numpy()
    out.head_tokens = sums.tokens
    return out


def _gate_gradient(loaded: LoadedModel, batch: Batch, forward: GateGradient, how: Setting) -> ForwardOutput:
    values = None if forward.gates is None else torch.as_tensor(forward.gates)
    grad, loss, n = gate_gradient(loaded, batch, loss_kind(loaded), how.seed, values)
    return ForwardOutput(loss=loss, terms=n, gate_grad=grad)


def _attribution(loaded: LoadedModel, batch: Batch, forward: Attribution, how: Setting) -> ForwardOutput:
    estimate, loss, n, dropped = head_attribution(loaded, batch, loss_kind(loaded), how.seed, forward.replace,
                                                  forward.grad_drop)
    return ForwardOutput(loss=loss, terms=n, atp=estimate, atp_dropped=dropped)


def _ablate(loaded: LoadedModel, batch: Batch, forward: Ablate, how: Setting) -> ForwardOutput:
    return ablations(loaded, batch, loss_kind(loaded), how.seed, forward, how.budget_bytes, how.quiet)


def _attention_gradients(loaded: LoadedModel, batch: Batch, forward: AttentionGradients, how: Setting
                         ) -> ForwardOutput:
    seen, loss, n = attention_gradients(loaded, batch, loss_kind(loaded), how.seed)
    return ForwardOutput(loss=loss, terms=n, attention_gradients=seen)


def _generate(loaded: LoadedModel, batch: Batch, forward: Generate, how: Setting) -> ForwardOutput:
    out = ForwardOutput()
    for row in range(batch.size):
        ids = batch.input_ids[row, :int(batch.lengths[row])]
        generated, argmax = greedy_with_attention(loaded, ids, forward.new_tokens, forward.stop_at_eos)
        out.generated.append(generated)
        out.argmax.append(argmax)
    return out


#: The runner of each kind of forward.
RUNNERS: dict[type, Callable[[LoadedModel, Batch, Any, Setting], ForwardOutput]] = {
    Observe: _observe,
    Loss: _loss,
    LMLoss: _lm_loss,
    HeadSums: _head_sums,
    GateGradient: _gate_gradient,
    Attribution: _attribution,
    Ablate: _ablate,
    AttentionGradients: _attention_gradients,
    Generate: _generate,
}
