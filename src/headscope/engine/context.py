"""What an analysis sees of the run, :class:`AnalysisContext`: sizes, device, named seed streams, token facts,
the corpus's texts; never the model, the tokenizer, the corpus or the run's whole settings. The run loop builds
it (:meth:`headscope.runner.context.RunContext.for_analyses`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from headscope.engine.codec import TokenCodec
from headscope.model.load import ModelInfo
from headscope.seeds import Seeds

logger = logging.getLogger("headscope")


@dataclass(frozen=True)
class AnalysisContext:
    """What an analysis sees of the run (``start``, ``passes``, ``finalize``): typed facts, built by
    :meth:`RunContext.for_analyses`. It holds no model, tokenizer, corpus, manifest or run settings beyond
    these: an analysis that needs the model declares passes (:mod:`headscope.engine.forwards`), which the
    engine runs, and builds its own inputs with :attr:`codec` and :attr:`texts`."""

    info: ModelInfo
    """The model's name, layers, heads, whether it is causal, whether it has an LM head, its longest input."""
    device: torch.device
    """Where the attention blocks handed to ``update`` live (state on it avoids copies)."""
    seeds: Seeds = field(default_factory=lambda: Seeds(0))
    """The run's seed and its named streams (:mod:`headscope.seeds`)."""
    batch_size: int = 16
    """Sequences per forward (``--batch-size``)."""
    quiet: bool = True
    """No progress (``--quiet``)."""
    conventions: str = "headscope"
    """``--conventions``: whose definitions the statistics follow."""
    word_attention: str = "mean"
    """``--word-attention``: how a split word attends."""
    treebanks: tuple[str, ...] = ()
    """The ``--treebank`` files, in the order given (the last one is held out when there are several)."""
    treebank_input: str = "text"
    """What a treebank sentence is fed as (``forms`` or ``text``, ``--treebank-input`` resolved)."""
    codec: TokenCodec | None = None
    """The model's tokenizer as far as analyses use it (ids of text, text of ids, special tokens, chat
    template); None only in tests that feed hand-made maps."""
    adds_bos: bool = False
    """Whether the run's inputs start with BOS (the tokenizer's choice, or ``--bos``)."""
    max_length: int = 0
    """The longest sequence the run feeds (``--max-length``, capped by the model)."""
    vocab_size: int | None = None
    """The model's vocabulary (its config's ``vocab_size``), when it says."""
    loss_kind: str | None = None
    """The model's loss for gradients and pruning (``mlm_loss``, ``lm_loss``, ``contrastive_loss``), or None
    (``loss_problem`` says why)."""
    loss_problem: str | None = None
    """Why the model has no loss, when ``loss_kind`` is None."""
    examples: int = 0
    """Examples the main pass counted (set for ``passes``; 0 in ``start``)."""
    texts: Iterable[str] = ()
    """Each raw-text sentence of the corpus as written (its line, without the line's leading and trailing white
    space), in order, each time it is iterated (retrieval's haystacks, span's windows); read lazily, without
    reporting (the main pass has reported every problem)."""
    word_vectors: Any = field(default=None, repr=False)
    """``word_vectors()``: static word vectors (GloVe 6B 50-d, loaded on first call) for the probe's variants."""
    silver_parser: Any = field(default=None, repr=False)
    """``silver_parser()``: what parsed the silver trees (``--parse spacy``), for the summaries."""

    def require_loss(self) -> str:
        """:attr:`loss_kind`, or a ValueError saying why the model has none."""
        if self.loss_kind is None:
            raise ValueError(self.loss_problem or f"{self.info.name}: no loss for this model")
        return self.loss_kind

    def require_codec(self) -> TokenCodec:
        """:attr:`codec` (an analysis that builds inputs runs with a model, so the engine always gives one)."""
        if self.codec is None:
            raise ValueError(f"{self.info.name}: this analysis builds its own inputs and needs the model's tokenizer")
        return self.codec
