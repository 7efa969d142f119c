"""The vocabulary of the passes: what an intervention asks of the model.

An analysis that needs more than the attention maps of the main pass describes each pass it needs as a
:class:`Pass` (which examples: :class:`CorpusRows` or :class:`TokenRows`; for each batch, which forwards run:
one kind of :class:`Forward`, or :class:`Generate`); the engine runs them
(:mod:`headscope.engine.forwards.executor`) and hands back a :class:`ForwardOutput` per forward and batch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    from headscope.engine.batch import Batch


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


def _gates(gates: np.ndarray | None, ndims: tuple[int, ...], kind: str) -> None:
    if gates is not None and np.ndim(gates) not in ndims:
        shapes = " or ".join({2: "(n_layers, n_heads)", 3: "(variants, n_layers, n_heads)"}[d] for d in ndims)
        raise ValueError(f"{kind}: gates of shape {shapes}, got {np.shape(gates)}")


def _replace(replace: np.ndarray | None, kind: str) -> None:
    if replace is not None and np.ndim(replace) != 3:
        raise ValueError(f"{kind}: replace of shape (n_layers, n_heads, head_dim), got {np.shape(replace)}")


@dataclass(frozen=True, kw_only=True)
class Forward:
    """One forward (and backward, when a gradient is asked) of each batch of a pass: one of the kinds below.

    A tagged union: each kind is a subclass holding only the fields it uses, checked when it is built, and the
    engine runs it by its type (:func:`~headscope.engine.forwards.executor.run_forward`). The shapes of gates
    and replacements against the model are checked when it runs.
    """

    tag: Hashable = None
    """The analysis's name for this forward (given back with its output)."""

    def __post_init__(self) -> None:
        if type(self) is Forward:
            raise TypeError("Forward is the union of its kinds: build an Observe, Loss, LMLoss, HeadSums, "
                            "GateGradient, Attribution, Ablate or AttentionGradients")


@dataclass(frozen=True, kw_only=True)
class Observe(Forward):
    """Each layer's attention, block by block, to the analysis's ``update_pass_attention`` (the capture of the
    main pass, within its memory budget)."""


@dataclass(frozen=True, kw_only=True)
class Loss(Forward):
    """The run's objective (:func:`~headscope.engine.forwards.losses.loss_kind`: masked-LM, next-token or
    contrastive), summed over the batch (:attr:`ForwardOutput.loss`, ``terms``)."""

    gates: np.ndarray | None = None
    """Gate values of shape (n_layers, n_heads) multiplying each head's output (0 switches a head off,
    :class:`~headscope.model.gates.HeadGates`); None: every head open. Of shape (variants, n_layers, n_heads)
    (with ``per_sequence`` only): the batch is run ``variants`` times in one forward, copy ``j`` with gates
    ``gates[j]`` (per-row gates; the contrastive loss's negatives stay within a copy), and the per-sequence
    losses come back of shape (variants, batch)."""
    replace: np.ndarray | None = None
    """With ``gates``: of shape (n_layers, n_heads, head_dim), what a closed head outputs instead of 0 (a gate
    ``xi`` interpolates, ``xi * x + (1 - xi) * replace``; mean ablation gives each head's mean output)."""
    per_sequence: bool = False
    """Each sequence's summed loss and terms as well (:func:`~headscope.engine.forwards.losses.sequence_losses`)."""
    kv_budget: np.ndarray | None = None
    """Per-head key windows of shape (n_layers, n_heads), non-negative integers: a head with ``W > 0`` attends
    only to the first position (the sink) and its last ``W`` keys, ``0`` to every key
    (:func:`~headscope.engine.forwards.kv_budget.kv_budget`, span's causal check); None: no budget. Needs the
    ``interface`` capture route."""

    def __post_init__(self) -> None:
        _gates(self.gates, (2, 3), "Loss")
        if self.gates is not None and np.ndim(self.gates) == 3 and not self.per_sequence:
            raise ValueError("Loss: gates of shape (variants, n_layers, n_heads) give per-sequence losses "
                             "(per_sequence=True)")
        _replace(self.replace, "Loss")
        if self.replace is not None and self.gates is None:
            raise ValueError("Loss: replace is what a closed head outputs; it needs gates")
        windows = self.kv_budget
        if windows is not None and (np.ndim(windows) != 2 or bool((np.asarray(windows) < 0).any())):
            raise ValueError("Loss: kv_budget windows are non-negative integers of shape (n_layers, n_heads), "
                             f"got shape {np.shape(windows)}")


@dataclass(frozen=True, kw_only=True)
class LMLoss(Forward):
    """The model's own LM loss (masked-LM with a seeded 15% of the tokens masked, or next-token) when it has
    one (:func:`~headscope.engine.forwards.losses.has_lm_loss`), and the final hidden states
    [batch, seq, hidden] (:attr:`ForwardOutput.hidden`) always: ablation's loss, or its drift without LM head."""

    gates: np.ndarray | None = None
    """Of shape (n_layers, n_heads), as :attr:`Loss.gates`; None: every head open."""

    def __post_init__(self) -> None:
        _gates(self.gates, (2,), "LMLoss")


