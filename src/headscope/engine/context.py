"""The run's context: :class:`RunContext` (the engine's: model, corpus, manifest) and :class:`AnalysisContext`
(what an analysis sees: sizes, device, token facts, the resolved options; never the model or the corpus)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from headscope.config import RunConfig
from headscope.corpus.memory import MemoryCorpus
from headscope.engine.batch import Batch, bucket_batches, collate, split_for_memory
from headscope.engine.capture import ensure_route
from headscope.engine.inputs import Corpus
from headscope.engine.progress import Tracker
from headscope.manifest import Manifest
from headscope.model.encode import Encoder, Example
from headscope.model.load import LoadedModel, ModelInfo, load_model

logger = logging.getLogger("headscope")


@dataclass(frozen=True)
class AnalysisContext:
    """What an analysis sees of the run (``start``, ``passes``, ``finalize``): sizes, device, token facts and
    the resolved options. It holds no model, corpus or manifest: an analysis that needs the model declares
    passes (:mod:`headscope.engine.forwards`), which the engine runs."""

    info: ModelInfo
    """The model's name, layers, heads, whether it is causal, whether it has an LM head, its longest input."""
    device: torch.device
    """Where the attention blocks handed to ``update`` live (state on it avoids copies)."""
    config: RunConfig
    """The run's settings, resolved (``--analyses all`` expanded); never changed once the run starts."""
    tokenizer: Any = None
    """The model's tokenizer, to build inputs of a pass (ids, special tokens, chat template) and to decode;
    None in tests that feed hand-made maps."""
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
    word_vectors: Any = field(default=None, repr=False)
    """``word_vectors()``: static word vectors (GloVe 6B 50-d, loaded on first call) for the probe's variants."""
    silver_parser: Any = field(default=None, repr=False)
    """``silver_parser()``: what parsed the silver trees (``--parse spacy``), for the summaries."""
    sentences: Any = field(default=None, repr=False)
    """``sentences()`` iterates over each raw-text sentence of the corpus as written (its line, without the
    line's leading and trailing white space), in order (retrieval's haystacks, span's windows), read again
    without reporting (the main pass has reported every problem)."""

    @property
    def seed(self) -> int:
        return int(self.config.seed)

    def require_loss(self) -> str:
        """:attr:`loss_kind`, or a ValueError saying why the model has none."""
        if self.loss_kind is None:
            raise ValueError(self.loss_problem or f"{self.info.name}: no loss for this model")
        return self.loss_kind


@dataclass
class RunContext:
    """The engine's context of a run: what a pass needs (the model, the encoder, the corpus, the manifest)."""

    config: RunConfig
    loaded: LoadedModel
    encoder: Encoder
    corpus: Corpus
    manifest: Manifest

    @property
    def info(self) -> ModelInfo:
        return self.loaded.info

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    def groups(self, examples: Iterator[Example] | None = None) -> Iterator[list[Example]]:
        """The examples of each batch, in the run's deterministic batch order; by default the whole corpus."""
        stream = examples if examples is not None else self.corpus.examples()
        budget = self.config.attention_bytes()
        count = 0
        self.manifest.batch = 0  # what the reader skips or cuts is recorded with the batch read next
        try:
            for group in bucket_batches(stream, self.config.batch_size):
                # Batches of long sequences are cut so that one layer's attention stays within the budget.
                for part in split_for_memory(group, self.info.n_heads, budget):
                    yield part
                    count += 1
                    self.manifest.batch = count
        finally:
            self.manifest.batch = None

    def collate(self, examples: list[Example]) -> Batch:
        """One batch of ``examples`` on the model's device."""
        return collate(examples, int(self.loaded.tokenizer.pad_token_id), self.device)

    def for_analyses(self, examples: int = 0) -> AnalysisContext:
        """The :class:`AnalysisContext` of this run (``examples``: what the main pass counted)."""
        from headscope.engine.forwards import loss_kind

        try:
            kind, problem = loss_kind(self.loaded), None
        except ValueError as e:
            kind, problem = None, str(e)

        def sentences() -> Iterator[str]:
            for doc in self.corpus.documents(Manifest(log_events=False)):
                for sentence in doc.sentences:
                    yield sentence.as_text()[0]  # the text as written (words joined only without one)

        return AnalysisContext(info=self.info, device=self.device, config=self.config,
                               tokenizer=self.loaded.tokenizer, adds_bos=self.encoder.adds_bos,
                               max_length=int(self.encoder.max_length),
                               vocab_size=getattr(self.loaded.model.config, "vocab_size", None), loss_kind=kind,
                               loss_problem=problem,
                               examples=examples, sentences=sentences, word_vectors=self.corpus.word_vectors,
                               silver_parser=self.corpus.silver_parser)

    def batches(self, examples: Iterator[Example] | None = None) -> Iterator[Batch]:
        """Length-bucketed batches on the model's device; by default a fresh pass over the corpus."""
        for group in self.groups(examples):
            yield self.collate(group)


def open_context(config: RunConfig, loaded: LoadedModel | None = None, memory: MemoryCorpus | None = None
                 ) -> RunContext:
    """Load the model and open the corpus of ``config``: everything a pass needs (also on Ray workers).

    ``loaded``: a model already loaded (a :class:`headscope.Session`'s, or one handed over in memory,
    :func:`headscope.model.inmemory.from_memory`), used instead of loading ``config.model``. ``memory``: texts
    and treebank sentences from memory (:mod:`headscope.corpus.memory`).
    """
    if loaded is None:
        loaded = load_model(config.model, revision=config.revision, device=config.device, dtype=config.dtype,
                            trust_remote_code=config.trust_remote_code, gguf_file=config.gguf_file,
                            capture=config.capture, cache_model=config.cache_model,
                            progress=functools.partial(Tracker, quiet=config.quiet))
    ensure_route(loaded)  # the capture route (a probe pass), chosen by the engine rather than the loader
    info = loaded.info
    max_length = config.resolved_max_length(info.max_length, info.is_causal)
    encoder = Encoder.for_model(loaded, max_length, config.punctuation, bos=config.bos)
    manifest = Manifest()
    if config.max_length is not None and config.max_length > info.max_length:
        manifest.warn_run(f"--max-length {config.max_length} is more than {info.name} allows; using "
                          f"{info.max_length}")
    elif config.max_length is None and info.is_causal and max_length < info.max_length:
        logger.info("decoder LM: windows of %d tokens (the default; %s allows %d, pass --max-length for more)",
                    max_length, info.name, info.max_length)
    manifest.notes["capture"] = {"route": loaded.route, "max_length": max_length,
                                 "attention_memory_bytes": config.attention_bytes(),
                                 "padding_side": config.padding_side}
    manifest.notes["inputs"] = {**encoder.describe(),
                                "treebank_input": config.resolved_treebank_input()}
    corpus = Corpus(config, encoder, manifest, memory)
    return RunContext(config=config, loaded=loaded, encoder=encoder, corpus=corpus, manifest=manifest)
