"""What an intervention asks of the model, and the code that does it: the engine's side of the passes.

An analysis that needs more than the attention maps of the main pass (gates on head outputs, gradients,
inputs of its own, generation) is an *intervention*: it describes each pass it needs as a :class:`Pass`
(which examples, and for each batch which :class:`Forward` runs), and the engine runs them
(:mod:`headscope.runner.intervene`), with progress, on the model's device, handing each forward's
:class:`ForwardOutput` (losses, hidden states, gate gradients, attention blocks) back to the analysis. The
analysis never holds the model, the corpus or the manifest; what a pass needs of them is here.

Losses (:func:`loss_kind`): ``mlm_loss`` (an encoder with an LM head, a seeded 15% of the non-special tokens
masked), ``lm_loss`` (a decoder LM, next-token) and ``contrastive_loss`` (an encoder without LM head:
in-batch InfoNCE between the two halves of each example, each encoded as ``[CLS] half [SEP]``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from headscope.engine.progress import Tracker
from headscope.model.gates import HeadGates, HeadSums
from headscope.model.losses import (  # noqa: F401 (MASK_RATE, CONTRASTIVE_TEMPERATURE: what analyses report)
    CONTRASTIVE_TEMPERATURE,
    MASK_RATE,
    contrastive_loss,
    lm_forward,
    lm_labels,
    mean_pool,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from headscope.engine.batch import Batch
    from headscope.model.load import LoadedModel


# --- what an intervention declares ----------------------------------------------------------------------------

@dataclass(frozen=True)
class CorpusRows:
    """Examples of the corpus, by their position in the run's example stream (a seeded sample, drawn by the
    analysis from :attr:`PassPlan.examples`).

    The engine streams the corpus once more and batches the examples drawn in the run's batch order; it keeps
    the batches of the last sample it streamed, so that passes over one sample (pruning's steps) read the
    corpus once.
    """

    indices: frozenset[int]
    """Positions in the corpus's example stream (0-based, as counted by the main pass)."""
    only: frozenset[int] | None = None
    """Of each batch, only these examples (by position); None: all. Two passes over one sample that split it
    (pruning's held-out and estimation halves) see the same batches, cut in two."""


@dataclass(frozen=True)
class TokenRows:
    """Inputs an analysis builds itself, as token ids (decoder_heads' induction probe, retrieval's prompts)."""

    sequences: tuple[np.ndarray, ...]
    """int64 ids of each sequence, special tokens included."""
    has_bos: bool = False
    """Whether each sequence starts with the BOS token (marked as the sequence's [CLS]-like first token)."""
    kind: str = "induction_probe"
    """The examples' ``kind``."""


@dataclass(frozen=True)
class Forward:
    """One forward (and backward, when a gradient is asked) of each batch of a pass."""

    tag: Hashable = None
    """The analysis's name for this forward (given back with its output)."""
    gates: np.ndarray | None = None
    """Gate values of shape (n_layers, n_heads) multiplying each head's output (0 switches a head off,
    :class:`~headscope.model.gates.HeadGates`); None: every head open. Of shape (variants, n_layers, n_heads)
    (``loss="objective"`` with ``per_sequence`` only): the batch is run ``variants`` times in one forward, copy
    ``j`` with gates ``gates[j]`` (per-row gates; the contrastive loss's negatives stay within a copy), and the
    per-sequence losses come back of shape (variants, batch)."""
    replace: np.ndarray | None = None
    """Of shape (n_layers, n_heads, head_dim): what a closed head outputs instead of 0 (a gate ``xi``
    interpolates, ``xi * x + (1 - xi) * replace``; mean ablation gives each head's mean output); also the
    replacement of ``atp``. None: 0."""
    head_sums: bool = False
    """Each head's output (its slice of the attention output projection's input) summed over the real tokens
    the model read, and their count (:class:`~headscope.model.gates.HeadSums`): the sums of a mean."""
    atp: bool = False
    """Attribution patching (``loss="objective"``, every gate open): per sequence, the first-order estimate of
    the change of its summed loss when each head's output is replaced by ``replace`` (0 when None),
    ``sum over its tokens (replace - x) . dL/dx`` (:func:`head_attribution`)."""
    grad_drop: bool = False
    """With ``atp``: AtP*'s GradDrop as well (:attr:`ForwardOutput.atp_dropped`, :func:`head_attribution`)."""
    ablate: bool = False
    """Every head ablated one at a time (``loss="objective"``, ``per_sequence``; closed onto ``replace``): the
    baseline's per-sequence losses and each head's (:attr:`ForwardOutput.ablated`), replayed from the cached
    input of the head's layer where that is exact (:mod:`headscope.engine.replay`), else by full forwards."""
    rows: int = 0
    """With ``ablate``: at most this many rows per forward (the batch repeated ``rows // batch`` times, one closed
    head per copy); 0: the batch size."""
    heads: tuple[int, ...] | None = None
    """With ``ablate``: only these heads (``layer * n_heads + head``), the others' rows of ``ablated`` NaN; None:
    every head."""
    replay: bool = True
    """With ``ablate``: replay from the cached layer inputs where possible (False: full forwards, the
    reference)."""
    loss: Literal["none", "lm", "objective"] = "none"
    """``lm``: the LM loss when the model has one (masked-LM or next-token), else only the final hidden
    states; ``objective``: the run's loss (:func:`loss_kind`, contrastive for an encoder without LM head)."""
    per_sequence: bool = False
    """With ``loss="objective"``: each sequence's summed loss and terms as well (:func:`sequence_losses`)."""
    hidden: bool = False
    """The final hidden states [batch, seq, hidden] (``loss="lm"`` or ``"none"``)."""
    gate_grad: bool = False
    """``dL/dxi`` of the batch's mean ``objective`` loss at ``gates`` (:func:`gate_gradient`)."""
    attention: Literal["none", "weights", "gradients"] = "none"
    """``weights``: each layer's attention, block by block, to the analysis's ``update_pass_attention``
    (the capture of the main pass); ``gradients``: the attention weights and ``dL/dA`` of the ``objective``
    loss, eager attention (:func:`attention_gradients`)."""
    kv_budget: np.ndarray | None = None
    """Per-head key windows of shape (n_layers, n_heads), non-negative integers: a head with ``W > 0`` attends
    only to the first position (the sink) and its last ``W`` keys, ``0`` to every key
    (:func:`~headscope.engine.capture.kv_budget`, span's causal check); None: no budget. Needs the
    ``interface`` capture route and right padding; not with ``attention="gradients"`` (eager attention)."""


@dataclass(frozen=True)
class Generate:
    """Greedy decoding of each sequence of the pass, keeping each step's arg-max key per head
    (:func:`greedy_with_attention`)."""

    tag: Hashable = None
    new_tokens: int = 32
    """At most this many tokens (decoding stops at EOS, or at a line break after some text)."""
    stop_at_eos: bool = True
    """Stop at the end-of-sequence token; False decodes past it, as Wu et al.'s ``decode`` loop does (their
    only stop is a line break)."""


@dataclass
class ForwardOutput:
    """What one :class:`Forward` (or :class:`Generate`) of one batch gave."""

    loss: float = 0.0
    """The summed loss (0 without one)."""
    terms: int = 0
    """Tokens (LM losses) or pairs (contrastive) in ``loss``."""
    has_loss: bool = False
    """Whether a loss was computed (``loss="lm"`` on a model without LM head computes none)."""
    sequence_loss: np.ndarray | None = None
    """float64 of shape (batch,): each sequence's summed loss (``per_sequence``)."""
    sequence_terms: np.ndarray | None = None
    """int64 of shape (batch,): its terms."""
    hidden: torch.Tensor | None = None
    """Final hidden states [batch, seq, hidden] (``hidden``)."""
    gate_grad: np.ndarray | None = None
    """float64 of shape (n_layers, n_heads) (``gate_grad``)."""
    head_sums: np.ndarray | None = None
    """float64 of shape (n_layers, n_heads, head_dim) (``head_sums``): each head's output summed over
    ``head_tokens`` real tokens."""
    head_tokens: int = 0
    """The real tokens in ``head_sums`` (each input the model read counted once)."""
    atp: np.ndarray | None = None
    """float64 of shape (batch, n_layers, n_heads) (``atp``): each sequence's estimated loss change per head."""
    atp_dropped: np.ndarray | None = None
    """float64 of shape (batch, n_layers, n_layers, n_heads) (``grad_drop``): ``[:, l]`` the AtP estimate with the
    gradient through layer ``l``'s residual contribution dropped."""
    ablated: np.ndarray | None = None
    """float64 of shape (n_layers * n_heads, batch) (``ablate``): each sequence's summed loss with head
    ``layer * n_heads + head`` ablated (``sequence_loss``: the baseline's)."""
    replay: dict[str, Any] | None = None
    """``ablate``: how the ablations ran (``mode`` replay or full forwards, and why not replay)."""
    attention_gradients: list[tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], torch.Tensor,
                                    torch.Tensor]] = field(default_factory=list)
    """``attention="gradients"``: per encoded input (two for the contrastive loss), the per-layer attention
    weights [batch, head, query, key], their gradients, the ids and the real-token mask [batch, seq]."""
    generated: list[torch.Tensor] = field(default_factory=list)
    """:class:`Generate`: per sequence, the int64 generated tokens [step]."""
    argmax: list[torch.Tensor] = field(default_factory=list)
    """:class:`Generate`: per sequence, int64 [step, layer, head], the key each head attended to most."""