@dataclass(frozen=True, kw_only=True)
class HeadSums(Forward):
    """Each head's output (its slice of the attention output projection's input) summed over the real tokens
    the model read, and their count (:class:`~headscope.model.gates.HeadSums`): the sums of a mean."""

    loss: Literal["none", "objective"] = "objective"
    """``objective``: over the objective's inputs (the masked-LM's masked ones), its loss computed alongside;
    ``none``: over the batch as it is, the model body only."""

    def __post_init__(self) -> None:
        if self.loss not in ("none", "objective"):
            raise ValueError(f"HeadSums: loss is 'none' or 'objective', got {self.loss!r}")


@dataclass(frozen=True, kw_only=True)
class GateGradient(Forward):
    """``dL/dxi`` of the batch's mean objective at ``gates``
    (:func:`~headscope.engine.forwards.gradients.gate_gradient`)."""

    gates: np.ndarray | None = None
    """Of shape (n_layers, n_heads); None: every head open."""

    def __post_init__(self) -> None:
        _gates(self.gates, (2,), "GateGradient")


@dataclass(frozen=True, kw_only=True)
class Attribution(Forward):
    """Attribution patching, every head open: per sequence, the first-order estimate of the change of its
    summed objective when each head's output is replaced by ``replace``, ``sum over its tokens
    (replace - x) . dL/dx`` (:func:`~headscope.engine.forwards.gradients.head_attribution`)."""

    replace: np.ndarray | None = None
    """Of shape (n_layers, n_heads, head_dim); None: 0."""
    grad_drop: bool = False
    """AtP*'s GradDrop as well (:attr:`ForwardOutput.atp_dropped`)."""

    def __post_init__(self) -> None:
        _replace(self.replace, "Attribution")


@dataclass(frozen=True, kw_only=True)
class Ablate(Forward):
    """Every head ablated one at a time (closed onto ``replace``): the baseline's per-sequence objective and
    each head's (:attr:`ForwardOutput.ablated`), replayed from the cached input of the head's layer where that
    is exact (:mod:`headscope.engine.replay`), else by full forwards."""

    replace: np.ndarray | None = None
    """Of shape (n_layers, n_heads, head_dim): what a closed head outputs; None: 0."""
    rows: int = 0
    """At most this many rows per forward (the batch repeated ``rows // batch`` times, one closed head per copy);
    0: the batch size."""
    heads: tuple[int, ...] | None = None
    """Only these heads (``layer * n_heads + head``), the others' rows of ``ablated`` NaN; None: every head."""
    replay: bool = True
    """Replay from the cached layer inputs where possible (False: full forwards, the reference)."""

    def __post_init__(self) -> None:
        _replace(self.replace, "Ablate")
        if self.rows < 0:
            raise ValueError(f"Ablate: rows is 0 (the batch size) or a positive number, got {self.rows}")
        if self.heads is not None and any(h < 0 for h in self.heads):
            raise ValueError("Ablate: heads are flat indices layer * n_heads + head, non-negative")


@dataclass(frozen=True, kw_only=True)
class AttentionGradients(Forward):
    """The attention weights and ``dL/dA`` of the objective, eager attention
    (:func:`~headscope.engine.forwards.gradients.attention_gradients`)."""


#: Every kind of :class:`Forward`, for the executor's table and the docs.
FORWARD_KINDS: tuple[type[Forward], ...] = (Observe, Loss, LMLoss, HeadSums, GateGradient, Attribution, Ablate,
                                            AttentionGradients)


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
    """Tokens (LM losses) or pairs (contrastive) in ``loss``; 0 when no loss was computed (:class:`LMLoss` on
    a model without LM head)."""
    sequence_loss: np.ndarray | None = None
    """float64 of shape (batch,): each sequence's summed loss (:attr:`Loss.per_sequence`, :class:`Ablate`)."""
    sequence_terms: np.ndarray | None = None
    """int64 of shape (batch,): its terms."""
    hidden: torch.Tensor | None = None
    """Final hidden states [batch, seq, hidden] (:class:`LMLoss`)."""
    gate_grad: np.ndarray | None = None
    """float64 of shape (n_layers, n_heads) (:class:`GateGradient`)."""
    head_sums: np.ndarray | None = None
    """float64 of shape (n_layers, n_heads, head_dim) (:class:`HeadSums`): each head's output summed over
    ``head_tokens`` real tokens."""
    head_tokens: int = 0
    """The real tokens in ``head_sums`` (each input the model read counted once)."""
    atp: np.ndarray | None = None
    """float64 of shape (batch, n_layers, n_heads) (:class:`Attribution`): each sequence's estimated loss change
    per head."""
    atp_dropped: np.ndarray | None = None
    """float64 of shape (batch, n_layers, n_layers, n_heads) (:attr:`Attribution.grad_drop`): ``[:, l]`` the AtP
    estimate with the gradient through layer ``l``'s residual contribution dropped."""
    ablated: np.ndarray | None = None
    """float64 of shape (n_layers * n_heads, batch) (:class:`Ablate`): each sequence's summed loss with head
    ``layer * n_heads + head`` ablated (``sequence_loss``: the baseline's)."""
    replay: dict[str, Any] | None = None
    """:class:`Ablate`: how the ablations ran (``mode`` replay or full forwards, and why not replay)."""
    attention_gradients: list[tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], torch.Tensor,
                                    torch.Tensor]] = field(default_factory=list)
    """:class:`AttentionGradients`: per encoded input (two for the contrastive loss), the per-layer attention
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

