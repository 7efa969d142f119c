"""Stopping a run cleanly on Ctrl-C or SIGTERM: finish the batch in hand, checkpoint, exit with 130."""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any


class RunInterrupted(KeyboardInterrupt):
    """The run was stopped by a signal; ``checkpoint`` is where it can resume from (None: nothing saved)."""

    def __init__(self, message: str, checkpoint: str | None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


class StopOnSignal:
    """While active, SIGINT and SIGTERM set :attr:`requested` instead of raising; a second one raises.

    The run loop checks :attr:`requested` between batches, so a stop costs at most one batch. Outside the
    main thread (signals cannot be handled there) it does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt  # asked twice: stop now
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