@dataclass
class Pass:
    """One pass of an intervention over some examples."""

    name: str
    """What the progress line says (``pruning: importance, step 3``)."""
    rows: CorpusRows | TokenRows
    """The examples."""
    forwards: Sequence[Forward | Generate] | Callable[[Batch], Sequence[Forward | Generate]]
    """The forwards of each batch, in order (or a function of the batch giving them)."""
    unit: str = "sequences"
    """What the progress counts."""
    prepare: Callable[[Batch], Batch] | None = None
    """A change of each batch before its forwards (sep_gradient's EOS at the start of each window)."""
    progress: bool = True
    """Show this pass's progress (off when the analysis tracks a series of passes itself)."""


# --- what the engine does for them ---------------------------------------------------------------------------

@contextlib.contextmanager
def gated(loaded: LoadedModel, values: np.ndarray | None, replace: np.ndarray | None = None
          ) -> Iterator[HeadGates | None]:
    """Gates at ``values`` (shape (n_layers, n_heads), or (rows, n_layers, n_heads) per row) closing onto
    ``replace`` (shape (n_layers, n_heads, head_dim); None: 0) for the duration; nothing attached when
    ``values`` is None."""
    if values is None:
        yield None
        return
    info = loaded.info
    with HeadGates(loaded.model, info.n_layers, info.n_heads) as gates:
        like = gates.values
        if np.ndim(values) == 3:
            gates.values = torch.as_tensor(values, dtype=like.dtype).to(like.device)
        else:
            gates.values.copy_(torch.as_tensor(values, dtype=like.dtype))
        if replace is not None:
            gates.replacement = torch.as_tensor(replace, dtype=like.dtype).to(like.device)
        yield gates


