"""The run's named random streams: every stream a module draws from the run's seed, declared once here.

A stream is ``numpy.random.default_rng([seed, number, *more])``: the run's ``--seed``, the stream's number and,
for streams drawn per item, the item (a prompt's index, a resample's step). Numbers are unique
(``tests/test_seeds.py``), so no two draws share a stream by accident; a new stream takes the next free number.

Two kinds of draw are not numbered and kept as they were, because renumbering them would change results the
goldens fix: :data:`ROOT` (``default_rng(seed)``, the seed itself) and :data:`PER_EXAMPLE`
(``default_rng([seed, example.index, ...])``, a draw per corpus example that must not depend on batching).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Stream name -> number. The numbers are unique; they are part of the results (goldens), never reused.
STREAMS: dict[str, int] = {
    "importance.sample": 14,          # the sequences the importance pass reads
    "decoder_heads.probe": 15,        # the induction probe's random tokens, [seed, 15, k] for sequence k
    "pruning.order": 16,              # the held-out / estimation split of pruning's sample
    "pruning.shuffle": 17,            # the random pruning order of step s, [seed, 17, s]
    "pruning.bootstrap": 18,          # the resamples of pruning's held-out sequences
    "sep_gradient.sample": 19,        # the sequences the sep_gradient pass reads
    "retrieval.depths": 24,           # the needle's depth in each haystack
    "decoder_heads.bootstrap": 30,    # Poisson bootstrap weights of the scores, [seed, 30, example index]
    "decoder_heads.chance": 31,       # ... of the scores against their chance level, [seed, 31, example index]
    "retrieval.bootstrap": 32,        # the resamples of the used prompts
    "span.random_heads": 33,          # the random heads of the KV-budget check
    "span.bootstrap": 34,             # the resamples of the check's held-out windows
    "head_effects.split": 35,         # the held-out and the mean samples (30 until 0.3: decoder_heads' stream)
    "head_effects.bootstrap": 36,     # the resamples of the held-out sequences (30 until 0.3)
    "head_effects.control": 37,       # the random control heads of --head-effects-verify-top (30, 1 until 0.3)
    "retrieval.decoys": 38,           # the decoys' places in prompt i, [seed, 38, i] (31 until 0.3)
}

#: Draws from ``default_rng(seed)`` itself (no stream number): kept so that their results stay as they are.
ROOT: dict[str, str] = {
    "ablation": "the random control heads of each cluster, then the sample of sequences",
    "probe": "the probe's training order (and torch.manual_seed for its initial weights)",
    "segments": "the sentence pairs of the segment reader (model/segments.py)",
}

#: Draws per corpus example, ``default_rng([seed, example.index, *more])``: the same whatever the batching.
PER_EXAMPLE: dict[str, tuple[int, ...]] = {
    "splits.held_out": (),            # the held-out split of a sentence (analyses/splits.py)
    "similarity.queries": (),         # the query tokens kept for the similarity (the same draw as the split)
    "losses.mask": (1,),              # the masked-LM positions of an example (model/losses.py)
}


@dataclass(frozen=True)
class Seeds:
    """The run's seed and its named streams (:data:`STREAMS`)."""

    seed: int
    """The run's ``--seed``."""

    def key(self, name: str, *more: int) -> list[int]:
        """The seed sequence of stream ``name`` (``[seed, number, *more]``), as written to probes' records."""
        return [int(self.seed), STREAMS[name], *(int(m) for m in more)]

    def rng(self, name: str, *more: int) -> np.random.Generator:
        """A generator of stream ``name`` (``more``: the item drawn for, when the stream is drawn per item)."""
        return np.random.default_rng(self.key(name, *more))

    def per_example(self, name: str, index: int) -> np.random.Generator:
        """A generator of draw ``name`` of :data:`PER_EXAMPLE` for the corpus example ``index``."""
        return np.random.default_rng([int(self.seed), int(index), *PER_EXAMPLE[name]])

    def root(self, name: str) -> np.random.Generator:
        """``default_rng(seed)``: the draws listed in :data:`ROOT` only."""
        if name not in ROOT:
            raise KeyError(f"{name} is not a root draw of headscope.seeds.ROOT")
        return np.random.default_rng(int(self.seed))
