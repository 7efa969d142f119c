"""Every head ablated one at a time, replayed from the cached input of its layer (``head_effects``, issue 39).

Ablating a head of layer ``l`` changes nothing below ``l``: the residual stream at the input of layer ``l`` is
the baseline's. So the baseline forward keeps every layer's output (the next layer's input), and the ablations
of layer ``l``'s heads run only layers ``l .. L-1`` and the loss: the model's own forward with layers
``0 .. l-1`` short-circuited to return their cached outputs (the embeddings, masks and position embeddings
are still computed by the model, so sliding windows, rotary positions and token types are its own). On
average a head costs about half a forward plus the LM head and loss.

The LM head and the cross-entropy run on the final hidden states of the tokens that have a label only (the
masked ones of a masked LM), when the model's logits are that head applied to the base model's last hidden
state (checked numerically on the first batch: a final logit soft-capping or scaling fails the check and the
model's own forward computes the logits). A head that is the output embeddings alone (a ``Linear``: Llama,
GPT-2, Gemma) never materialises the logits: blocks of tokens x vocabulary with a running maximum and sum of
exponentials (:func:`~headscope.engine.chunked_loss.linear_cross_entropy`), which makes the LM head and loss of every
ablation cheaper than the model's own; another head (BERT's transform and decoder) runs in chunks of
:data:`HEAD_CHUNK` tokens.

Replay is refused, with the reason, and every ablation is then a full forward
(:func:`~headscope.engine.forwards.ablations.full_ablations`), when the layers cannot be located as one list of
``n_layers`` blocks each holding one attention output projection, when a layer returns more than its hidden
states (T5's position bias), for the contrastive loss, when the cache of every layer's output for one
sequence exceeds the memory budget (a batch whose cache does not fit is replayed in parts), or when a replay
of the last layer with every head open does not give the baseline losses (1e-5, checked on the first batch of
a model).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from headscope.engine.chunked_loss import linear_cross_entropy
from headscope.engine.progress import Tracker
from headscope.model.gates import HeadGates, find_output_projections
from headscope.model.losses import lm_labels, token_losses

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.model.load import LoadedModel

#: Tokens per chunk of the LM head and its cross-entropy (a [chunk, vocabulary] float32 block: 64 MiB at a
#: vocabulary of 64k), so that the logits of a repeated batch are never materialised at once.
HEAD_CHUNK = 256

#: Relative tolerance of the first-batch checks (the LM head, and the replay of the last layer).
CHECK_RTOL = 1e-5


class ReplayRefusedError(ValueError):
    """Replay cannot be done exactly on this model (the message says why)."""


@dataclass
class _ModelPlan:
    """What replay needs of a model, found once."""

    layers: list[torch.nn.Module] | None
    head: torch.nn.Module | None
    reason: str | None
    checked: bool = False


_PLANS: weakref.WeakKeyDictionary[torch.nn.Module, _ModelPlan] = weakref.WeakKeyDictionary()


def residual_layers(model: torch.nn.Module, n_layers: int) -> list[torch.nn.Module]:
    """The model's layers in order: the ``ModuleList`` of ``n_layers`` blocks whose ``i``-th block holds the
    ``i``-th attention output projection (:func:`~headscope.model.gates.find_output_projections`).

    Raises
    ------
    ReplayRefusedError
        When no such list exists (or a block is shared between layers).
    """
    try:
        projections = find_output_projections(model)
    except ValueError as exc:
        raise ReplayRefusedError(str(exc)) from None
    if len(projections) != n_layers:
        raise ReplayRefusedError(f"{len(projections)} attention output projections for {n_layers} layers")
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            blocks = list(module)
            if len({id(b) for b in blocks}) == n_layers and all(
                    any(m is p for m in block.modules()) for block, p in zip(blocks, projections, strict=True)):
                return blocks
    raise ReplayRefusedError(f"no list of {n_layers} layers holding the attention output projections in order")


def _lm_head(loaded: LoadedModel) -> torch.nn.Module | None:
    """The module that turns the base model's last hidden state into the logits (a direct child of the model
    that is not the base model), or None when the model has no LM head of its own."""
    model = loaded.model
    if model is loaded.base:
        return None
    base = loaded.base
    children = [m for _, m in model.named_children() if m is not base]
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for child in children:  # the child holding the output embeddings (lm_head itself, or BERT's cls)
        if out is not None and any(m is out for m in child.modules()):
            return child
    return None


def _plan(loaded: LoadedModel) -> _ModelPlan:
    plan = _PLANS.get(loaded.model)
    if plan is None:
        try:
            layers: list[torch.nn.Module] | None = residual_layers(loaded.model, loaded.info.n_layers)
            reason = None
        except ReplayRefusedError as exc:
            layers, reason = None, str(exc)
        plan = _ModelPlan(layers=layers, head=_lm_head(loaded), reason=reason)
        _PLANS[loaded.model] = plan
    return plan


def _hidden_of(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def _check_output(output: Any, rows: int) -> str | None:
    """Why a layer's output cannot be cached and replayed (None: it can)."""
    hidden = _hidden_of(output) if isinstance(output, tuple | torch.Tensor) and len(output) else None
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3 or hidden.shape[0] != rows:
        return "a layer's output is not its hidden states [batch, seq, hidden]"
    if isinstance(output, tuple) and any(x is not None for x in output[1:]):
        return "a layer returns more than its hidden states (a position bias or a cache the next layer reads)"
    return None


