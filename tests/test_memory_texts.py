"""Texts and treebanks from memory (#37): a list, a list of lists, a pandas Series or DataFrame, a Dataset and an
IterableDataset of the same texts give the tables of the same text file; ``--dataset`` reads saved datasets,
parquet and JSON lines; bad input is refused before any pass, one line naming what is wrong."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import headscope
from headscope.cli import main
from headscope.corpus.memory import DatasetError
from test_inmemory import TEXTS, assert_same_tables, written

ANALYSES = ["surface", "examples"]


@pytest.fixture(scope="module")
def from_file(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> headscope.RunResult:
    path = written(TEXTS, tmp_path_factory.mktemp("texts") / "t.txt")
    return headscope.run(model=str(tiny_bert), text=[str(path)], analyses=ANALYSES, out=None, quiet=True)


def run(tiny_bert: Path, **kwargs: Any) -> headscope.RunResult:
    return headscope.run(model=str(tiny_bert), analyses=ANALYSES, out=None, quiet=True, **kwargs)


def test_a_list_a_series_and_a_dataframe_give_the_tables_of_the_file(tiny_bert: Path,
                                                                     from_file: headscope.RunResult) -> None:
    assert_same_tables(from_file, run(tiny_bert, texts=TEXTS))
    assert_same_tables(from_file, run(tiny_bert, texts=[t.splitlines() for t in TEXTS]))  # documents of sentences
    series = pd.Series(TEXTS, name="body")
    got = run(tiny_bert, texts=series)
    assert_same_tables(from_file, got)
    assert got.run["files"][0]["column"] == "body" and got.run["files"][0]["rows"] == 3
    frame = pd.DataFrame({"id": [1, 2, 3], "body": TEXTS, "lang": ["en"] * 3})
    assert_same_tables(from_file, run(tiny_bert, texts=frame, text_column="body"))
    assert got.run["counts"]["sentences_read"] == from_file.run["counts"]["sentences_read"]
    assert got.run["files"][0]["sha256"] == run(tiny_bert, texts=list(TEXTS)).run["files"][0]["sha256"]


def test_a_dataset_and_an_iterable_dataset_give_the_tables_of_the_file(tiny_bert: Path,
                                                                       from_file: headscope.RunResult) -> None:
    datasets = pytest.importorskip("datasets")
    table = datasets.Dataset.from_dict({"label": [0, 1, 0], "text": TEXTS})
    got = run(tiny_bert, texts=table, text_column="text")
    assert_same_tables(from_file, got)
    entry = got.run["files"][0]
    assert entry["kind"] == "Dataset" and entry["column"] == "text" and entry["rows"] == 3
    assert entry["fingerprint"] == table._fingerprint and got.run["config"]["dataset"] == "<memory>"
    streamed = table.to_iterable_dataset()
    got = run(tiny_bert, texts=streamed, text_column="text")
    assert_same_tables(from_file, got)
    assert got.run["files"][0]["rows_read"] == 3
    # the one text column is found without being named
    assert_same_tables(from_file, run(tiny_bert, texts=table))


def test_max_segments_stops_the_stream(tiny_bert: Path) -> None:
    datasets = pytest.importorskip("datasets")
    read: list[int] = []

    def rows() -> Any:
        for k in range(10_000):  # a stream far longer than the run reads
            read.append(k)
            yield {"text": f"The dog saw the cat {k}.\nThe man ran."}

    stream = datasets.IterableDataset.from_generator(rows)
    got = run(tiny_bert, texts=stream, max_segments=5)
    assert got.run["counts"]["segments"] == 5
    assert len(read) < 100  # the stream was stopped, not read whole


def test_missing_rows_are_skipped_with_a_warning_naming_the_row(tiny_bert: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    got = run(tiny_bert, texts=pd.Series([TEXTS[0], None, TEXTS[1], float("nan")]))
    assert got.run["counts"]["skipped"] == 2
    listed = got.run["events"]["skipped"]["listed"]
    assert [(e["file"], e["line"]) for e in listed] == [("texts", 1), ("texts", 3)]
    assert "texts:1: row is missing" in caplog.text


@pytest.mark.parametrize(("texts", "kwargs", "message"), [
    ([], {}, "texts is empty"),
    ("one string", {}, "texts must be a list of documents"),
    (["fine", 42], {}, r"texts\[1\] is int 42, not a string"),
    ([["fine", 3.5]], {}, r"texts\[0\]\[1\] is float 3.5, not a string"),
    (pd.DataFrame({"a": ["x"], "b": ["y"]}), {}, "several text columns"),
    (pd.DataFrame({"a": ["x"]}), {"text_column": "body"}, "has no column 'body' \\(columns: a\\)"),
])
def test_bad_texts_are_refused_in_one_line_before_the_model_loads(tiny_bert: Path, texts: Any,
                                                                  kwargs: dict[str, Any], message: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def no_load(*args: Any, **kw: Any) -> Any:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("headscope.runner.context.load_model", no_load)
    with pytest.raises(DatasetError, match=message) as info:
        run(tiny_bert, texts=texts, **kwargs)
    assert "\n" not in str(info.value)


def test_bad_datasets_are_refused_in_one_line(tiny_bert: Path) -> None:
    datasets = pytest.importorskip("datasets")
    with pytest.raises(DatasetError, match="is empty"):
        run(tiny_bert, texts=datasets.Dataset.from_dict({"text": []}))
    with pytest.raises(DatasetError, match="is empty"):
        run(tiny_bert, texts=datasets.IterableDataset.from_generator(
            lambda: iter([]), features=datasets.Features({"text": datasets.Value("string")})))
    table = datasets.Dataset.from_dict({"text": TEXTS, "label": [1, 2, 3]})
    with pytest.raises(DatasetError, match=r"no column 'body' \(columns: text, label\)"):
        run(tiny_bert, texts=table, text_column="body")
    with pytest.raises(DatasetError, match=r"column 'label' holds .*int64.*, not text"):
        run(tiny_bert, texts=table, text_column="label")


def test_a_streamed_row_that_is_not_text_is_skipped_with_a_warning(tiny_bert: Path) -> None:
    datasets = pytest.importorskip("datasets")

    def rows() -> Any:
        yield {"text": TEXTS[0]}
        yield {"text": None}
        yield {"text": TEXTS[1]}

    got = run(tiny_bert, texts=datasets.IterableDataset.from_generator(rows))
    assert got.run["counts"]["skipped"] == 1
    assert got.run["events"]["skipped"]["listed"][0]["line"] == 1


def test_treebank_sentences_from_memory_give_the_tables_of_the_file(tiny_bert: Path, tmp_path: Path) -> None:
    conllu = pytest.importorskip("conllu")
    text = ("# text = The dog saw the cat.\n"
            "1\tThe\tthe\tDET\t_\t_\t2\tdet\t_\t_\n2\tdog\tdog\tNOUN\t_\t_\t3\tnsubj\t_\t_\n"
            "3\tsaw\tsee\tVERB\t_\t_\t0\troot\t_\t_\n4\tthe\tthe\tDET\t_\t_\t5\tdet\t_\t_\n"
            "5\tcat\tcat\tNOUN\t_\t_\t3\tobj\t_\tSpaceAfter=No\n6\t.\t.\tPUNCT\t_\t_\t3\tpunct\t_\t_\n\n"
            "# text = The man ran.\n"
            "1\tThe\tthe\tDET\t_\t_\t2\tdet\t_\t_\n2\tman\tman\tNOUN\t_\t_\t3\tnsubj\t_\t_\n"
            "3\tran\trun\tVERB\t_\t_\t0\troot\t_\tSpaceAfter=No\n4\t.\t.\tPUNCT\t_\t_\t3\tpunct\t_\t_\n\n")
    path = tmp_path / "tb.conllu"
    path.write_text(text, encoding="utf-8")
    analyses = ["surface", "syntax"]
    expected = headscope.run(model=str(tiny_bert), treebank=[str(path)], analyses=analyses, out=None, quiet=True)
    got = headscope.run(model=str(tiny_bert), treebank=conllu.parse(text), analyses=analyses, out=None,
                        quiet=True)
    assert_same_tables(expected, got)
    assert got.run["files"][0]["rows"] == 2 and got.run["config"]["treebank"] == ["<memory>"]
    with pytest.raises(DatasetError, match=r"treebank\[1\] is int 5, not a conllu.TokenList"):
        headscope.run(model=str(tiny_bert), treebank=[conllu.parse(text)[0], 5], out=None, quiet=True)


@pytest.mark.parametrize("form", ["save_to_disk", "parquet", "jsonl"])
def test_the_command_line_reads_a_dataset(form: str, tiny_bert: Path, tmp_path: Path,
                                          from_file: headscope.RunResult) -> None:
    datasets = pytest.importorskip("datasets")
    table = datasets.Dataset.from_dict({"id": [1, 2, 3], "body": TEXTS})
    if form == "save_to_disk":
        where = tmp_path / "saved"
        datasets.DatasetDict({"train": table, "test": table.select([0])}).save_to_disk(str(where))
    elif form == "parquet":
        where = tmp_path / "texts.parquet"
        table.to_parquet(str(where))
    else:
        where = tmp_path / "texts.jsonl"
        where.write_text("".join(json.dumps({"id": k, "body": t}) + "\n" for k, t in enumerate(TEXTS)),
                         encoding="utf-8")
    out = tmp_path / "run"
    code = main(["run", "--model", str(tiny_bert), "--dataset", str(where), "--text-column", "body",
                 "--analyses", ",".join(ANALYSES), "--out", str(out), "--no-report", "--quiet",
                 *(["--split", "train"] if form == "save_to_disk" else [])])
    assert code == 0
    got = headscope.RunResult.load(out)
    assert_same_tables(from_file, got, atol=1e-5)  # heads.csv holds 6 significant digits
    entry = json.loads((out / "run.json").read_text())["files"][0]
    assert entry["column"] == "body" and entry["name"] == str(where) and entry["split"] == "train"
    assert entry["fingerprint"]


def test_a_hub_dataset_fails_fast_and_clearly_offline(tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("datasets")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    t0 = time.perf_counter()
    with pytest.raises(DatasetError, match="not a local path, and the Hugging Face hub is offline"):
        run(tiny_bert, dataset="someone/some-texts")
    assert time.perf_counter() - t0 < 5
    with pytest.raises(DatasetError, match="not a dataset saved with save_to_disk"):
        run(tiny_bert, dataset=os.devnull)
