"""The inputs of a run as one stream of encoded examples."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain
from typing import TYPE_CHECKING, Any

from headscope.config import MEMORY, RunConfig
from headscope.corpus.conllu import read_blocks, read_conllu
from headscope.corpus.memory import MemoryCorpus, open_dataset, tokenlist_blocks, tokenlists_record
from headscope.corpus.text import read_text
from headscope.corpus.types import Document
from headscope.corpus.wiki import wikipedia_sample_text
from headscope.manifest import Manifest
from headscope.model.encode import Encoder, Example
from headscope.model.segments import document_sequences, pack_segments

if TYPE_CHECKING:
    from headscope.corpus.vectors import WordVectors

#: Segments taken from the packaged Wikipedia sample when --max-segments is not given (Clark et al.'s size).
DEFAULT_SEGMENTS = 1000

class Corpus:
    """All inputs of a run, streamed as :class:`Example` objects in a fixed order.

    Raw-text segments come first, then treebank sentences, then coreference windows; ``Example.index``
    numbers them in that order. Iterating twice gives the same examples (re-runs such as ablation use it).
    """

    def __init__(self, config: RunConfig, encoder: Encoder, manifest: Manifest,
                 memory: MemoryCorpus | None = None) -> None:
        self.config = config
        self.memory = memory if memory is not None else MemoryCorpus()
        if config.dataset and config.dataset != MEMORY and self.memory.texts is None:
            self.memory.texts = open_dataset(config.dataset, config.split, config.text_column)
        if (config.dataset == MEMORY and self.memory.texts is None) or (
                MEMORY in config.treebank and self.memory.tokenlists is None):
            raise ValueError(f"{MEMORY} data is given only in Python (headscope.run(texts=..., treebank=...)), "
                             "not by name")
        self.encoder = encoder
        self.text_files = [str(p) for p in config.text]
        self.segment_limit = config.max_segments
        #: CoNLL-U input (treebanks, coreference) read as its forms joined by spaces, not as its text.
        self.forms = config.resolved_treebank_input() == "forms"
        if config.uses_default_corpus:
            self.text_files = [str(wikipedia_sample_text())]
            self.segment_limit = config.max_segments or DEFAULT_SEGMENTS
            manifest.notes["default_corpus"] = ("Wikipedia sample shipped in gensim's test data, markup "
                                                "stripped by headscope.corpus.wiki")
        for role, files in (("text", self.text_files), ("treebank", config.treebank), ("coref", config.coref)):
            for f in files:
                if f == MEMORY and self.memory.tokenlists is not None:
                    manifest.files.append(tokenlists_record(self.memory.tokenlists))
                else:
                    manifest.add_file(f, role)
        if self.memory.texts is not None:
            # The same dict as the source's: the rows read are filled in as the pass reads them.
            self.memory.texts.record.update(path=self.memory.texts.label, role="text")
            manifest.files.append(self.memory.texts.record)

    def estimated_sentences(self) -> tuple[int, int]:
        """Fast upper estimates of the sentences to process, (raw text, treebanks and coref)."""

        def lines(files: list[str]) -> int:
            total = 0
            for f in files:
                try:
                    with open(f, "rb") as fh:
                        total += sum(1 for line in fh if line.strip() and not line.startswith(b"#"))
                except OSError:
                    continue
            return total

        # CoNLL-U counts words, not sentences, per line: divide by a typical sentence length.
        memory_text = self.memory.texts.estimate or 0 if self.memory.texts is not None else 0
        memory_treebank = len(self.memory.tokenlists or [])
        return (lines(self.text_files) + memory_text,
                lines([*self.config.treebank, *self.config.coref]) // 15 + memory_treebank)

    def documents(self, manifest: Manifest) -> Iterator[Document]:
        docs: Iterator[Document] = chain.from_iterable(read_text(f, manifest) for f in self.text_files)
        if self.memory.texts is not None:
            docs = chain(docs, self.memory.texts.documents(manifest))
        if self.config.parse == "spacy":
            from headscope.corpus.parse import parse_documents

            docs = parse_documents(docs, manifest)
        return docs

    def silver_parser(self) -> dict[str, Any]:
        """Who made the silver trees of ``--parse spacy`` (:func:`headscope.corpus.parse.silver_parser`), for
        the summaries of the analyses that meet ``Sentence.silver`` (handed to them by their context: an analysis
        imports no corpus module at run time)."""
        from headscope.corpus.parse import silver_parser

        return silver_parser()

    def word_vectors(self) -> WordVectors:
        """Static word vectors for the analyses that read them (the probe's GloVe variants, through their
        context): GloVe 6B 50-d, :func:`headscope.corpus.vectors.load_glove` (memory-mapped, cached for the
        process)."""
        from headscope.corpus.vectors import load_glove

        return load_glove()

    def examples(self, manifest: Manifest | None = None) -> Iterator[Example]:
        """Stream every example. Pass the run's manifest on the main pass only (it counts and warns; a re-read
        without it says nothing, as the main pass already reported every skipped or truncated input)."""
        manifest = manifest if manifest is not None else Manifest(log_events=False)
        index = 0
        # --conventions gu: Gu et al.'s prompts, one document each cut to --max-length tokens; else packed windows.
        raw = (document_sequences(self.documents(manifest), self.encoder, manifest, start_index=index,
                                  limit=self.segment_limit) if self.config.conventions == "gu"
               else pack_segments(self.documents(manifest), self.encoder, manifest, self.config.seed,
                                  start_index=index, limit=self.segment_limit))
        for ex in raw:
            index = ex.index + 1
            yield ex
        for path in self.config.treebank:
            sentences = (read_blocks(MEMORY, tokenlist_blocks(self.memory.tokenlists or []), manifest,
                                     limit=self.config.max_sentences) if path == MEMORY
                         else read_conllu(path, manifest, limit=self.config.max_sentences))
            for sentence in sentences:
                encoded = self.encoder.encode(index, "sentence", [sentence], None, manifest, truncate=False,
                                              forms=self.forms)
                if encoded is not None:
                    manifest.count("sentences_used")
                    index += 1
                    yield encoded
        if self.config.coref:
            from headscope.model.coref_encode import iter_coref_examples

            yield from iter_coref_examples(self.config.coref, self.encoder, manifest, start_index=index,
                                           forms=self.forms)
