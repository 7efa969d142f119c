"""Piece-to-word alignment by character offsets (the rules are :mod:`headscope.model.encode`'s docstring and
``docs/inputs.md``): the sentences joined into the one string the model reads, each token assigned to the words
its characters overlap, and a unit's label for messages."""

from __future__ import annotations

import numpy as np

from headscope.corpus.types import Sentence


def join_sentences(sentences: list[Sentence], forms: bool) -> tuple[str, list[tuple[int, int]]]:
    """The string of consecutive sentences (one space between them) and each word's span in it."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    position = 0
    for k, sentence in enumerate(sentences):
        text, word_spans = sentence.as_text(forms)
        if k:
            parts.append(" ")
            position += 1
        spans.extend((a + position, b + position) for a, b in word_spans)
        parts.append(text)
        position += len(text)
    return "".join(parts), spans


def align_pieces(offsets: list[tuple[int, int]], seq_ids: list[int | None],
           joined: list[tuple[str, list[tuple[int, int]]]], word_base: list[int]
           ) -> tuple[np.ndarray, dict[int, list[int]]]:
    """Assign every non-special token to a group of words by character offsets (rules in the module doc).

    Returns
    -------
    owner : ndarray of shape (n_tokens,)
        int64, the group of each token (its smallest word index, numbered across sequences), -1 for special
        tokens.
    groups : dict
        Group -> the word indices (across sequences) in it, in order.
    """
    n = len(offsets)
    parent: dict[int, int] = {}

    def find(w: int) -> int:
        while parent.setdefault(w, w) != w:
            parent[w] = parent[parent[w]]
            w = parent[w]
        return w

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    seqs = np.asarray([-1 if q is None else q for q in seq_ids], dtype=np.int64)
    bounds = np.asarray(offsets, dtype=np.int64).reshape(n, 2)
    owner = np.full(n, -1, dtype=np.int64)
    for seq, (text, spans) in enumerate(joined):
        length = len(text)
        of_char = np.full(length + 1, -1, dtype=np.int64)
        first_word: dict[tuple[int, int], int] = {}
        for w, span in enumerate(spans):
            flat = word_base[seq] + w
            find(flat)
            if span in first_word:  # one span, several words: the syntactic words of a multiword token
                union(first_word[span], flat)
            else:
                first_word[span] = flat
                of_char[span[0]:span[1]] = flat
        # For each character, the next (previous) character that is not white space: a token's first and last
        # such characters name the words it starts and ends in, and words are contiguous, so a token whose two
        # ends lie in one word touches that word alone.
        space = np.fromiter((c.isspace() for c in text), dtype=bool, count=length)
        position = np.arange(length, dtype=np.int64)
        following = np.append(np.minimum.accumulate(np.where(space, length, position)[::-1])[::-1], length)
        preceding = np.maximum.accumulate(np.where(space, -1, position)) if length else position
        tokens = np.flatnonzero((seqs == seq) & (bounds[:, 1] > bounds[:, 0]))
        start = np.clip(bounds[tokens, 0], 0, length)
        stop = np.clip(bounds[tokens, 1], 0, length)
        first = following[start]
        last = np.where(stop > 0, preceding[np.maximum(stop - 1, 0)], -1) if length else np.full(len(tokens), -1)
        inside = (first < stop) & (last >= start)
        first_w = np.where(inside, of_char[np.minimum(first, length)], -1)
        last_w = np.where(inside, of_char[np.maximum(last, 0)], -1)
        owner[tokens] = np.where(first_w == last_w, first_w, -1)
        for k in np.flatnonzero(inside & (first_w != last_w)).tolist():  # a token spanning several words
            chars = of_char[first[k]:last[k] + 1]
            words = np.unique(chars[(chars >= 0) & ~space[first[k]:last[k] + 1]]).tolist()
            for w in words[1:]:
                union(words[0], w)
            owner[tokens[k]] = words[0] if words else -1
    for p in np.flatnonzero(owner >= 0).tolist():
        owner[p] = find(int(owner[p]))
    # Tokens that touch no word join the next token of their sequence that does, else the previous one.
    for lone in np.flatnonzero(owner < 0).tolist():
        seq = seq_ids[lone]
        if seq is None:
            continue
        after = next((q for q in range(lone + 1, n) if seq_ids[q] == seq and owner[q] >= 0), None)
        before = next((q for q in range(lone - 1, -1, -1) if seq_ids[q] == seq and owner[q] >= 0), None)
        nearest = after if after is not None else before
        # A sequence with no word at all: the token is a unit of its own (keys below -1 never name words).
        owner[lone] = owner[nearest] if nearest is not None else -2 - lone
    groups: dict[int, list[int]] = {}
    for w in sorted(parent):
        groups.setdefault(find(w), []).append(w)
    return owner, groups


def unit_label(words: list[int], joined: list[tuple[str, list[tuple[int, int]]]], word_base: list[int]) -> str:
    """The word a unit stands for: the word itself, or the text that the words of a shared token cover."""
    s = 1 if len(word_base) > 1 and len(joined) > 1 and words[0] >= word_base[1] else 0
    spans = joined[s][1]
    a = spans[words[0] - word_base[s]][0]
    b = max(spans[w - word_base[s]][1] for w in words)
    return joined[s][0][a:b]
