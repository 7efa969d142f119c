"""Texts and treebanks from memory: Python lists, a pandas Series, a Hugging Face ``datasets`` dataset.

A :class:`TextSource` is a stream of *rows*, each one document: a string (its lines are its sentences, as in a
raw-text file; blank lines are ignored) or a list of strings (its sentences). It is read lazily, row by row, so
a ``datasets.IterableDataset`` is streamed and never loaded whole, and ``--max-segments`` stops the stream.

Everything that can be checked before the pass is checked when the source is made (:func:`text_source`,
:func:`open_dataset`), each with a one-line error: an empty source, a missing text column, a column or row that
holds something other than text. A *missing* row (``None``, a float NaN in a pandas column) is not an error: it
is skipped with a warning naming the row, counted as ``skipped`` in ``run.json``. In the manifest a row is named
by the source's label and its position (0-based, as Python and pandas count): ``texts:3``.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headscope.config import MEMORY
from headscope.corpus.text import text_sentence
from headscope.corpus.types import Document, Sentence
from headscope.errors import UsageError
from headscope.manifest import Manifest, sha256_file


class DatasetError(UsageError):
    """A dataset or in-memory text that cannot be read (the message says what is wrong; exit status 2)."""


@dataclass
class MemoryCorpus:
    """What a run reads besides files: a text source (``texts=`` or ``--dataset``) and in-memory treebank
    sentences (``treebank=[conllu.TokenList, ...]``, named :data:`MEMORY` in ``RunConfig.treebank``)."""

    texts: TextSource | None = None
    tokenlists: list[Any] | None = None


@dataclass
class TextSource:
    """Rows of text from memory or a dataset, each a document (see the module)."""

    label: str
    """How the manifest names the source (``texts``, the dataset's path or hub name)."""
    rows: Callable[[], Iterable[Any]]
    """A fresh iterable over the rows (called once per pass)."""
    record: dict[str, Any] = field(default_factory=dict)
    """The manifest's entry: kind, name, split, column, rows, fingerprint; ``rows_read`` after a pass."""
    estimate: int | None = None
    """Sentences in the source, when known without reading it (for the progress bar)."""

    def documents(self, manifest: Manifest) -> Iterator[Document]:
        """The source's documents; every missing or unreadable row recorded in ``manifest`` with its position."""
        for row, value in enumerate(self.rows()):
            self.record["rows_read"] = row + 1
            sentences = self._sentences(row, value, manifest)
            if sentences:
                yield Document(sentences, self.label, row)

    def _sentences(self, row: int, value: Any, manifest: Manifest) -> list[Sentence]:
        if _missing(value):
            manifest.skip(self.label, row, f"row is missing ({value!r}), not text; skipped")
            return []
        if isinstance(value, str):
            lines = value.splitlines()
        elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            lines = list(value)
        else:
            manifest.skip(self.label, row, f"row holds {_kind(value)}, not text; skipped")
            return []
        manifest.count("sentences_read", sum(1 for line in lines if line.strip()))
        sentences = [text_sentence(line.strip(), self.label, row) for line in lines if line.strip()]
        for sentence in sentences:
            if not sentence.words:
                manifest.skip(self.label, row, "a sentence of this row has no words")
        sentences = [s for s in sentences if s.words]
        if not sentences:
            manifest.skip(self.label, row, "row has no words; skipped")
        return sentences


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]


def _check_row(label: str, row: int, value: Any) -> None:
    """Refuse a row that is neither text, a list of texts, nor missing: one line naming the row."""
    if _missing(value) or isinstance(value, str):
        return
    if isinstance(value, (list, tuple)):
        for k, sentence in enumerate(value):
            if not isinstance(sentence, str):
                raise DatasetError(f"{label}[{row}][{k}] is {_kind(sentence)}, not a string (a row is a string, or "
                                   "a list of sentence strings)")
        return
    raise DatasetError(f"{label}[{row}] is {_kind(value)}, not a string (a row is a string, or a list of sentence "
                       "strings)")


def _hash_rows(rows: Iterable[Any]) -> str:
    h = hashlib.sha256()
    for value in rows:
        if isinstance(value, str):
            h.update(b"s" + value.encode("utf-8", "surrogatepass") + b"\x1e")
        elif isinstance(value, (list, tuple)):
            h.update(b"l" + "\x1f".join(value).encode("utf-8", "surrogatepass") + b"\x1e")
        else:
            h.update(b"-\x1e")
    return h.hexdigest()


def _lines(value: Any) -> int:
    if isinstance(value, str):
        return sum(1 for line in value.splitlines() if line.strip())
    return len(value) if isinstance(value, (list, tuple)) else 0


def is_dataset(obj: Any) -> bool:
    """True for a ``datasets`` Dataset, IterableDataset or DatasetDict (found without importing datasets)."""
    return type(obj).__module__.startswith("datasets.")