#: The losses of a model's own LM head (:func:`loss_kind`'s others: ``contrastive_loss``).
LM_LOSSES = ("lm_loss", "mlm_loss")


def has_lm_loss(loaded: LoadedModel) -> bool:
    """Whether ``loss="lm"`` computes a loss: :func:`loss_kind` is the LM head's (an LM head, and a mask token
    unless the model is causal)."""
    try:
        return loss_kind(loaded) in LM_LOSSES
    except ValueError:
        return False


def run_forward(loaded: LoadedModel, batch: Batch, forward: Forward | Generate, seed: int,
                on_block: Callable[[Any], None] | None = None, budget_bytes: int = 0,
                padding_side: Literal["left", "right"] = "right", quiet: bool = True) -> ForwardOutput:
    """Run one :class:`Forward` (or :class:`Generate`) of ``batch`` and return what it asked for.

    ``on_block`` receives each :class:`~headscope.engine.capture.LayerAttention` of a forward with
    ``attention="weights"`` (captured within ``budget_bytes``, as the main pass; also the memory of the layer
    cache of ``ablate``). ``quiet``: no progress of the work inside one forward (``ablate``'s heads).
    """
    if isinstance(forward, Generate):
        out = ForwardOutput()
        for row in range(batch.size):
            ids = batch.input_ids[row, :int(batch.lengths[row])]
            generated, argmax = greedy_with_attention(loaded, ids, forward.new_tokens, forward.stop_at_eos)
            out.generated.append(generated)
            out.argmax.append(argmax)
        return out
    if forward.head_sums:
        info = loaded.info
        with HeadSums(loaded.model, info.n_layers, info.n_heads) as sums:
            out = run_forward(loaded, batch, dataclasses.replace(forward, head_sums=False), seed, on_block,
                              budget_bytes, padding_side)
        out.head_sums = None if sums.sums is None else sums.sums.cpu().numpy()
        out.head_tokens = sums.tokens
        return out
    if forward.kv_budget is not None:
        from headscope.engine.capture import kv_budget

        if forward.attention == "gradients":
            raise ValueError("a KV budget works through headscope's attention function, not eager attention "
                             "(attention='gradients')")
        with kv_budget(loaded, forward.kv_budget):
            return run_forward(loaded, batch, dataclasses.replace(forward, kv_budget=None), seed, on_block,
                               budget_bytes, padding_side)
    kind = loss_kind(loaded) if forward.loss == "objective" or forward.gate_grad or forward.atp \
        or forward.attention == "gradients" else None
    if forward.ablate:
        assert kind is not None
        if forward.loss != "objective" or not forward.per_sequence or forward.gates is not None or forward.atp:
            raise ValueError("a forward with ablate takes loss='objective' with per_sequence, and no gates or atp")
        return ablations(loaded, batch, kind, seed, forward, budget_bytes, quiet)
    if forward.atp:
        assert kind is not None
        if forward.gates is not None or forward.loss != "objective":
            raise ValueError("a forward with atp takes loss='objective' and no gates (every head open)")
        estimate, loss, n, dropped = head_attribution(loaded, batch, kind, seed, forward.replace, forward.grad_drop)
        return ForwardOutput(loss=loss, terms=n, has_loss=True, atp=estimate, atp_dropped=dropped)
    if forward.gates is not None and np.ndim(forward.gates) == 3:
        assert kind is not None
        if forward.loss != "objective" or not forward.per_sequence or forward.gate_grad or forward.hidden \
                or forward.attention != "none":
            raise ValueError("gates of shape (variants, n_layers, n_heads) take loss='objective' with per_sequence "
                             "and nothing else")
        return variant_losses(loaded, batch, kind, seed, forward.gates, forward.replace)
    gate_values = None if forward.gates is None else torch.as_tensor(forward.gates)
    if forward.gate_grad:
        assert kind is not None
        if forward.replace is not None:
            raise ValueError("gate_grad takes no replace (atp is the gradient towards a replacement)")
        grad, loss, n = gate_gradient(loaded, batch, kind, seed, gate_values)
        return ForwardOutput(loss=loss, terms=n, has_loss=True, gate_grad=grad)
    if forward.attention == "gradients":
        assert kind is not None
        with gated(loaded, forward.gates, forward.replace):
            seen, loss, n = attention_gradients(loaded, batch, kind, seed)
        return ForwardOutput(loss=loss, terms=n, has_loss=True, attention_gradients=seen)
    with gated(loaded, forward.gates, forward.replace), torch.inference_mode():
        if forward.attention == "weights":
            from headscope.engine.capture import capture

            if on_block is None:
                raise ValueError("a forward with attention='weights' needs on_block")
            capture(loaded, batch, on_block, budget_bytes, padding_side=padding_side)
            return ForwardOutput()
        if forward.loss == "objective":
            assert kind is not None
            if forward.per_sequence:
                losses, terms = sequence_losses(loaded, batch, kind, seed)
                return ForwardOutput(loss=float(losses.sum()), terms=int(terms.sum()), has_loss=True,
                                     sequence_loss=losses, sequence_terms=terms)
            summed, n = batch_loss(loaded, batch, kind, seed)
            return ForwardOutput(loss=float(summed), terms=n, has_loss=True)
        labels = None
        inputs = batch.model_inputs()
        if forward.loss == "lm" and has_lm_loss(loaded):
            inputs, labels = lm_labels(loaded, batch, seed)
        last, loss_t, n = lm_forward(loaded, inputs, labels, loaded.info.is_causal)
        return ForwardOutput(loss=0.0 if loss_t is None else float(loss_t), terms=n, has_loss=loss_t is not None,
                             hidden=last if forward.hidden else None)


