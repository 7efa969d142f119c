"""The packaged default corpus: the real Wikipedia sample that ``gensim`` ships in its test data.

The MediaWiki dump is turned once into plain text (one sentence per line, a blank line between articles)
and cached, so that every file:line in ``run.json`` points into a file the user can open.
"""

from __future__ import annotations

import bz2
import importlib.util
import os
import re
from pathlib import Path

WIKI_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
#: Bump when the extraction changes, so cached text is rebuilt.
EXTRACTION_VERSION = 1

_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9])")
_ABBREV = re.compile(r"\b(?:[A-Z]|Mr|Mrs|Ms|Dr|St|Jr|Sr|vs|etc|e\.g|i\.e|c|ca|No|Vol|pp|U\.S)\.$")
_MARKUP = re.compile(r"'{2,}|\[\[|\]\]|\{\{|\}\}|<[^>]+>|&[a-z]+;")


def dump_path() -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default corpus needs gensim's test data: pip install gensim")
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data" / WIKI_DUMP
    if not path.is_file():
        raise FileNotFoundError(f"gensim is installed but its Wikipedia sample is missing: {path}")
    return path


def cache_dir() -> Path:
    root = os.environ.get("HEADSCOPE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "headscope")
    return Path(root)


def split_sentences(paragraph: str) -> list[str]:
    """Rule-based sentence split: at ., ! or ? followed by space and a capital, not after abbreviations."""
    pieces = _SENT_END.split(paragraph)
    out: list[str] = []
    for piece in pieces:
        if out and _ABBREV.search(out[-1]):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return [s.strip() for s in out if s.strip()]


def article_sentences(markup: str) -> list[str]:
    """Plain sentences of one article: markup stripped, headings, lists and tables dropped."""
    from gensim.corpora.wikicorpus import filter_wiki

    text = filter_wiki(markup)
    sentences: list[str] = []
    for para in text.split("\n"):
        para = _MARKUP.sub("", para).strip()
        if not para or para.startswith(("=", "*", "#", "|", "!", ":", ";", "{")):
            continue
        para = re.sub(r"\s+", " ", para)
        for s in split_sentences(para):
            if len(s.split()) >= 4 and s[-1] in ".!?\"')":
                sentences.append(s)
    return sentences


def wikipedia_sample_text() -> Path:
    """Path of the extracted sample (built and cached on first use)."""
    from gensim.corpora.wikicorpus import extract_pages

    src = dump_path()
    target = cache_dir() / f"wikipedia-sample-v{EXTRACTION_VERSION}.txt"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    with bz2.open(src) as dump, open(tmp, "w", encoding="utf-8") as out:
        for _title, markup, _pageid in extract_pages(dump):
            sentences = article_sentences(markup)
            if len(sentences) >= 2:
                out.write("\n".join(sentences) + "\n\n")
    tmp.replace(target)
    return target
