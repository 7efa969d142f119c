"""Corpus readers: raw text, CoNLL-U treebanks, coreference documents; and packing text into segments."""

from headscope.corpus.conllu import collapse_relation, read_conllu
from headscope.corpus.text import read_text, split_words
from headscope.corpus.types import Document, Sentence

__all__ = ["Document", "Sentence", "collapse_relation", "read_conllu", "read_text", "split_words"]