def attention_gradients(loaded: LoadedModel, batch: Batch, kind: str, seed: int
                        ) -> tuple[list[tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], torch.Tensor,
                                              torch.Tensor]], float, int]:
    """Eager attention with ``output_attentions``, the objective of :func:`forward_with_attention`
    backpropagated: per encoded input, (weights, ``dL/dA``, ids, mask); the summed loss; its terms."""
    from headscope.engine.capture import eager_attention

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



# --- losses, gradients and generation (moved from the analyses that used to run them) --------------------

def loss_kind(loaded: LoadedModel) -> str:
    """``mlm_loss``, ``lm_loss`` or ``contrastive_loss`` for this model.

    Raises
    ------
    ValueError
        When no loss can be computed (a masked LM whose tokenizer has no mask token, or a decoder without LM
        head), naming what is missing.
    """
    info = loaded.info
    if info.has_lm_head and info.is_causal:
        return "lm_loss"
    if info.has_lm_head:
        if loaded.tokenizer.mask_token_id is None:
            raise ValueError(f"{info.name}: the masked-LM loss needs a mask token and the tokenizer has none")
        return "mlm_loss"
    if info.is_causal:
        raise ValueError(f"{info.name}: a decoder without an LM head has no loss for head importance")
    cls_id, sep_id, _ = frame_ids(loaded.tokenizer)
    if cls_id is None or sep_id is None:
        raise ValueError(f"{info.name}: no LM head, and the contrastive loss needs CLS/BOS and SEP/EOS tokens to "
                         "encode each half on its own")
    return "contrastive_loss"