def text_source(texts: Any, text_column: str | None = None, label: str = "texts") -> TextSource:
    """A :class:`TextSource` from what a notebook holds, checked now (each problem one line, before any pass).

    Parameters
    ----------
    texts : list of str, list of list of str, pandas.Series, pandas.DataFrame, datasets.Dataset or IterableDataset
        Each row one document: a string (its lines are its sentences) or a list of sentence strings.
    text_column : str, optional
        The column of a DataFrame or dataset that holds the text (default: its only text column).
    label : str
        The source's name in the manifest.
    """
    if isinstance(texts, (str, bytes)):
        raise DatasetError(f"{label} must be a list of documents, got one {type(texts).__name__} (wrap it: "
                           f"{label}=[...])")
    if is_dataset(texts):
        return dataset_source(texts, text_column, label=label, record={"kind": type(texts).__name__})
    kind = type(texts).__name__
    if kind == "DataFrame":
        column = _choose_column(label, list(texts.columns), text_column,
                                [c for c in texts.columns if texts[c].dtype == object or
                                 str(texts[c].dtype).startswith(("string", "str"))])
        texts, label = texts[column], f"{label}[{column!r}]"
    elif text_column is not None and kind != "Series":
        raise DatasetError(f"text_column={text_column!r} is for a DataFrame or a dataset; {label} is a {kind}")
    if kind in ("Series", "DataFrame"):
        values = texts.tolist()
    elif isinstance(texts, (list, tuple)):
        values = list(texts)
    else:
        raise DatasetError(f"{label} must be a list of strings, a list of lists of strings, a pandas Series or "
                           f"a datasets Dataset, got {kind}")
    if not values:
        raise DatasetError(f"{label} is empty: no document to analyse")
    for row, value in enumerate(values):
        _check_row(label, row, value)
    record = {"kind": kind, "rows": len(values), "sha256": _hash_rows(values)}
    if kind in ("Series", "DataFrame") and getattr(texts, "name", None) is not None:
        record["column"] = str(texts.name)
    return TextSource(label, lambda: values, record, sum(_lines(v) for v in values))


def _choose_column(label: str, columns: list[str], wanted: str | None, texty: list[str]) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise DatasetError(f"{label} has no column {wanted!r} (columns: {', '.join(map(str, columns))})")
        return wanted
    if len(texty) == 1:
        return str(texty[0])
    raise DatasetError(f"{label} has {'no' if not texty else 'several'} text columns ({', '.join(map(str, columns))}"
                       "): name the one to read with text_column= (--text-column)")


def _feature_is_text(feature: Any) -> bool | None:
    """True for a string column or a list of strings, False for anything else, None when unknown."""
    if feature is None:
        return None
    dtype = getattr(feature, "dtype", None)
    if dtype in ("string", "large_string"):
        return True
    inner = getattr(feature, "feature", None)
    if inner is not None:
        return getattr(inner, "dtype", None) in ("string", "large_string")
    return False


def dataset_source(dataset: Any, text_column: str | None, *, label: str, record: dict[str, Any],
                   split: str | None = None) -> TextSource:
    """A :class:`TextSource` over one column of a ``datasets`` Dataset or IterableDataset, streamed row by row.

    A DatasetDict needs ``split`` (default: its only split, or ``train``).
    """
    if type(dataset).__name__ in ("DatasetDict", "IterableDatasetDict") or (
            hasattr(dataset, "keys") and not hasattr(dataset, "features")):
        dataset = _pick_split(dataset, split, label)
    if split is None and getattr(dataset, "split", None) is not None:
        split = str(dataset.split)
    streamed = type(dataset).__name__ == "IterableDataset"
    if not streamed and len(dataset) == 0:
        raise DatasetError(f"{label} is empty: no row to analyse")
    features = getattr(dataset, "features", None)
    columns = list(features) if features is not None else list(getattr(dataset, "column_names", None) or [])
    if not columns and streamed:
        first = next(iter(dataset), None)
        if first is None:
            raise DatasetError(f"{label} is empty: no row to analyse")
        columns = list(first)
    texty = [c for c in columns if features is None or _feature_is_text(features.get(c))]
    column = _choose_column(label, columns, text_column, texty)
    if features is not None and _feature_is_text(features.get(column)) is False:
        raise DatasetError(f"{label}: column {column!r} holds {features[column]}, not text")
    if streamed and next(iter(dataset), None) is None:
        raise DatasetError(f"{label} is empty: no row to analyse")
    rows = dataset.select_columns([column])
    record = {**record, "split": split, "column": column,
              "rows": None if streamed else len(dataset),
              "fingerprint": getattr(dataset, "_fingerprint", None)}

    def stream() -> Iterator[Any]:
        for item in rows:
            yield item[column]

    return TextSource(label, stream, record, None if streamed else len(dataset))


