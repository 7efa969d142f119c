"""What an analysis can see of the run: config, model, corpus and manifest."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from headscope.config import RunConfig
from headscope.engine.batch import Batch, bucket_batches, collate, split_for_memory
from headscope.engine.capture import ensure_route
from headscope.engine.inputs import Corpus
from headscope.manifest import Manifest
from headscope.model.encode import Encoder, Example
from headscope.model.load import LoadedModel, ModelInfo, load_model

logger = logging.getLogger("headscope")


@dataclass
class RunContext:
    """Handed to ``Analysis.start`` and ``Analysis.finalize``."""

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

    def batches(self, examples: Iterator[Example] | None = None) -> Iterator[Batch]:
        """Length-bucketed batches on the model's device; by default a fresh pass over the corpus."""
        for group in self.groups(examples):
            yield self.collate(group)


def open_context(config: RunConfig) -> RunContext:
    """Load the model and open the corpus of ``config``: everything a pass needs (also on Ray workers)."""
    loaded = load_model(config.model, revision=config.revision, device=config.device, dtype=config.dtype,
                        trust_remote_code=config.trust_remote_code, gguf_file=config.gguf_file,
                        capture=config.capture, cache_model=config.cache_model)
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
    corpus = Corpus(config, encoder, manifest)
    return RunContext(config=config, loaded=loaded, encoder=encoder, corpus=corpus, manifest=manifest)