def frame_ids(tok: PreTrainedTokenizerFast) -> tuple[int | None, int | None, int]:
    """The ids that open (CLS, else BOS) and close (SEP, else EOS) a sequence, and the pad id (0 if none)."""
    first = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
    last = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
    return first, last, int(tok.pad_token_id) if tok.pad_token_id is not None else 0


def contrastive_ids(tok: PreTrainedTokenizerFast) -> tuple[int, int, int]:
    """:func:`frame_ids` for the contrastive loss, which needs both (:func:`loss_kind` checks that first)."""
    first, last, pad = frame_ids(tok)
    if first is None or last is None:
        raise ValueError("the contrastive loss needs CLS/BOS and SEP/EOS tokens to encode each half on its own")
    return first, last, pad


def plain_batch(batch: Batch) -> Batch:
    """A copy of ``batch`` whose tensors are ordinary ones (the runner's pass builds inference tensors)."""
    changes = {f.name: getattr(batch, f.name).clone() for f in dataclasses.fields(batch)
               if isinstance(getattr(batch, f.name), torch.Tensor)}
    return dataclasses.replace(batch, **changes)


def split_halves(batch: Batch, cls_id: int, sep_id: int, pad_id: int
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Two batches of inputs, ``[CLS] half [SEP]``, for the two halves of each example's non-special pieces.

    A half is segment A / segment B when the example has both, else the first / second half of the pieces
    (the first gets the extra piece).
    """
    content = (batch.mask & ~batch.is_cls & ~batch.is_sep)
    halves: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
    for row in range(batch.size):
        where = torch.nonzero(content[row]).flatten()
        seg = batch.segment[row, where]
        if bool((seg == 0).any()) and bool((seg == 1).any()):
            parts = (where[seg == 0], where[seg == 1])
        else:
            cut = (where.numel() + 1) // 2
            parts = (where[:cut], where[cut:])
        for k in (0, 1):
            ids = batch.input_ids[row, parts[k]]
            halves[k].append(torch.cat([ids.new_tensor([cls_id]), ids, ids.new_tensor([sep_id])]))
    out = []
    for seqs in halves:
        n = max(s.numel() for s in seqs)
        ids = torch.full((len(seqs), n), pad_id, dtype=torch.int64, device=batch.input_ids.device)
        mask = torch.zeros_like(ids)
        for r, s in enumerate(seqs):
            ids[r, :s.numel()] = s
            mask[r, :s.numel()] = 1
        inputs = {"input_ids": ids, "attention_mask": mask}
        if batch.token_type_ids is not None:
            inputs["token_type_ids"] = torch.zeros_like(ids)
        out.append(inputs)
    return out[0], out[1]


def batch_loss(loaded: LoadedModel, batch: Batch, kind: str, seed: int) -> tuple[torch.Tensor, int]:
    """The summed loss of ``batch`` (a 0-d tensor in the graph) and how many terms it sums."""
    if kind == "contrastive_loss":
        cls_id, sep_id, pad_id = contrastive_ids(loaded.tokenizer)
        a, b = split_halves(batch, cls_id, sep_id, pad_id)
        pooled = [mean_pool(loaded.base(**x).last_hidden_state, x["attention_mask"]) for x in (a, b)]
        return contrastive_loss(pooled[0], pooled[1], CONTRASTIVE_TEMPERATURE), batch.size
    inputs, labels = lm_labels(loaded, batch, seed)
    _, loss, n = lm_forward(loaded, inputs, labels, loaded.info.is_causal)
    assert loss is not None
    return loss, n


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


def sequence_losses(loaded: LoadedModel, batch: Batch, kind: str, seed: int, variants: int = 1
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Each sequence's summed loss and its number of terms, as :func:`batch_loss` sums them over the batch.

    For the contrastive loss a sequence's term is its pair's InfoNCE against the other pairs of its batch
    (one term); for LM losses, its masked or next tokens. ``variants``: the batch is that many copies of one
    batch, one after the other (:func:`variant_losses`), and a pair's negatives are those of its own copy.

    Returns
    -------
    loss : ndarray of shape (batch,), float64
    terms : ndarray of shape (batch,), int64
    """
    F = torch.nn.functional
    if kind == "contrastive_loss":
        cls_id, sep_id, pad_id = contrastive_ids(loaded.tokenizer)
        a, b = split_halves(batch, cls_id, sep_id, pad_id)
        pooled = [mean_pool(loaded.base(**x).last_hidden_state, x["attention_mask"]) for x in (a, b)]
        if variants > 1:  # [copy, pair, hidden]: each copy's pairs against its own
            left, right = (F.normalize(p, dim=-1).reshape(variants, -1, p.shape[-1]) for p in pooled)
            sim = (left @ right.transpose(1, 2) / CONTRASTIVE_TEMPERATURE).reshape(-1, right.shape[1])
            target = torch.arange(right.shape[1], device=sim.device).repeat(variants)
        else:
            sim = F.normalize(pooled[0], dim=-1) @ F.normalize(pooled[1], dim=-1).T / CONTRASTIVE_TEMPERATURE
            target = torch.arange(sim.shape[0], device=sim.device)
        per = F.cross_entropy(sim.float(), target, reduction="none")
        return per.double().cpu().numpy(), np.ones(batch.size, dtype=np.int64)
    inputs, labels = lm_labels(loaded, batch, seed)
    logits = loaded.model(**inputs).logits.float()
    if loaded.info.is_causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    # [token, vocabulary], the classes contiguous: ~3x faster on CPU than the transposed [batch, vocabulary, seq]
    per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                                reduction="none").view(labels.shape)
    return (per_token.double().sum(-1).cpu().numpy(), (labels != -100).sum(-1).cpu().numpy().astype(np.int64))


