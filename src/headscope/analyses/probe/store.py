"""The probe's sentences: their attention features in a store that spills to a temporary file, and their trees.

The features of every sentence are kept for training at the end, so the state grows with the corpus (float16,
``(n_features, 1 + n, 1 + n)`` a sentence); above ``--probe-memory-mb`` they live in an anonymous temporary file,
memory-mapped for reading. :data:`SENTENCES` declares how the state merges and saves.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headscope.engine.state import Serializer


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


def merge_sentences(mine: list[ProbeSentences], theirs: list[ProbeSentences]) -> list[ProbeSentences]:
    """The reduction of :class:`AttentionProbe`'s ``data_``: each split's sentences of ``theirs`` added to
    ``mine`` (features copied into ``mine``'s store, which may live on disk)."""
    for ours, other in zip(mine, theirs, strict=True):
        for i in range(len(other)):
            ours.add(np.asarray(other.features[i]), other.words[i], other.heads[i], other.punct[i], other.keys[i])
    return mine


def save_sentences(data: list[ProbeSentences]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The serializer's save of ``data_``: per split, the features as one flat float16 array and the trees as
    flat arrays with each sentence's length; the words as JSON."""
    arrays: dict[str, np.ndarray] = {}
    for split, sentences in enumerate(data):
        store = sentences.features
        arrays[f"{split}.features"] = np.asarray(store._flat()[:store.nbytes // 2])
        arrays[f"{split}.sizes"] = np.asarray(store.sizes, dtype=np.int64)
        arrays[f"{split}.lengths"] = np.asarray([len(h) for h in sentences.heads], dtype=np.int64)
        arrays[f"{split}.heads"] = np.concatenate([np.zeros(0, np.int64), *sentences.heads]).astype(np.int64)
        arrays[f"{split}.punct"] = np.concatenate([np.zeros(0, bool), *sentences.punct]).astype(bool)
        arrays[f"{split}.keys"] = np.asarray(sentences.keys, dtype=np.int64).reshape(-1, 2)
    return arrays, {"words": [sentences.words for sentences in data]}


def load_sentences(arrays: dict[str, np.ndarray], meta: dict[str, Any], current: list[ProbeSentences]
                   ) -> list[ProbeSentences]:
    """The inverse of :func:`save_sentences`, added to ``current`` (the started analysis's empty stores, which
    know the number of features and where to spill)."""
    for split, data in enumerate(current):
        n_features = data.features.n_features
        flat = arrays[f"{split}.features"]
        heads, punct, keys = arrays[f"{split}.heads"], arrays[f"{split}.punct"], arrays[f"{split}.keys"]
        bounds = np.cumsum([0, *arrays[f"{split}.lengths"].tolist()])
        start = 0
        for k, m in enumerate(arrays[f"{split}.sizes"].tolist()):
            count = n_features * m * m
            data.add(flat[start:start + count].reshape(n_features, m, m), list(meta["words"][split][k]),
                     heads[bounds[k]:bounds[k + 1]].copy(), punct[bounds[k]:bounds[k + 1]].copy(),
                     (int(keys[k][0]), int(keys[k][1])))
            start += count
    return current


#: How ``data_`` is saved and loaded (checkpoints, Ray).
SENTENCES = Serializer(save_sentences, load_sentences)
