"""The run loop's context of a run, :class:`RunContext`: the model, the encoder, the corpus and the manifest,
what a pass needs (:func:`open_context` loads and opens them, also on Ray workers); and the narrow
:class:`~headscope.engine.context.AnalysisContext` it hands the analyses (:meth:`RunContext.for_analyses`)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from headscope.config import RunConfig
from headscope.corpus.memory import MemoryCorpus
from headscope.engine.batch import Batch, bucket_batches, collate, split_for_memory
from headscope.engine.capture import ensure_route
from headscope.engine.codec import TokenCodec
from headscope.engine.context import AnalysisContext
from headscope.engine.inputs import Corpus
from headscope.engine.progress import Tracker
from headscope.manifest import Manifest
from headscope.model.encode import Encoder, Example
from headscope.model.load import LoadedModel, ModelInfo, load_model
from headscope.seeds import Seeds

logger = logging.getLogger("headscope")


@dataclass(frozen=True)
class CorpusTexts:
    """The corpus's raw-text sentences as written, read again from the start each time it is iterated."""

    corpus: Corpus = field(repr=False)

    def __iter__(self) -> Iterator[str]:
        for doc in self.corpus.documents(Manifest(log_events=False)):
            for sentence in doc.sentences:
                yield sentence.as_text()[0]  # the text as written (words joined only without one)


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

        config = self.config
        return AnalysisContext(info=self.info, device=self.device, seeds=Seeds(int(config.seed)),
                               batch_size=int(config.batch_size), quiet=bool(config.quiet),
                               conventions=str(config.conventions), word_attention=str(config.word_attention),
                               treebanks=tuple(str(t) for t in config.treebank),
                               treebank_input=str(config.resolved_treebank_input()),
                               codec=TokenCodec.of(self.loaded.tokenizer), adds_bos=self.encoder.adds_bos,
                               max_length=int(self.encoder.max_length),
                               vocab_size=getattr(self.loaded.model.config, "vocab_size", None), loss_kind=kind,
                               loss_problem=problem, examples=examples, texts=CorpusTexts(self.corpus),
                               word_vectors=self.corpus.word_vectors, silver_parser=self.corpus.silver_parser)

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
