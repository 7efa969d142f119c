"""The run manifest: what was read, used, truncated and skipped, with file and line, for ``run.json``.

Every reader and the encoder report bad input here instead of dropping it: :meth:`Manifest.skip`,
:meth:`Manifest.truncate` and :meth:`Manifest.warn` log a warning naming the file and line and keep a record,
so the counts in ``run.json`` always add up.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("headscope")

#: How many individual events of one kind run.json lists before it only counts them.
MAX_LISTED_EVENTS = 1000

#: Counts run.json always has, 0 when nothing of the kind happened.
ALWAYS_COUNTED = ("skipped", "truncated", "warnings")


@dataclass(frozen=True)
class Event:
    """One piece of input that was skipped, truncated or warned about."""

    kind: str
    """``skipped``, ``truncated`` or ``warning``."""
    file: str
    """The input file (or ``<packaged:...>`` for packaged data); empty for a warning about the whole run."""
    line: int | None
    """1-based line in ``file`` where the item starts, when known."""
    reason: str
    """What was wrong, in words a user can act on."""
    batch: int | None = None
    """The batch (shard of the pass, as numbered in checkpoints and sent to Ray workers) being read when
    this came up; None outside the main pass."""

    def __str__(self) -> str:
        if not self.file:
            return self.reason
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.reason}"


@dataclass
class Manifest:
    """Counts and events of one run; serialised into ``run.json``."""

    counts: Counter = field(default_factory=Counter)
    events: list[Event] = field(default_factory=list)
    event_counts: Counter = field(default_factory=Counter)
    files: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    batch: int | None = None
    """The batch being read (set by :meth:`headscope.engine.context.RunContext.groups`)."""
    log_events: bool = True
    """Log each event as a warning; False for a re-read of input the main pass already reported (an
    analysis's own pass streams the corpus again), so no warning is printed twice."""

    def add_file(self, path: str | Path, role: str) -> None:
        """Record an input file with its sha256 and role (text, treebank, coref, ...)."""
        p = Path(path)
        entry: dict[str, Any] = {"path": str(p), "role": role}
        if p.is_file():
            entry["sha256"] = sha256_file(p)
            entry["bytes"] = p.stat().st_size
        self.files.append(entry)

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def _event(self, kind: str, file: str | Path, line: int | None, reason: str, level: int) -> None:
        event = Event(kind, str(file), line, reason, self.batch)
        self.event_counts[kind] += 1
        if self.event_counts[kind] <= MAX_LISTED_EVENTS:
            self.events.append(event)
        if self.log_events:
            logger.log(level, "%s: %s", kind, event)

    def skip(self, file: str | Path, line: int | None, reason: str) -> None:
        """An input item (sentence, document, line) was not used at all."""
        self.counts["skipped"] += 1
        self._event("skipped", file, line, reason, logging.WARNING)

    def truncate(self, file: str | Path, line: int | None, reason: str) -> None:
        """An input item was used, but cut to fit the model."""
        self.counts["truncated"] += 1
        self._event("truncated", file, line, reason, logging.WARNING)

    def warn(self, file: str | Path, line: int | None, reason: str) -> None:
        """An input item was used with a caveat (for example a word the tokenizer dropped)."""
        self.counts["warnings"] += 1
        self._event("warning", file, line, reason, logging.WARNING)

    def warn_run(self, reason: str) -> None:
        """A caveat about the whole run (an option capped, an analysis without input), counted like the rest."""
        self.counts["warnings"] += 1
        self._event("warning", "", None, reason, logging.WARNING)

    def to_dict(self) -> dict[str, Any]:
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for e in self.events:
            entry = {"file": e.file, "line": e.line, "reason": e.reason}
            if e.batch is not None:
                entry["batch"] = e.batch
            by_kind.setdefault(e.kind, []).append(entry)
        return {
            # skipped, truncated and warnings are always there (0 when nothing happened), so a reader can index them.
            "counts": dict(sorted({**dict.fromkeys(ALWAYS_COUNTED, 0), **self.counts}.items())),
            "events": {k: {"total": self.event_counts[k], "listed": v} for k, v in by_kind.items()},
            "files": self.files,
            **({"notes": self.notes} if self.notes else {}),
        }


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