def variant_losses(loaded: LoadedModel, batch: Batch, kind: str, seed: int, gates: np.ndarray,
                   replace: np.ndarray | None = None) -> ForwardOutput:
    """Per-sequence losses of ``batch`` under several sets of gates in one forward: the batch repeated once per
    set (rows ``j * batch + b``), with per-row gates (:class:`~headscope.model.gates.HeadGates`).

    Parameters
    ----------
    gates : ndarray of shape (variants, n_layers, n_heads)
    replace : ndarray of shape (n_layers, n_heads, head_dim), optional
        What a closed head outputs (None: 0).

    Returns
    -------
    ForwardOutput
        ``sequence_loss`` (float64) and ``sequence_terms`` (int64) of shape (variants, batch); ``loss`` and
        ``terms`` summed over both.
    """
    k, b = int(gates.shape[0]), batch.size
    # Every copy gets the same inputs: the masked-LM draw depends only on the seed and each example's index.
    tiled = batch.select(list(range(b)) * k) if k > 1 else batch
    with gated(loaded, np.repeat(np.asarray(gates), b, axis=0), replace), torch.inference_mode():
        losses, terms = sequence_losses(loaded, tiled, kind, seed, variants=k)
    losses, terms = losses.reshape(k, b), terms.reshape(k, b)
    return ForwardOutput(loss=float(losses.sum()), terms=int(terms.sum()), has_loss=True, sequence_loss=losses,
                         sequence_terms=terms)


