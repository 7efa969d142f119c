"""Dependency relation labels as the analyses that read trees group them (``syntax``, ``roles``).

The rule lives here, beside the analyses that apply it, rather than being imported from the corpus layer: an
analysis reads the labels its examples' sentences carry (``Sentence.deprels``, subtypes kept) and groups them
itself. It is the rule of :func:`headscope.corpus.conllu.collapse_relation` (``tests/test_conllu.py`` checks
that the two agree).
"""

from __future__ import annotations


def collapse_relation(deprel: str) -> str:
    """The universal relation without its subtype: ``obl:tmod`` -> ``obl``."""
    return deprel.split(":", 1)[0]
