"""What a run says before its main pass: the analyses it runs, what their own passes cost, what ``all`` left
out and why."""

from __future__ import annotations

import logging
from typing import Any


def announce_plan(sequences: int | None, analyses: list[Any], ctx: Any, skipped: dict[str, str], expanded: bool
                  ) -> None:
    """Say before the main pass what the run will do and roughly what its analyses' own passes cost, in forwards
    of one sequence against the main pass's sequences (for ``--analyses all``, or whenever an analysis runs
    passes of its own), and what ``all`` left out and why. On the progress log: shown unless ``--quiet``.
    ``sequences`` is the corpus's segment limit (None: the whole corpus, its size unknown before the pass)."""
    costs = {a.name: a.planned_forwards(ctx, sequences or 1000) for a in analyses}
    extra = {name: n for name, n in costs.items() if n}
    if not expanded and not extra:
        return
    say = logging.getLogger("headscope.progress").info
    say("%s runs: %s", "--analyses all" if expanded else "the run", ", ".join(a.name for a in analyses))
    if extra:
        parts = ", ".join(f"{name} ~{n:,}" for name, n in sorted(extra.items(), key=lambda kv: -kv[1]))
        ratio = f", about {sum(extra.values()) / sequences:.0f}x the main pass" if sequences else ""
        say("besides the main pass (%s), their own passes run %s forwards of one sequence (a backward counts 2)%s",
            f"~{sequences} sequences" if sequences else "every sequence of the corpus", parts, ratio)
    if skipped:
        by_reason: dict[str, list[str]] = {}
        for name, why in skipped.items():
            by_reason.setdefault(why, []).append(name)
        say("left out of all: %s", "; ".join(f"{', '.join(names)} ({why})" for why, names in by_reason.items()))
