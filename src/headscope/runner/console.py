"""What a run says on stderr when it is called from Python: the command line's progress lines and warnings.

The command line configures logging itself (``headscope: ...`` lines; progress lines without ``-v``). A
Python caller usually configures nothing: Python then drops INFO records (the progress lines when stderr is
not a terminal: a run of minutes said nothing) and prints warnings bare. :func:`console_logging` gives such a
caller the command line's output for the duration of one run, and leaves logging that the caller (or the
command line) configured alone.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from headscope.engine.progress import logger as progress_logger

F = TypeVar("F", bound=Callable[..., Any])


class _Format(logging.Formatter):
    """``headscope: message`` for headscope's records (as the command line writes them), ``name: message`` for
    another library's."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            message = f"{message}\n{record.exc_text}"
        top = record.name.split(".")[0]
        return f"{'headscope' if top == 'headscope' else record.name}: {message}"


@contextlib.contextmanager
def console_logging(quiet: bool = False) -> Iterator[None]:
    """Within the block, when nothing configured logging: log records to stderr as ``headscope: ...``, with
    the progress lines (``headscope.progress`` at INFO) unless ``quiet``.

    "Configured" means a handler on the root logger or on ``headscope`` (the command line's
    ``logging.basicConfig``, an application's, pytest's): then nothing changes. A bar on a terminal is drawn
    by :class:`~headscope.engine.progress.Tracker` either way; the handler sits on the root logger so that
    the bar's logging redirect writes these lines above the bar.
    """
    if logging.root.handlers or logging.getLogger("headscope").handlers:
        yield
        return
    handler = logging.StreamHandler()  # sys.stderr as it is now
    handler.setFormatter(_Format())
    level = progress_logger.level
    progress_logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logging.root.addHandler(handler)
    try:
        yield
    finally:
        logging.root.removeHandler(handler)
        progress_logger.setLevel(level)


def with_console_logging(function: F) -> F:
    """``function(config=None, /, **kwargs)`` (:func:`headscope.run`) inside :func:`console_logging`, quiet
    when ``quiet`` (the keyword, else ``config.quiet``) says so."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        config = args[0] if args else None
        quiet = bool(kwargs.get("quiet", getattr(config, "quiet", False)))
        with console_logging(quiet):
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