def ablations(loaded: LoadedModel, batch: Batch, kind: str, seed: int, forward: Forward, budget_bytes: int,
              quiet: bool = True) -> ForwardOutput:
    """:attr:`Forward.ablate`: replayed from the cached layer inputs when exact, else full forwards (the reason
    in ``replay``)."""
    from headscope.engine.replay import ReplayRefusedError, replay_ablations

    rows = forward.rows or batch.size
    how: dict[str, Any]
    if not forward.replay:
        how = {"mode": "full forwards", "why": "replay switched off"}
    elif kind not in LM_LOSSES:
        how = {"mode": "full forwards", "why": "replay computes LM losses; the contrastive loss is run in full"}
    else:
        try:
            base, terms, ablated, how = replay_ablations(loaded, batch, seed, rows, forward.replace, budget_bytes,
                                                         quiet, heads=forward.heads)
            return ForwardOutput(loss=float(base.sum()), terms=int(terms.sum()), has_loss=True, sequence_loss=base,
                                 sequence_terms=terms, ablated=ablated, replay=how)
        except ReplayRefusedError as exc:
            how = {"mode": "full forwards", "why": str(exc)}
    base, terms, ablated = full_ablations(loaded, batch, kind, seed, rows, forward.replace, quiet,
                                          heads=forward.heads)
    return ForwardOutput(loss=float(base.sum()), terms=int(terms.sum()), has_loss=True, sequence_loss=base,
                         sequence_terms=terms, ablated=ablated, replay=how)


def full_ablations(loaded: LoadedModel, batch: Batch, kind: str, seed: int, rows: int, replace: np.ndarray | None,
                   quiet: bool = True, desc: str = "head_effects: ablations of this batch",
                   heads: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`~headscope.engine.replay.replay_ablations` by full forwards (any loss, any model): the baseline,
    then the batch repeated once per head of a group of ``rows // B`` heads (per-row gates), every layer run."""
    info = loaded.info
    b, total = batch.size, info.n_layers * info.n_heads
    with torch.inference_mode():
        base, terms = sequence_losses(loaded, batch, kind, seed)
    per = max(1, rows // max(b, 1))
    ablated = np.full((total, b), np.nan)
    todo = np.arange(total) if heads is None else np.asarray(sorted(heads), dtype=np.int64)
    with Tracker(desc, "heads", len(todo), quiet, leave=False, final=False) as tracker:
        for start in range(0, len(todo), per):
            group = todo[start:start + per]
            gates = np.ones((len(group), total))
            gates[np.arange(len(group)), group] = 0.0
            out = variant_losses(loaded, batch, kind, seed, gates.reshape(len(group), info.n_layers, info.n_heads),
                                 replace)
            assert out.sequence_loss is not None
            ablated[group] = out.sequence_loss
            tracker.update(len(group))
    return base, terms, ablated


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


def separator_id(tok: PreTrainedTokenizerFast) -> int | None:
    """The separator: ``sep_token_id``, else ``eos_token_id`` (None when the tokenizer has neither)."""
    return tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id


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
                           ) -> tuple[torch.Tensor, float, int, list[tuple[tuple[torch.Tensor, ...],
                                                                            torch.Tensor, torch.Tensor]]]:
    """The objective to backpropagate, the summed loss, its terms, and (attentions, ids, mask) per forward.

    ``attentions`` holds one [batch, head, query, key] tensor per layer, each with ``retain_grad`` on; ``ids``
    and ``mask`` ([batch, seq]) are the inputs those attentions were computed on.
    """
    if kind == "contrastive_loss":
        cls_id, sep_id, pad_id = contrastive_ids(loaded.tokenizer)
        halves = split_halves(batch, cls_id, sep_id, pad_id)
        pooled, seen = [], []
        for x in halves:
            out = loaded.base(**x, output_attentions=True)
            m = x["attention_mask"].to(out.last_hidden_state.dtype)[..., None]
            pooled.append((out.last_hidden_state * m).sum(1) / m.sum(1).clamp_min(1.0))
            seen.append((tuple(out.attentions), x["input_ids"], x["attention_mask"].bool()))
        loss = contrastive_loss(pooled[0], pooled[1], CONTRASTIVE_TEMPERATURE)
        objective = loss / max(batch.size, 1)
        terms = batch.size
    else:
        inputs, labels = lm_labels(loaded, batch, seed)
        out = loaded.model(**inputs, output_attentions=True)
        logits = out.logits.float() if out.logits.dtype != torch.float64 else out.logits
        if loaded.info.is_causal:
            logits, labels = logits[:, :-1], labels[:, 1:]
        tok = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                ignore_index=-100, reduction="none").view(labels.shape)
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


