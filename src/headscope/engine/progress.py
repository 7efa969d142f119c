"""Signs of life for long work: a progress bar on a terminal, a log line every 30 s or 10 % elsewhere.

Every pass of a run (the main pass, each analysis's own pass, pruning's steps, retrieval's generations) goes
through :class:`Tracker` (or :func:`track` over an iterable), named by what it does and counted in its unit
(``importance: sequences``, ``pruning step 3/10: sequences``):

- on a terminal (``sys.stderr.isatty()``) or in a Jupyter notebook, a tqdm bar with rate and ETA (the
  notebook's widget through ``tqdm.auto`` where ipywidgets is installed, else the text bar); log
  records are written through the bar meanwhile (the root logger's handlers only, so each record is printed once);
- otherwise, an INFO record on the ``headscope.progress`` logger at least every :data:`LOG_INTERVAL_S`
  seconds or every :data:`LOG_FRACTION` of the work, and one when the work is done. The command line shows
  this logger without ``-v`` (``--quiet`` silences both).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

#: The logger of the progress lines (a child of ``headscope``; the CLI sets it to INFO unless ``--quiet``).
logger = logging.getLogger("headscope.progress")

#: At most this many seconds between two progress lines when stderr is not a terminal ...
LOG_INTERVAL_S = 30.0
#: ... and at most this share of the work (when the total is known).
LOG_FRACTION = 0.1

_redirecting = 0  # trackers with a bar open that redirect logging (only the outermost one does)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython already imported by it; never imported here)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # an IPython too broken to ask: a plain terminal is the safe answer
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _bar_class() -> Any:
    """tqdm's notebook widget in Jupyter when ipywidgets is there (``tqdm.auto``), else its text bar: without
    ipywidgets ``tqdm.auto`` in a notebook fails ("IProgress not found"), and the text bar renders there too."""
    if in_notebook():
        import importlib.util

        if importlib.util.find_spec("ipywidgets") is None:
            from tqdm.std import tqdm as text_bar

            return text_bar
    from tqdm.auto import tqdm

    return tqdm


class Tracker:
    """Progress of one piece of work: ``update(n)`` as it goes, ``close()`` (or a ``with`` block) at the end.

    Parameters
    ----------
    desc : str
        What is being done (``importance``, ``pruning step 3/10``); shown before the bar and in each line.
    unit : str
        What is counted (``sequences``, ``prompts``, ``steps``).
    total : int, optional
        How many units the work has, when known (``total`` can be set later).
    quiet : bool
        No bar and no lines.
    terminal : bool, optional
        Draw a bar (default: when ``sys.stderr`` is a terminal); else log lines.
    clock : callable
        Seconds, monotonic (a test passes a fake one).
    interval, fraction : float or None
        Log at least every ``interval`` seconds and every ``fraction`` of ``total`` (None: not by that rule).
    leave : bool
        Keep the finished bar on screen (False for repeated short passes).
    final : bool
        Log a last line when the work ends (False for work inside another tracked pass).
    """

    def __init__(self, desc: str, unit: str, total: int | None = None, quiet: bool = False, *,
                 terminal: bool | None = None, clock: Callable[[], float] = time.monotonic,
                 interval: float | None = LOG_INTERVAL_S, fraction: float | None = LOG_FRACTION,
                 leave: bool = True, final: bool = True) -> None:
        self.desc, self.unit, self.quiet, self.final = desc, unit, quiet, final
        self.n = 0
        self._total = total
        self._clock, self._interval, self._fraction = clock, interval, fraction
        self._t0 = self._last_time = clock()
        self._last_n = 0
        self._bar: Any = None
        self._redirect: contextlib.ExitStack | None = None
        self.closed = False
        if quiet:
            return
        if terminal if terminal is not None else (sys.stderr.isatty() or in_notebook()):
            self._open_bar(leave)

    def _open_bar(self, leave: bool) -> None:
        global _redirecting
        from tqdm.contrib.logging import logging_redirect_tqdm

        tqdm = _bar_class()

        self._bar = tqdm(total=self._total, desc=self.desc, unit=f" {self.unit}", dynamic_ncols=True, leave=leave)
        if _redirecting == 0:
            # Only the root logger: records of ``headscope`` propagate to it, and redirecting both printed each
            # warning twice (once bare through a handler added to ``headscope``, once through root's format).
            self._redirect = contextlib.ExitStack()
            self._redirect.enter_context(logging_redirect_tqdm(loggers=[logging.root]))
            _redirecting += 1

    @property
    def total(self) -> int | None:
        return self._total

    @total.setter
    def total(self, value: int | None) -> None:
        self._total = value
        if self._bar is not None:
            self._bar.total = value
            self._bar.refresh()

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.n += n
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = self._clock()
        due = self._interval is not None and now - self._last_time >= self._interval
        if not due and self._fraction is not None and self._total:
            step = max(1.0, self._fraction * self._total)
            due = self.n - self._last_n >= step or (self.n >= self._total > self._last_n)
        if due:
            self._log(now)

    def _log(self, now: float) -> None:
        self._last_time, self._last_n = now, self.n
        elapsed = now - self._t0
        if self._total and self.n >= self._total:
            logger.info("%s: %d/%d %s, done in %.0f s", self.desc, self.n, self._total, self.unit, elapsed)
        elif self._total:
            rest = (elapsed / self.n * (self._total - self.n)) if self.n else float("nan")
            logger.info("%s: %d/%d %s (%d%%), %.0f s, about %.0f s left", self.desc, self.n, self._total,
                        self.unit, 100 * self.n // self._total, elapsed, rest)
        else:
            logger.info("%s: %d %s, %.0f s", self.desc, self.n, self.unit, elapsed)

    def close(self) -> None:
        """End the work: close the bar, or log the final count when that was not the last line."""
        global _redirecting
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.close()
            if self._redirect is not None:
                self._redirect.close()
                _redirecting -= 1
        elif not self.quiet and self.final and self.n != self._last_n:
            self._log(self._clock())

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(iterable: Iterable[T], desc: str, unit: str, total: int | None = None, quiet: bool = False,
          weight: Callable[[T], int] | None = None, **kwargs: Any) -> Iterator[T]:
    """Yield the items of ``iterable``, counting each (``weight(item)`` units, default 1) in a :class:`Tracker`.

    ``total`` defaults to ``len(iterable)`` when it has one; other keywords go to :class:`Tracker`.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Tracker(desc, unit, total, quiet, **kwargs) as tracker:
        for item in iterable:
            yield item
            tracker.update(weight(item) if weight is not None else 1)