def _tile(output: Any, k: int) -> Any:
    """A layer's output for the batch repeated ``k`` times (rows ``j * batch + b``)."""
    if k == 1:
        return output
    if isinstance(output, torch.Tensor):
        return output.repeat(k, 1, 1)
    return (output[0].repeat(k, 1, 1), *output[1:])


@contextlib.contextmanager
def recording(layers: list[torch.nn.Module]) -> Iterator[list[Any]]:
    """Each layer's output during the forward (in layer order)."""
    kept: list[Any] = [None] * len(layers)

    def keep(index: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            kept[index] = output

        return hook

    handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(layers)]
    try:
        yield kept
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _skipping(layers: list[torch.nn.Module], start: int, output: Any) -> Iterator[None]:
    """Layers ``0 .. start-1`` return ``output`` (the cached output of layer ``start - 1``) without computing:
    only the last of them feeds layer ``start``, the others' outputs are overwritten."""
    def skip(*args: Any, **kwargs: Any) -> Any:
        return output

    for layer in layers[:start]:
        layer.forward = skip  # an instance attribute: nn.Module.__call__ calls it, the hooks still run
    try:
        yield
    finally:
        for layer in layers[:start]:
            del layer.forward


def _tiled_inputs(inputs: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    if k == 1:
        return inputs
    return {name: t.repeat(k, *([1] * (t.dim() - 1))) for name, t in inputs.items()}


@contextlib.contextmanager
def _gates(loaded: LoadedModel, values: np.ndarray, replace: np.ndarray | None) -> Iterator[None]:
    """Per-row gates ``values`` [row, layer, head] closing onto ``replace`` (None: 0)."""
    info = loaded.info
    with HeadGates(loaded.model, info.n_layers, info.n_heads) as gates:
        like = gates.values
        gates.values = torch.as_tensor(values, dtype=like.dtype).to(like.device)
        if replace is not None:
            gates.replacement = torch.as_tensor(replace, dtype=like.dtype).to(like.device)
        yield


def head_losses(loaded: LoadedModel, head: torch.nn.Module | None, inputs: dict[str, torch.Tensor],
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's summed LM loss and its terms (as :func:`~headscope.engine.forwards.losses.sequence_losses`).

    With ``head``: the base model's last hidden state, and the head and cross-entropy only at the tokens with a
    label (:func:`hidden_losses`); without: the model's own logits (:func:`logit_losses`).

    Returns
    -------
    loss : Tensor of shape [rows], float64
    terms : Tensor of shape [rows], int64
    """
    kwargs = _no_cache(loaded)
    if head is None:
        return logit_losses(loaded.model(**inputs, **kwargs).logits, labels, loaded.info.is_causal)
    return hidden_losses(loaded.base(**inputs, **kwargs).last_hidden_state, head, labels, loaded.info.is_causal)


def _no_cache(loaded: LoadedModel) -> dict[str, Any]:
    """A decoder's forward keyword that keeps it from building a KV cache nobody reads."""
    return {"use_cache": False} if loaded.info.is_causal else {}


def logit_losses(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`head_losses` from the model's logits [rows, seq, vocabulary] (next-token labels when ``causal``),
    as :func:`~headscope.engine.forwards.losses.sequence_losses` sums them."""
    per, labels = token_losses(logits.float(), labels, causal)
    return per.double().sum(-1), (labels != -100).sum(-1)


def hidden_losses(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor, causal: bool
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`head_losses` from the base model's last hidden state [rows, seq, hidden]: ``head`` and the
    cross-entropy at the labelled tokens only, in blocks of tokens x vocabulary for a ``Linear`` head
    (:func:`~headscope.engine.chunked_loss.linear_cross_entropy`), else :data:`HEAD_CHUNK` tokens at a time."""
    if causal:
        hidden, labels = hidden[:, :-1], labels[:, 1:]
    where = labels != -100
    rows = torch.nonzero(where)[:, 0]
    picked, targets = hidden[where], labels[where]
    if isinstance(head, torch.nn.Linear):  # the head is the output embeddings: no logits materialised
        per = linear_cross_entropy(picked, head.weight, head.bias, targets)
    else:
        per = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
        for start in range(0, targets.shape[0], HEAD_CHUNK):
            stop = start + HEAD_CHUNK
            logits = head(picked[start:stop]).float()
            per[start:stop] = torch.nn.functional.cross_entropy(logits, targets[start:stop], reduction="none")
    loss = torch.zeros(labels.shape[0], dtype=torch.float64, device=hidden.device)
    loss.index_add_(0, rows, per.double())
    return loss, where.sum(-1)


def _checked_baseline(loaded: LoadedModel, plan: _ModelPlan, inputs: dict[str, torch.Tensor],
                      labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline losses from one forward of the whole model, which also checks that ``plan.head`` applied to
    the base model's last hidden state gives the model's logits (else ``plan.head`` becomes None and the
    losses are the logits')."""
    kept: list[torch.Tensor] = []

    def keep(module: torch.nn.Module, args: Any, output: Any) -> None:
        kept.append(output.last_hidden_state)

    handle = loaded.base.register_forward_hook(keep)
    try:
        logits = loaded.model(**inputs, **_no_cache(loaded)).logits
    finally:
        handle.remove()
    assert plan.head is not None
    mine = plan.head(kept[0]) if len(kept) == 1 else None
    if mine is None or mine.shape != logits.shape or not torch.allclose(
            mine, logits, rtol=CHECK_RTOL, atol=CHECK_RTOL * float(logits.abs().max())):
        plan.head = None
        return logit_losses(logits, labels, loaded.info.is_causal)
    return hidden_losses(kept[0], plan.head, labels, loaded.info.is_causal)


def replay_ablations(loaded: LoadedModel, batch: Batch, seed: int, rows: int, replace: np.ndarray | None,
                     budget_bytes: int, quiet: bool = True, desc: str = "head_effects: ablations of this batch",
                     heads: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """The baseline's and every single-head ablation's per-sequence losses of an LM loss, replayed from the
    cached layer inputs.

    Parameters
    ----------
    batch : Batch
        ``B`` sequences.
    rows : int
        At most this many rows per forward: ``rows // B`` heads of one layer share a forward (per-row gates).
    replace : ndarray of shape (n_layers, n_heads, head_dim), optional
        What a closed head outputs (None: 0).
    budget_bytes : int
        The cache of every layer's output must fit in this: the batch is replayed in parts of as many
        sequences as fit (refused when one does not).
    heads : tuple of int, optional
        Only these heads (``layer * n_heads + head``; the other rows of ``ablated`` NaN); None: every head.

    Returns
    -------
    base : ndarray of shape (B,), float64
    terms : ndarray of shape (B,), int64
    ablated : ndarray of shape (n_layers * n_heads, B), float64
        Row ``layer * n_heads + head``.
    how : dict
        ``mode`` ("replay") and ``lm_head`` ("chunked" or "model").

    Raises
    ------
    ReplayRefusedError
        When replay cannot be done exactly (before any forward of the ablations).
    """
    info = loaded.info
    plan = _plan(loaded)
    if plan.layers is None:
        raise ReplayRefusedError(plan.reason or "the layers were not found")
    if not info.has_lm_head:
        raise ReplayRefusedError("replay computes LM losses only (the contrastive loss runs every ablation in full)")
    layers = plan.layers
    b, n_layers, n_heads = batch.size, info.n_layers, info.n_heads
    param = next(loaded.model.parameters())
    embeddings = loaded.model.get_input_embeddings()
    assert isinstance(embeddings.weight, torch.Tensor)
    hidden = int(embeddings.weight.shape[-1])
    per_row = n_layers * batch.input_ids.shape[1] * hidden * param.element_size()
    if per_row > budget_bytes:
        raise ReplayRefusedError(f"the cache of every layer's output ({per_row / 2**20:.0f} MiB for one sequence) "
                                 f"exceeds the memory budget ({budget_bytes / 2**20:.0f} MiB, --attention-memory)")
    if per_row * b > budget_bytes:  # the batch in parts whose caches fit (each row's loss is its own)
        fit = budget_bytes // per_row
        parts = [replay_ablations(loaded, batch.select(list(range(start, min(b, start + fit)))), seed, rows,
                                  replace, budget_bytes, quiet, desc, heads) for start in range(0, b, fit)]
        how = {**parts[0][3], "parts": len(parts)}
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                np.concatenate([p[2] for p in parts], axis=1), how)
    inputs, labels = lm_labels(loaded, batch, seed)
    with torch.inference_mode():
        with recording(layers) as kept:
            if not plan.checked and plan.head is not None:  # the chunked head gives the model's logits?
                base, terms = _checked_baseline(loaded, plan, inputs, labels)
            else:
                base, terms = head_losses(loaded, plan.head, inputs, labels)
        for output in kept:
            reason = _check_output(output, b)
            if reason is not None:
                plan.layers, plan.reason = None, reason
                raise ReplayRefusedError(reason)
        if not plan.checked and n_layers > 1:  # the last layer alone, every head open, is the baseline?
            with _skipping(layers, n_layers - 1, kept[n_layers - 2]):
                again, _ = head_losses(loaded, plan.head, inputs, labels)
            if not torch.allclose(again, base, rtol=CHECK_RTOL, atol=CHECK_RTOL):
                plan.layers = None
                plan.reason = ("a replay of the last layer from its cached input did not give the baseline loss "
                               "(the model passes more than the hidden states between layers)")
                raise ReplayRefusedError(plan.reason)
        plan.checked = True
        per = max(1, rows // max(b, 1))
        ablated = np.full((n_layers * n_heads, b), np.nan)
        wanted = set(range(n_layers * n_heads)) if heads is None else set(heads)
        with Tracker(desc, "heads", len(wanted), quiet, leave=False, final=False) as tracker:
            for layer in range(n_layers):
                mine = [h for h in range(n_heads) if layer * n_heads + h in wanted]
                for start in range(0, len(mine), per):
                    group = np.asarray(mine[start:start + per])
                    k = len(group)
                    gates = np.ones((k, n_layers, n_heads))
                    gates[np.arange(k), layer, group] = 0.0
                    skip = _skipping(layers, layer, _tile(kept[layer - 1], k)) if layer else contextlib.nullcontext()
                    with skip, _gates(loaded, np.repeat(gates, b, axis=0), replace):
                        loss, _ = head_losses(loaded, plan.head, _tiled_inputs(inputs, k), labels.repeat(k, 1))
                    ablated[layer * n_heads + group] = loss.reshape(k, b).cpu().numpy()
                    tracker.update(k)
    how = {"mode": "replay", "lm_head": "chunked" if plan.head is not None else "model"}
    return base.cpu().numpy(), terms.cpu().numpy().astype(np.int64), ablated, how