def _pick_split(dataset: Any, split: str | None, label: str) -> Any:
    splits = list(dataset.keys())
    if split is None:
        if len(splits) == 1:
            split = splits[0]
        elif "train" in splits:
            split = "train"
        else:
            raise DatasetError(f"{label} has the splits {', '.join(splits)}: choose one with --split")
    if split not in splits:
        raise DatasetError(f"{label} has no split {split!r} (splits: {', '.join(splits)})")
    return dataset[split]


def open_dataset(name: str, split: str | None = None, text_column: str | None = None) -> TextSource:
    """``--dataset``: a dataset saved with ``save_to_disk``, parquet or JSON-lines file(s), or a hub name.

    Files are streamed (never loaded whole). A hub name is tried only where the hub answers: offline
    (``HF_HUB_OFFLINE``) or unreachable, it fails at once naming the local forms instead.
    """
    try:
        import datasets
    except ImportError:
        raise DatasetError(f"--dataset {name}: the datasets package is not installed: pip install datasets") from None
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # our own progress bar speaks for the run
    path = Path(name).expanduser()
    record: dict[str, Any] = {"kind": "dataset", "name": name}
    if path.is_dir() and any((path / f).is_file() for f in ("dataset_info.json", "state.json",
                                                           "dataset_dict.json")):
        loaded = datasets.load_from_disk(str(path))
        return dataset_source(loaded, text_column, label=name, record={**record, "format": "save_to_disk"},
                              split=split)
    files = _data_files(path)
    if files:
        fmt = "parquet" if files[0].suffix == ".parquet" else "json"
        stream = datasets.load_dataset(fmt, data_files=[str(f) for f in files], split=split or "train",
                                       streaming=True)
        record.update(format=fmt, files=[{"path": str(f), "sha256": sha256_file(f)} for f in files])
        source = dataset_source(stream, text_column, label=name, record=record, split=split or "train")
        source.record["fingerprint"] = hashlib.sha256("".join(f["sha256"] for f in record["files"]).encode()
                                                      ).hexdigest()
        return source
    if path.exists() or name.startswith((".", "/", "~")):
        raise DatasetError(f"--dataset {name}: not a dataset saved with save_to_disk, nor parquet / JSON-lines "
                           "files")
    _check_hub(name)
    stream = datasets.load_dataset(name, split=split or "train", streaming=True)
    return dataset_source(stream, text_column, label=name, record={**record, "format": "hub"},
                          split=split or "train")


_SUFFIXES = (".parquet", ".jsonl", ".json")


def _data_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path] if path.suffix in _SUFFIXES else []
    if path.is_dir():
        for suffix in _SUFFIXES:
            found = sorted(path.glob(f"*{suffix}"))
            if found:
                return found
    return []


def _check_hub(name: str) -> None:
    """Fail at once when hub dataset ``name`` cannot be reached (one metadata request, no retries)."""
    from huggingface_hub import HfApi, constants

    hint = "a local dataset (save_to_disk folder) or parquet / JSON-lines files"
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise DatasetError(f"--dataset {name}: not a local path, and the Hugging Face hub is offline "
                           f"(HF_HUB_OFFLINE); give {hint}")
    try:
        HfApi().dataset_info(name, timeout=10)
    except Exception as exc:  # not found, or any transport failure: either way it cannot be read
        raise DatasetError(f"--dataset {name}: not a local path, and the Hugging Face hub cannot give it "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}); give "
                           f"{hint}") from None


# --- CoNLL-U from memory ----------------------------------------------------------------------------------

def tokenlist_blocks(tokenlists: list[Any]) -> Iterator[tuple[int, list[tuple[int, str]]]]:
    """``conllu.TokenList`` objects as the CoNLL-U reader's blocks: each sentence serialised back to CoNLL-U,
    its lines numbered as in the file all of them would make written one after the other (so a problem is
    named by that line, as for a treebank file)."""
    number = 1
    for tokenlist in tokenlists:
        lines = [line for line in tokenlist.serialize().splitlines() if line.strip()]
        yield number, [(number + i, line) for i, line in enumerate(lines)]
        number += len(lines) + 1  # the blank line after each sentence


def check_tokenlists(tokenlists: Any, label: str = "treebank") -> list[Any]:
    """The list of ``conllu.TokenList`` of ``treebank=``, refused when empty or holding anything else."""
    items = list(tokenlists)
    if not items:
        raise DatasetError(f"{label} is empty: no sentence to analyse")
    for k, item in enumerate(items):
        if not hasattr(item, "serialize") or not hasattr(item, "metadata"):
            raise DatasetError(f"{label}[{k}] is {_kind(item)}, not a conllu.TokenList")
    return items


def tokenlists_record(tokenlists: list[Any]) -> dict[str, Any]:
    """The manifest's entry of an in-memory treebank: how many sentences, and the sha256 of their CoNLL-U."""
    h = hashlib.sha256()
    for tokenlist in tokenlists:
        h.update(tokenlist.serialize().encode("utf-8"))
    return {"path": MEMORY, "role": "treebank", "kind": "conllu.TokenList", "rows": len(tokenlists),
            "sha256": h.hexdigest()}
