"""Gradients for interventions: of head gates (importance, pruning), attribution patching (AtP, AtP*'s
GradDrop) and of the attention weights (sep_gradient).

Each runs its own forward and backward with gradients on (the engine's passes run under
``torch.inference_mode``, whose tensors :func:`~headscope.engine.forwards.losses.plain_batch` copies out).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from headscope.engine.capture import eager_attention
from headscope.engine.forwards.losses import (
    CONTRASTIVE_TEMPERATURE,
    LM_LOSSES,
    Seen,
    batch_loss,
    contrastive_forward,
    contrastive_loss,
    lm_labels,
    plain_batch,
    token_losses,
)
from headscope.model.gates import HeadGates

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.model.load import LoadedModel

#: Per encoded input: the per-layer attention weights [batch, head, query, key], their gradients ``dL/dA``, the
#: ids and the real-token mask [batch, seq].
AttentionGradient = tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]


def gate_gradient(loaded: LoadedModel, batch: Batch, kind: str, seed: int, gate_values: torch.Tensor | None = None
                  ) -> tuple[np.ndarray, float, int]:
    """``dL/dxi`` of the batch's mean loss at the gates ``gate_values`` (all open by default).

    Returns
    -------
    grad : ndarray of shape (n_layers, n_heads)
    loss_sum : float
        The summed loss.
    terms : int
        Tokens (LM losses) or pairs (contrastive) in the sum.
    """
    info = loaded.info
    with torch.inference_mode(False), torch.enable_grad():
        batch = plain_batch(batch)
        with HeadGates(loaded.model, info.n_layers, info.n_heads) as gates:
            if gate_values is not None:
                gates.values = gate_values.detach().clone().to(gates.values)
            gates.values.requires_grad_(True)
            loss, n = batch_loss(loaded, batch, kind, seed)
            (loss / max(n, 1)).backward()
            assert gates.values.grad is not None  # the gates require grad and are in the graph
            grad = gates.values.grad.detach().double().cpu().numpy()
    return grad, float(loss.detach()), n


def head_attribution(loaded: LoadedModel, batch: Batch, kind: str, seed: int, replace: np.ndarray | None = None,
                     grad_drop: bool = False) -> tuple[np.ndarray, float, int, np.ndarray | None]:
    """Attribution patching (Nanda 2023; Kramar et al. 2024, AtP): per sequence and head, the first-order
    estimate of the change of the sequence's summed loss when the head's output ``x`` is replaced by ``r``
    (``replace``, 0 when None) at every token: ``sum over tokens (r - x) . dL/dx``, from one forward and one
    backward of the batch's summed loss.

    Computed as ``-dL/dxi`` at ``xi = 1`` of per-row gates interpolating ``xi * x + (1 - xi) * r``
    (:class:`~headscope.model.gates.HeadGates`), which is that sum. For the contrastive loss a sequence's
    row also moves the other pairs' terms (its embeddings are their negatives); the sum over rows is the
    estimate for the batch.

    ``grad_drop`` (AtP*'s GradDrop, Kramar et al. 2024, section 3.1.2): the same estimate once per layer ``l``
    with the gradient through layer ``l``'s contribution to the residual stream dropped (only the skip
    connection carries it down): for the heads of layers below ``l`` the backward of layers ``0 .. l-1``
    seeded at layer ``l``'s input with the gradient at its output; for those of layer ``l``, 0; above, AtP's.
    One forward, one backward, and the backwards of ``L (L - 1) / 2`` layers.

    Returns
    -------
    estimate : ndarray of shape (batch, n_layers, n_heads), float64
    loss_sum : float
        The summed loss.
    terms : int
    dropped : ndarray of shape (batch, n_layers, n_layers, n_heads), float64, or None
        With ``grad_drop``: ``dropped[:, l]``, the estimate with layer ``l``'s gradient dropped.

    Raises
    ------
    ValueError
        ``grad_drop`` on a model whose layers are not found (:func:`~headscope.engine.replay.residual_layers`).
    """
    from headscope.engine.replay import recording, residual_layers

    info = loaded.info
    if grad_drop and kind not in LM_LOSSES:
        raise ValueError("GradDrop is computed for LM losses (the contrastive loss runs the base model twice)")
    layers = residual_layers(loaded.model, info.n_layers) if grad_drop else []
    with torch.inference_mode(False), torch.enable_grad():
        batch = plain_batch(batch)
        with HeadGates(loaded.model, info.n_layers, info.n_heads) as gates, recording(layers) as kept:
            like = gates.values
            gates.values = torch.ones(batch.size, info.n_layers, info.n_heads, dtype=like.dtype,
                                      device=like.device, requires_grad=True)
            if replace is not None:
                gates.replacement = torch.as_tensor(replace, dtype=like.dtype).to(like.device)
            loss, n = batch_loss(loaded, batch, kind, seed)
            if not grad_drop:
                loss.backward()
                assert gates.values.grad is not None  # the gates require grad and are in the graph
                return -gates.values.grad.detach().double().cpu().numpy(), float(loss.detach()), n, None
            outputs = [out if isinstance(out, torch.Tensor) else out[0] for out in kept]
            grads = torch.autograd.grad(loss, [gates.values, *outputs], retain_graph=True)
            estimate = -grads[0].detach().double()
            dropped = estimate[:, None].repeat(1, info.n_layers, 1, 1)  # [row, dropped layer, layer, head]
            for layer in range(info.n_layers):
                dropped[:, layer, layer] = 0.0  # its heads' contribution carries no gradient
                if layer == 0:
                    continue
                below = torch.autograd.grad(outputs[layer - 1], gates.values, grad_outputs=grads[1 + layer],
                                            retain_graph=layer < info.n_layers - 1)[0]
                dropped[:, layer, :layer] = -below[:, :layer].detach().double()
    return estimate.cpu().numpy(), float(loss.detach()), n, dropped.cpu().numpy()


@contextlib.contextmanager
def differentiable_inputs(loaded: LoadedModel) -> Iterator[None]:
    """Make the input embeddings require grad (the loaded model is frozen), so the attention is in the graph."""
    def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        return output.requires_grad_(True) if not output.requires_grad else output

    handle = loaded.model.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def forward_with_attention(loaded: LoadedModel, batch: Batch, kind: str, seed: int
                           ) -> tuple[torch.Tensor, float, int, list[Seen]]:
    """The objective to backpropagate, the summed loss, its terms, and (attentions, ids, mask) per forward.

    ``attentions`` holds one [batch, head, query, key] tensor per layer, each with ``retain_grad`` on; ``ids``
    and ``mask`` ([batch, seq]) are the inputs those attentions were computed on. The objective is the mean loss
    per pair (contrastive) or the sum over sequences of each one's mean token loss (LM losses).
    """
    if kind == "contrastive_loss":
        left, right, seen = contrastive_forward(loaded, batch, attentions=True)
        loss = contrastive_loss(left, right, CONTRASTIVE_TEMPERATURE)
        objective = loss / max(batch.size, 1)
        terms = batch.size
    else:
        inputs, labels = lm_labels(loaded, batch, seed)
        out = loaded.model(**inputs, output_attentions=True)
        logits = out.logits.float() if out.logits.dtype != torch.float64 else out.logits
        tok, labels = token_losses(logits, labels, loaded.info.is_causal)
        counts = (labels != -100).sum(1)
        loss = tok.sum()
        objective = (tok.sum(1) / counts.clamp_min(1).to(tok.dtype)).sum()
        terms = int(counts.sum())
        seen = [(tuple(out.attentions), batch.input_ids, batch.mask.bool())]
    for atts, _, _ in seen:
        if not atts or any(a is None for a in atts):
            raise RuntimeError(f"{loaded.info.name}: the model returned no attention weights with "
                               "output_attentions=True (eager attention)")
        for a in atts:
            a.retain_grad()
    return objective, float(loss.detach()), terms, seen


def attention_gradients(loaded: LoadedModel, batch: Batch, kind: str, seed: int
                        ) -> tuple[list[AttentionGradient], float, int]:
    """Eager attention with ``output_attentions``, the objective of :func:`forward_with_attention`
    backpropagated: per encoded input, (weights, ``dL/dA``, ids, mask); the summed loss; its terms."""
    with torch.inference_mode(False), torch.enable_grad(), eager_attention(loaded), differentiable_inputs(loaded):
        batch = plain_batch(batch)
        objective, loss, terms, seen = forward_with_attention(loaded, batch, kind, seed)
        objective.backward()
        out = []
        for atts, ids, mask in seen:
            if any(a.grad is None for a in atts):
                raise RuntimeError("the attention weights got no gradient (is the loss connected to them?)")
            out.append((tuple(a.detach() for a in atts), tuple(a.grad.detach() for a in atts  # type: ignore[union-attr]
                                                                ), ids, mask))
    return out, loss, terms

