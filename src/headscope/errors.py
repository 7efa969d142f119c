"""Errors that several layers raise, kept at the bottom so that none has to import another for them."""

from __future__ import annotations


class AttentionUnavailableError(RuntimeError):
    """The model cannot return attention weights (no eager attention, or no ``output_attentions``)."""
