"""Errors that several layers raise, kept at the bottom so that none has to import another for them."""

from __future__ import annotations


class AttentionUnavailableError(RuntimeError):
    """The model cannot return attention weights (no eager attention, or no ``output_attentions``)."""


class UsageError(ValueError):
    """A run asked for what it cannot do as given (an unknown analysis name, an analysis without its input, an
    option out of range): found before the model loads, or, when only the loaded model can tell (an analysis
    for decoder LMs on an encoder, a probe longer than the model's inputs), before any pass; ``headscope run``
    exits with code 2, as for any usage error."""


class MissingDependencyError(ImportError):
    """An optional package the run needs is not installed; the message names the ``pip install`` that brings it."""


class UnsupportedModelError(UsageError):
    """headscope cannot capture this model's attention exactly (cross-attention, pixels instead of text, an
    attention that is not a map of the sequence onto itself): refused before the pass with one line naming the
    architecture and what is missing (``headscope run`` exits with code 2). See docs/models.md."""


def unknown_analysis_message(name: str, names: list[str], all_name: str = "all") -> str:
    """``unknown analysis 'surfce'; did you mean 'surface'?`` and the names available (the registry's, or the
    catalog's before any analysis is imported)."""
    import difflib

    close = difflib.get_close_matches(name, [*names, all_name], n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown analysis {name!r}{hint} (available: {', '.join(sorted(names))}, or {all_name})"
