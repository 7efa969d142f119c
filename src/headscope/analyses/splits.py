"""How treebank examples are split into a selection (training) part and a held-out (evaluation) part.

Shared by ``syntax`` (best head picked on the selection split, scored held-out) and ``probe`` (classifiers
trained on one split, evaluated on the other), so both split the same data the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headscope.seeds import Seeds

if TYPE_CHECKING:
    from headscope.model.encode import Example


def split_of(example: Example, treebanks: list[str], seed: int, held_out_fraction: float) -> int:
    """The split of an example: 0 selection / training, 1 held-out / evaluation.

    With two or more treebanks, a treebank sentence's split is given by its file (the last file is
    held out). Otherwise (one treebank, silver parses of raw text) it is a seeded draw per example that
    depends only on ``seed`` and ``example.index``, so it is the same whatever the batching.
    """
    if len(treebanks) >= 2 and example.kind == "sentence":
        files = [str(t) for t in treebanks]
        if example.file in files:
            return int(files.index(example.file) == len(files) - 1)
    return int(Seeds(seed).per_example("splits.held_out", example.index).random() < held_out_fraction)


def split_description(treebanks: list[str], held_out_fraction: float, what: tuple[str, str]) -> str:
    """How :func:`split_of` splits this run's data, in words (for ``run.json`` and the report)."""
    if len(treebanks) >= 2:
        return f"{what[0]}: {treebanks[0]}; {what[1]}: {treebanks[-1]}"
    return (f"seeded random split of the examples: {1 - held_out_fraction:.0%} {what[0]}, "
            f"{held_out_fraction:.0%} {what[1]}")
