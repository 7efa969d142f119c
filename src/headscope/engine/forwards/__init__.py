"""What an intervention asks of the model, and the code that does it: the engine's side of the passes.

An analysis that needs more than the attention maps of the main pass (gates on head outputs, gradients,
inputs of its own, generation) is an *intervention*: it describes each pass it needs as a :class:`Pass`
(which examples, and for each batch which forwards run: one kind of :class:`Forward`, or :class:`Generate`),
and the engine runs them (:mod:`headscope.runner.intervene`), with progress, on the model's device, handing
each forward's :class:`ForwardOutput` (losses, hidden states, gate gradients, attention blocks) back to the
analysis. The analysis never holds the model, the corpus or the manifest; what a pass needs of them is here.

The modules, one job each: :mod:`~headscope.engine.forwards.vocabulary` (the pass vocabulary: :class:`Pass`,
the rows, the kinds of :class:`Forward`, :class:`ForwardOutput`), :mod:`~headscope.engine.forwards.executor`
(:func:`run_forward`, dispatching on the forward's kind), :mod:`~headscope.engine.forwards.losses` (the
objective, per batch and per sequence), :mod:`~headscope.engine.forwards.gradients` (gate gradients,
attribution patching, attention gradients), :mod:`~headscope.engine.forwards.ablations` (heads switched off),
:mod:`~headscope.engine.forwards.kv_budget` (per-head key windows) and
:mod:`~headscope.engine.forwards.generation` (greedy decoding).
"""

from headscope.engine.forwards.ablations import full_ablations, gated, variant_losses
from headscope.engine.forwards.executor import run_forward
from headscope.engine.forwards.generation import greedy_with_attention
from headscope.engine.forwards.gradients import (
    attention_gradients,
    differentiable_inputs,
    forward_with_attention,
    gate_gradient,
    head_attribution,
)
from headscope.engine.forwards.kv_budget import KVBudget, kv_budget
from headscope.engine.forwards.losses import (
    CONTRASTIVE_TEMPERATURE,
    LM_LOSSES,
    MASK_RATE,
    batch_loss,
    contrastive_ids,
    frame_ids,
    has_lm_loss,
    loss_kind,
    plain_batch,
    separator_id,
    sequence_losses,
    split_halves,
)
from headscope.engine.forwards.vocabulary import (
    FORWARD_KINDS,
    Ablate,
    AttentionGradients,
    Attribution,
    CorpusRows,
    Forward,
    ForwardOutput,
    GateGradient,
    Generate,
    HeadSums,
    LMLoss,
    Loss,
    Observe,
    Pass,
    TokenRows,
)

__all__ = ["CONTRASTIVE_TEMPERATURE", "FORWARD_KINDS", "LM_LOSSES", "MASK_RATE", "Ablate", "AttentionGradients",
           "Attribution", "CorpusRows", "Forward", "ForwardOutput", "GateGradient", "Generate", "HeadSums",
           "KVBudget", "LMLoss", "Loss", "Observe", "Pass", "TokenRows", "attention_gradients", "batch_loss",
           "contrastive_ids", "differentiable_inputs", "forward_with_attention", "frame_ids", "full_ablations",
           "gate_gradient", "gated", "greedy_with_attention", "has_lm_loss", "head_attribution", "kv_budget",
           "loss_kind", "plain_batch", "run_forward", "separator_id", "sequence_losses", "split_halves",
           "variant_losses"]
