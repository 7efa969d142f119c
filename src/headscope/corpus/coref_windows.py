"""Coreference windows: cutting a document into model inputs that keep mentions with their antecedents.

A document rarely fits in one model input. Each sentence is *scored* in exactly one window; a window is a
run of whole sentences ending at its last scored sentence, extended to the left as far as ``max_length``
allows, and it scores as many consecutive sentences as it can while every mention in them keeps its
nearest antecedent inside the window (:func:`plan_windows`). A mention is lost only when even a full window
cannot hold it together with its nearest antecedent (or its sentence alone is too long); the losses are
counted in the manifest (``coref_lost_*``).

This module works on sentences and piece counts only (the caller counts the pieces with its tokenizer), so
the corpus layer stays free of the model layer; encoding the windows and reading the mentions of an
encoded window is :mod:`headscope.model.coref_encode`' job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from headscope.corpus.mentions import Mention
from headscope.corpus.types import Sentence

#: The windowing rule as ``run.json`` states it (``notes.coref_windows``).
WINDOW_NOTE = ("coreference documents are cut into windows of whole sentences of at most --max-length "
               "tokens; each sentence is scored in one window, which reaches back as far as the length allows "
               "and always holds the nearest antecedent of the mentions it scores when any window can. "
               "coref_lost_window counts anaphoric mentions whose nearest antecedent is further back than "
               "one window; coref_lost_long_sentence those cut off by a sentence longer than a window; "
               "coref_lost_no_pieces those whose head word (or every antecedent head) got no model piece.")


@dataclass(frozen=True)
class Window:
    """Sentences ``first..last`` (inclusive) of a document as one model input."""

    first: int
    """First sentence of the window (left context starts here)."""
    scored_from: int
    """First sentence whose mentions this window scores; ``scored_from..last`` are scored."""
    last: int
    """Last sentence of the window, also its last scored sentence."""


@dataclass
class WindowPlan:
    """The windows of one document and what they cannot score."""

    windows: list[Window]
    skipped_sentences: list[int]
    """Sentences longer than a window by themselves: in no window."""
    lost_long_sentence: int
    """Anaphoric mentions lost because they, or all their antecedents, sit in a skipped sentence (or the
    skipped sentence lies between them)."""
    lost_window: int
    """Anaphoric mentions whose nearest antecedent is further back than one window can reach."""
    anaphoric: int
    """Mentions with an earlier mention of the same entity in the document (lost or not); kept here so the
    caller need not run :func:`nearest_antecedents` a second time."""


def nearest_antecedents(sentences: list[Sentence]) -> list[list[tuple[Mention, tuple[int, int] | None]]]:
    """Per sentence, each mention with the (sentence, head word) of its nearest antecedent, or None.

    An antecedent is an earlier mention of the same entity; "earlier" compares head-word positions.

    Parameters
    ----------
    sentences : list of Sentence
        The document, with ``annotations["mentions"]`` (a sentence without the key has no mentions).

    Returns
    -------
    list of list of (Mention, (int, int) or None)
        Per sentence, its mentions in head-word order, each with the (sentence, head word) position of its
        nearest antecedent, None for a first mention.
    """
    last_seen: dict[str, tuple[int, int]] = {}
    out: list[list[tuple[Mention, tuple[int, int] | None]]] = []
    for s, sentence in enumerate(sentences):
        mentions = sentence.annotations.get("mentions", [])
        here: list[tuple[Mention, tuple[int, int] | None]] = []
        by_head = sorted(mentions, key=lambda m: m.head)
        # Mentions of this sentence whose heads come earlier count too: update in head order.
        pending: dict[str, list[tuple[int, int]]] = {}
        for m in by_head:
            earlier = [p for p in pending.get(m.entity, []) if p[1] < m.head]
            candidates = earlier + ([last_seen[m.entity]] if m.entity in last_seen else [])
            nearest = max(candidates) if candidates else None
            here.append((m, nearest))
            pending.setdefault(m.entity, []).append((s, m.head))
        for entity, positions in pending.items():
            last_seen[entity] = max(positions)
        out.append(here)
    return out


def plan_windows(sentences: list[Sentence], pieces: list[int], budget: int) -> WindowPlan:
    """Cut one document into windows of at most ``budget`` pieces (special tokens not included).

    Parameters
    ----------
    sentences : list of Sentence
        The document, with ``annotations["mentions"]``.
    pieces : list of int
        Model pieces of each sentence.
    budget : int
        Pieces a window may hold (``max_length`` minus the special tokens).

    Returns
    -------
    WindowPlan
        Every kept sentence is scored in exactly one window. Windows end at their last scored sentence and
        reach left as far as the budget allows; a window scores consecutive sentences while the left edge
        of the full window ending at the last of them still holds the nearest antecedent of every mention
        in them.
    """
    n = len(sentences)
    skipped = [s for s in range(n) if pieces[s] > budget]
    skipped_set = set(skipped)
    cum = np.concatenate([[0], np.cumsum(pieces)])
    # Runs of consecutive sentences that fit: a too-long sentence breaks the text (its words are unseen).
    run_of = np.full(n, -1)
    run = -1
    for s in range(n):
        if s in skipped_set:
            continue
        if s == 0 or (s - 1) in skipped_set:
            run += 1
        run_of[s] = run
    # start[j]: leftmost sentence of the fullest window ending at j.
    start = list(range(n))
    for j in range(n):
        a = j
        while a > 0 and run_of[a - 1] == run_of[j] and cum[j + 1] - cum[a - 1] <= budget:
            a -= 1
        start[j] = a
    need = list(range(n))  # need[j]: the window scoring sentence j must start at or before this sentence
    lost_long = lost_window = anaphoric = 0
    for s, items in enumerate(nearest_antecedents(sentences)):
        for _, nearest in items:
            if nearest is None:
                continue
            anaphoric += 1
            if s in skipped_set or run_of[nearest[0]] != run_of[s]:
                lost_long += 1
            elif nearest[0] < start[s]:
                lost_window += 1
            else:
                need[s] = min(need[s], nearest[0])
    windows: list[Window] = []
    j0 = 0
    while j0 < n:
        if j0 in skipped_set:
            j0 += 1
            continue
        j1 = j0
        low = need[j0]
        while (j1 + 1 < n and run_of[j1 + 1] == run_of[j0] and start[j1 + 1] <= min(low, need[j1 + 1])):
            j1 += 1
            low = min(low, need[j1])
        windows.append(Window(first=start[j1], scored_from=j0, last=j1))
        j0 = j1 + 1
    return WindowPlan(windows, skipped, lost_long, lost_window, anaphoric)


def window_sentences(sentences: list[Sentence], window: Window) -> list[Sentence]:
    """The sentences of one window, marked with whether this window scores them.

    Parameters
    ----------
    sentences : list of Sentence
        The whole document.
    window : Window
        One window of its plan.

    Returns
    -------
    list of Sentence
        Shallow copies of ``sentences[window.first..window.last]`` with ``annotations["coref_scored"]``
        set. Copies, because a sentence is context in several windows but scored in only one of them; the
        words and the mention list are shared with the document.
    """
    return [dataclasses.replace(sentences[s], annotations={
        **sentences[s].annotations, "coref_scored": s >= window.scored_from})
        for s in range(window.first, window.last + 1)]



def earlier_mentions(sentences: list[Sentence]) -> dict[tuple[str, tuple[int, int]], int]:
    """For each (entity, (sentence, head word)) of a document, how many mentions of the entity come earlier.

    Parameters
    ----------
    sentences : list of Sentence
        The document, with ``annotations["mentions"]``.

    Returns
    -------
    dict of (str, (int, int)) to int
        Keyed by entity and head-word position; mentions of the entity at the same position do not count.
    """
    positions: dict[str, list[tuple[int, int]]] = {}
    for s, sentence in enumerate(sentences):
        for m in sentence.annotations["mentions"]:
            positions.setdefault(m.entity, []).append((s, m.head))
    return {(entity, p): sum(1 for q in ps if q < p) for entity, ps in positions.items() for p in ps}