def greedy_with_attention(loaded: LoadedModel, ids: torch.Tensor, max_new_tokens: int, stop_at_eos: bool = True
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding of one prompt, keeping each step's arg-max key per head.

    Parameters
    ----------
    loaded : LoadedModel
        A causal LM with its LM head.
    ids : Tensor of shape [prompt]
        int64 prompt ids on the model's device.
    max_new_tokens : int
    stop_at_eos : bool
        Stop at the end-of-sequence token (else only at a line break after some text, or the limit).

    Returns
    -------
    generated : Tensor of shape [step]
        int64 tokens; decoding stops at the end-of-sequence token or a line break after some text.
    argmax : Tensor of shape [step, layer, head]
        int64: the key position each head attended to most in the forward pass that produced the token.
    """
    model = loaded.model
    tokenizer = loaded.tokenizer
    stops = {t for t in (tokenizer.eos_token_id, getattr(model.config, "eos_token_id", None)) if isinstance(t, int)
             and stop_at_eos}
    current = model.config._attn_implementation
    generated: list[int] = []
    argmax: list[torch.Tensor] = []
    # transformers 5 renamed past_key_values to cache; older releases know only the former.
    params = inspect.signature(model.forward).parameters
    name = "cache" if "cache" in params else "past_key_values"
    with torch.inference_mode():
        # The prompt (but its last token) once with the model's own attention: no weights, the cache only,
        # and the logits of the last position only (the whole [prompt, vocabulary] would be large).
        out = model(input_ids=ids[None, :-1], use_cache=True, **({"logits_to_keep": 1} if "logits_to_keep" in params
                                                                  else {}))
        cache = getattr(out, name)
        token = ids[-1:]
        if current != "eager":
            model.set_attn_implementation("eager")  # eager attention returns the weights of each step
        try:
            for _ in range(max_new_tokens):
                out = model(input_ids=token[None], use_cache=True, output_attentions=True, **{name: cache})
                cache = getattr(out, name)
                token = out.logits[0, -1].argmax(-1, keepdim=True)
                # [layer, head]: each layer's weights are [1, head, 1, key]
                argmax.append(torch.stack([a[0, :, -1].float().argmax(-1) for a in out.attentions]).cpu())
                value = int(token)
                generated.append(value)
                if value in stops or ("\n" in tokenizer.decode([value]) and len(generated) > 1):
                    break
        finally:
            if current != "eager":
                model.set_attn_implementation(current)
    n_layers = loaded.info.n_layers
    n_heads = loaded.info.n_heads
    steps = torch.stack(argmax) if argmax else torch.zeros(0, n_layers, n_heads, dtype=torch.int64)
    return torch.tensor(generated, dtype=torch.int64), steps

