"""``headscope view``: one self-contained HTML page showing every head's attention on one input.

The page shows all heads as a grid of small maps (one canvas), the chosen head large, and a head-view of
lines from each token to the tokens it attends to, at word level (units, as the analyses see them) or
piece level. It stays fast for 512 tokens and 144 heads because everything is drawn on canvas from one
typed array: no DOM element per cell.

Weights are stored as one byte each, ``round(255 * sqrt(weight))`` (:mod:`headscope.report.viewpage`, which
writes the page; the report writes one for each sequence the ``examples`` analysis kept).

>>> from headscope.viewer import view
>>> page = view("The cat sat on the mat.", model="minilm", out="cat.html")  # doctest: +SKIP
>>> page  # in Jupyter, the page itself, inline  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import html
import os
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headscope.config import WordMode
from headscope.corpus.conllu import read_conllu
from headscope.corpus.text import read_text, text_sentence
from headscope.corpus.types import Sentence
from headscope.errors import UsageError
from headscope.manifest import Manifest
from headscope.report.viewpage import dequantize_sqrt, quantize_sqrt, render_view, view_data

if TYPE_CHECKING:
    from headscope.model.load import LoadedModel

#: Longest input the viewer takes by default, in model tokens (capped by the model).
DEFAULT_MAX_LENGTH = 512

#: Largest page embedded in a notebook's output; a bigger one (long inputs of big models) is linked instead,
#: since the page would be stored in the notebook file and sent to the browser in one piece.
INLINE_MAX_BYTES = 20_000_000


class ViewPage(os.PathLike):
    """The page written by :func:`view`: its path, shown inline by Jupyter.

    :func:`view` returned a plain ``Path`` before; this object still behaves as one for callers (``str``,
    ``os.fspath``, ``open``, ``==`` with a path, and every ``Path`` attribute such as ``read_text`` or
    ``resolve``), and a notebook shows the page itself in an iframe.

    Parameters
    ----------
    path : path
        The HTML file.
    height : int
        Height of the notebook's iframe, in CSS pixels.
    """

    def __init__(self, path: str | os.PathLike[str], height: int = 760) -> None:
        self.path = Path(path)
        self.height = height

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"ViewPage({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (os.PathLike, str)):
            return self.path == Path(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.path)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names ViewPage lacks: the rest of the old return value's interface (a Path).
        if name == "path":  # not set yet (while unpickling): no recursion through self.path
            raise AttributeError(name)
        return getattr(self.path, name)

    def _repr_html_(self) -> str:
        """The page in a sandboxed iframe (``srcdoc``), or a link when it is larger than INLINE_MAX_BYTES."""
        size = self.path.stat().st_size
        if size > INLINE_MAX_BYTES:
            return (f"<p>headscope view: {html.escape(str(self.path))} ({size / 1e6:.0f} MB, too large to show "
                    f"inline; <a href='{html.escape(self.path.resolve().as_uri())}' target='_blank'>open it</a>)"
                    "</p>")
        page = self.path.read_text(encoding="utf-8")
        # allow-scripts without allow-same-origin: the page's script runs but cannot reach the notebook.
        return (f"<iframe srcdoc=\"{html.escape(page, quote=True)}\" sandbox=\"allow-scripts\" "
                f"style=\"width: 100%; height: {int(self.height)}px; border: 1px solid #ddd\" "
                f"title=\"headscope view: {html.escape(self.path.name)}\"></iframe>")


def input_sentences(text: str | None = None, file: str | Path | None = None,
                    treebank: str | Path | None = None, sentence: str = "1",
                    manifest: Manifest | None = None) -> list[Sentence]:
    """The sentences of the one input to show.

    Parameters
    ----------
    text : str, optional
        The input itself (split into words as raw-text files are).
    file : path, optional
        A raw-text file: its first document (up to the first blank line).
    treebank : path, optional
        A CoNLL-U file; ``sentence`` picks the sentence.
    sentence : str
        1-based position in ``treebank``, or a ``# sent_id``.
    """
    manifest = manifest if manifest is not None else Manifest()
    given = [x is not None for x in (text, file, treebank)]
    if sum(given) != 1:
        raise ValueError("give exactly one input: TEXT, --file or --treebank")
    if text is not None:
        typed = text_sentence(text.strip(), "<text>", 1)
        if not typed.words:
            raise ValueError("the text has no words")
        return [typed]
    if file is not None:
        for doc in read_text(file, manifest):
            if doc.sentences:
                return doc.sentences
        raise ValueError(f"{file}: no sentence to show" + "".join(f"; {e}" for e in manifest.events[:3]))
    assert treebank is not None
    position = int(sentence) if str(sentence).isdigit() else None
    for k, s in enumerate(read_conllu(treebank, manifest), start=1):
        if k == position or s.sent_id == sentence:
            return [s]
    raise ValueError(f"{treebank}: no sentence {sentence!r} (give a 1-based number or a sent_id)")


def view(text: str | None = None, *, model: str = "minilm", file: str | Path | None = None,
         treebank: str | Path | None = None, sentence: str = "1", out: str | Path = "headscope-view.html",
         max_length: int = DEFAULT_MAX_LENGTH, word_attention: WordMode = "mean", device: str = "auto",
         loaded: LoadedModel | None = None, force: bool = False) -> ViewPage:
    """Write a self-contained HTML page of every head's attention on one input; return it.

    Parameters
    ----------
    text, file, treebank, sentence
        The input (exactly one of ``text``, ``file``, ``treebank``); see :func:`input_sentences`.
    model : str
        Packaged short name, local directory or hub id.
    out : path
        The HTML file to write. An existing file is refused (before the model loads) unless ``force``.
    max_length : int
        Longer inputs are cut to this many tokens (capped by the model), and the page says so.
    word_attention : {"mean", "first"}
        How a split word's rows become one (see :func:`headscope.engine.wordlevel.word_attention`).
    loaded : LoadedModel, optional
        A model already loaded (a :class:`headscope.Session`'s), used instead of loading ``model``.
    force : bool
        Overwrite ``out`` when it exists.

    Returns
    -------
    ViewPage
        The page's path (``.path``; it also acts as a ``Path``), shown inline in a Jupyter notebook.
    """
    from headscope.engine.batch import collate
    from headscope.engine.capture import capture_stacked
    from headscope.engine.wordlevel import word_attention as to_words
    from headscope.model.encode import Encoder
    from headscope.model.load import load_model

    out = Path(out)
    if out.exists() and not force:  # a page written earlier is the user's until they say otherwise
        raise UsageError(f"{out} exists: pass --force (Python: force=True) to overwrite it, or --out to write "
                         "another file")
    manifest = Manifest()
    sentences = input_sentences(text, file, treebank, sentence, manifest)
    if loaded is None:
        loaded = load_model(model, device=device)
    info = loaded.info
    encoder = Encoder.for_model(loaded, min(max_length, info.max_length))
    example = encoder.encode(0, "sentence", sentences, None, manifest, truncate=True)
    if example is None:
        raise ValueError("; ".join(str(e) for e in manifest.events) or "the input could not be encoded")
    batch = collate([example], int(loaded.tokenizer.pad_token_id), loaded.device)
    attn = capture_stacked(loaded, batch)  # one short input: every layer is shown
    words = to_words(attn, batch.unit_of_piece, example.n_units, word_attention)
    shown = " ".join(s.as_text()[0] for s in sentences)  # what the model read (sentences joined as in a run)
    data = view_data(example, attn[0].cpu().numpy(), words[0].cpu().numpy(),
                     {"name": info.name, "n_layers": info.n_layers, "n_heads": info.n_heads}, shown,
                     [str(e) for e in manifest.events])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_view(data), encoding="utf-8")
    return ViewPage(out)


def add_view_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", nargs="?", help="the input text (or use --file / --treebank)")
    parser.add_argument("--model", default="minilm", help="packaged short name, local directory or hub id "
                        "(default: minilm)")
    parser.add_argument("--file", help="raw-text file: its first document is shown")
    parser.add_argument("--treebank", help="CoNLL-U file; --sentence picks the sentence")
    parser.add_argument("--sentence", default="1", help="1-based sentence number or sent_id in --treebank")
    parser.add_argument("--out", default="headscope-view.html", help="HTML file to write (default: "
                        "headscope-view.html); an existing file is refused unless --force")
    parser.add_argument("--force", action="store_true", help="overwrite --out when it exists")
    parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH,
                        help=f"cut longer inputs to this many tokens (default: {DEFAULT_MAX_LENGTH})")
    parser.add_argument("--word-attention", default="mean", choices=typing.get_args(WordMode),
                        help="how a split word's rows become one (default: mean)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def main_view(args: argparse.Namespace) -> int:
    path = view(args.text, model=args.model, file=args.file, treebank=args.treebank, sentence=args.sentence,
                out=args.out, max_length=args.max_length, word_attention=args.word_attention,
                device=args.device, force=args.force)
    print(f"wrote {path}")
    return 0


__all__ = ["ViewPage", "dequantize_sqrt", "input_sentences", "quantize_sqrt", "render_view", "view", "view_data"]
