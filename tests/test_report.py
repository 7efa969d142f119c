"""The HTML report, its data block, ``headscope report DIR`` and the ``examples`` analysis."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from contexts import analysis_context
from headscope.analyses.examples import ExampleMaps, ExampleMapsOptions, decode_float16, encode_float16
from headscope.cli import main
from headscope.corpus.text import split_words
from headscope.corpus.types import Sentence
from headscope.engine.batch import collate
from headscope.engine.results import RunResult
from headscope.manifest import Manifest
from headscope.model.encode import Encoder
from headscope.report.build import ROWS_PER_HEAD, head_columns, head_tables
from headscope.report.figures import COLUMN_WIDTH
from headscope.report.page import script_json
from headscope.runner.feed import feed_attention

XSS = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')

XSS_CONLLU = f"""# sent_id = x1
1\tShe\tshe\tPRON\t_\t_\t2\tnsubj\t_\t_
2\tsaid\tsay\tVERB\t_\t_\t0\troot\t_\t_
3\t{XSS[0]}\t_\tX\t_\t_\t2\tobj\t_\t_
4\t.\t.\tPUNCT\t_\t_\t2\tpunct\t_\t_

# sent_id = x2
1\tThe\tthe\tDET\t_\t_\t2\tdet\t_\t_
2\tcity\tcity\tNOUN\t_\t_\t3\tnsubj\t_\t_
3\twas\tbe\tAUX\t_\t_\t0\troot\t_\t_
4\t{XSS[1]}\t_\tX\t_\t_\t3\txcomp\t_\t_
5\tbig\tbig\tADJ\t_\t_\t3\tconj\t_\t_
6\t.\t.\tPUNCT\t_\t_\t3\tpunct\t_\t_

# sent_id = x3
1\tThe\tthe\tDET\t_\t_\t2\tdet\t_\t_
2\tdog\tdog\tNOUN\t_\t_\t3\tnsubj\t_\t_
3\tsaw\tsee\tVERB\t_\t_\t0\troot\t_\t_
4\tthe\tthe\tDET\t_\t_\t5\tdet\t_\t_
5\tcat\tcat\tNOUN\t_\t_\t3\tobj\t_\t_
6\t.\t.\tPUNCT\t_\t_\t3\tpunct\t_\t_

"""


def write_xss_treebank(directory: Path) -> Path:
    """A three-sentence CoNLL-U file whose word forms include the two XSS probes."""
    path = directory / "xss.conllu"
    path.write_text(XSS_CONLLU, encoding="utf-8")
    return path


def xss_run(model: Path, out: Path) -> RunResult:
    """A tiny run (surface statistics and example maps) over the XSS treebank, written to ``out``."""
    from headscope import run

    treebank = write_xss_treebank(out.parent)
    return run(model=str(model), treebank=[str(treebank)], analyses=["surface", "examples"], out=str(out),
               quiet=True, example_maps=3)


def page_data(index: Path) -> dict:
    text = index.read_text(encoding="utf-8")
    block = re.search(r'<script id="headscope-data" type="application/json">(.*?)</script>', text, re.S)
    assert block is not None
    return json.loads(block.group(1))


# ---- the examples analysis ------------------------------------------------------------------------------

SENTENCES = ["The dog saw the cat.", "The cat ran to the house.", "She said it was red.", "The king ate a book.",
             "A man and a woman saw the river and the city.", "He ran.", "The old queen said the big car was new."]


def encoded_examples(tiny_bert: Path) -> list:
    from transformers import AutoTokenizer

    encoder = Encoder(AutoTokenizer.from_pretrained(tiny_bert), 64)
    manifest = Manifest()
    return [encoder.encode(i, "sentence", [Sentence(split_words(s), "t.txt", i + 1)], None, manifest, False)
            for i, s in enumerate(SENTENCES)]


def fake_attention(ex, layers: int = 2, heads: int = 4) -> torch.Tensor:
    """Row-stochastic attention of shape [layer, head, n, n], fixed by the example's index."""
    g = torch.Generator().manual_seed(ex.index)
    return torch.softmax(torch.randn(layers, heads, ex.length, ex.length, generator=g), dim=-1)


def feed(acc: ExampleMaps, examples: list, batch_size: int, block_rows: int | None = None) -> None:
    for start in range(0, len(examples), batch_size):
        group = examples[start:start + batch_size]
        batch = collate(group, 0)
        n = batch.input_ids.shape[1]
        attn = torch.zeros(len(group), 2, 4, n, n)
        for row, ex in enumerate(group):
            attn[row, :, :, :ex.length, :ex.length] = fake_attention(ex)
        feed_attention([acc], batch, attn, block_rows=block_rows)


def test_example_maps_keep_longest_short_sequences_whatever_the_batching(tiny_bert: Path) -> None:
    examples = encoded_examples(tiny_bert)
    lengths = [ex.length for ex in examples]
    limit = sorted(lengths)[-2]  # the longest sequence is too long, so it must be passed over
    expected = sorted(sorted(range(len(examples)), key=lambda i: (-lengths[i], i))[1:3])
    assert lengths[expected[0]] <= limit and max(lengths) > limit

    docs = []
    for batch_size, order, block_rows in ((1, examples, None), (3, examples[::-1], None),
                                          (len(examples), examples, None), (3, examples, 1), (2, examples[::-1], 3)):
        acc = ExampleMaps(ExampleMapsOptions(example_maps=2, example_max_tokens=limit))
        acc.start(analysis_context())
        feed(acc, order, batch_size, block_rows)
        docs.append(acc.finalize(None, {}).documents["examples"])
    halves = [ExampleMaps(ExampleMapsOptions(example_maps=2, example_max_tokens=limit)) for _ in range(2)]
    for part, acc in zip((examples[:4], examples[4:]), halves, strict=True):
        acc.start(analysis_context())
        feed(acc, part, 2)
    docs.append(halves[0].merge(halves[1]).finalize(None, {}).documents["examples"])

    for doc in docs:
        assert doc == docs[0]
    kept = docs[0]["examples"]
    assert [e["index"] for e in kept] == expected
    for e in kept:
        ex = examples[e["index"]]
        maps = decode_float16(e["attention"], tuple(e["shape"]))
        assert maps.shape == (2, 4, ex.length, ex.length)
        np.testing.assert_array_equal(maps, fake_attention(ex).to(torch.float16).numpy())
        assert e["pieces"] == ex.pieces and e["text"] == " ".join(ex.sentences[0].words)


def test_float16_block_round_trips() -> None:
    a = np.random.default_rng(0).random((2, 3, 5, 5)).astype(np.float16)
    np.testing.assert_array_equal(decode_float16(encode_float16(a), a.shape), a)
    assert len(encode_float16(a)) == 4 * ((a.size * 2 + 2) // 3)


# ---- page building blocks --------------------------------------------------------------------------------

def test_script_json_cannot_close_its_script_element() -> None:
    text = script_json({"t": [XSS[0], XSS[1], "a & b", "\u2028"]})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"t": [XSS[0], XSS[1], "a & b", "\u2028"]}


def test_head_tables_keep_a_heads_best_significant_rows() -> None:
    roles = pd.DataFrame({
        "layer": [0] * 9 + [1], "head": [1] * 9 + [0],
        "role": [f"r{k}" for k in range(9)] + ["x"],
        "score_mean": [0.1, 0.9, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4, 1.0],
        "significant": [True] * 8 + [False, False],
    })
    heads = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "sep": [0.1, 0.2, 0.3, 0.4]})
    (table,) = head_tables(RunResult(heads=heads, tables={"roles": roles}), n_heads=2)
    rows = table["heads"]["1"]  # layer 0, head 1
    assert [r[0] for r in rows] == ["r1", "r5", "r3", "r7", "r2", "r4"][:ROWS_PER_HEAD]
    assert "2" not in table["heads"]  # L1H0's only row is not significant
    assert table["columns"] == ["role", "score_mean", "significant"]


def test_head_columns_encode_statistics_by_head_and_labels_as_text() -> None:
    heads = pd.DataFrame({"layer": [1, 0, 1, 0], "head": [0, 1, 1, 0], "sep": [0.25, 0.5, np.nan, 1.0],
                          "cluster": [3.0, np.nan, 0.0, 1.0], "pattern": ["a", "b", "c", "<d>"]})
    numeric, text = head_columns(heads)
    (sep,) = numeric
    values = np.frombuffer(base64.b64decode(sep["values"]), dtype="<f4")
    np.testing.assert_array_equal(values, np.array([1.0, 0.5, 0.25, np.nan], dtype=np.float32))
    assert text == [{"name": "cluster", "values": ["1", None, "3", "0"]},
                    {"name": "pattern", "values": ["<d>", "b", "a", "c"]}]


# ---- a whole run -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def xss_run_dir(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    xss_run(tiny_bert, out)
    return out


def test_report_page_is_offline_compact_and_escapes_corpus_text(xss_run_dir: Path) -> None:
    index = xss_run_dir / "report" / "index.html"
    text = index.read_text(encoding="utf-8")
    # Nothing is fetched: no external src/href/url(), and a CSP forbids any other source.
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I)
    assert "url(" not in text and "@import" not in text
    assert "default-src 'none'" in text
    for probe in XSS:
        assert probe not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # the examples section shows it, escaped

    data = page_data(index)
    heads = pd.read_csv(xss_run_dir / "heads.csv")
    n_heads = data["n_heads"]
    assert (data["n_layers"], n_heads) == (2, 4)
    for column in data["columns"]:
        values = np.frombuffer(base64.b64decode(column["values"]), dtype="<f4")
        flat = heads["layer"].to_numpy() * n_heads + heads["head"].to_numpy()
        np.testing.assert_allclose(values[flat], heads[column["name"]].to_numpy(np.float32), rtol=1e-6)
    doc = json.loads((xss_run_dir / "examples.json").read_text())
    assert [e["text"] for e in data["examples"]] == [e["text"] for e in doc["examples"]]
    assert any(XSS[0] in e["text"] for e in data["examples"])
    assert any(XSS[1] in e["text"] for e in data["examples"])


def test_every_figure_is_png_and_svg_one_column_wide(xss_run_dir: Path) -> None:
    figures = xss_run_dir / "figures"
    pngs, svgs = sorted(figures.glob("*.png")), sorted(figures.glob("*.svg"))
    assert pngs and [p.stem for p in pngs] == [p.stem for p in svgs]
    for png in pngs:
        header = png.read_bytes()[:24]
        width = int.from_bytes(header[16:20], "big")
        assert width == round(COLUMN_WIDTH * 300)
    for svg in svgs:
        match = re.search(r'<svg[^>]*\swidth="([\d.]+)pt"', svg.read_text(encoding="utf-8"))
        assert match is not None and float(match.group(1)) == pytest.approx(COLUMN_WIDTH * 72)


def test_report_command_rebuilds_the_same_page_without_the_model(xss_run_dir: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "run"
    shutil.copytree(xss_run_dir, copy, ignore=shutil.ignore_patterns("report", "figures"))
    assert main(["report", str(copy)]) == 0
    assert "index.html" in capsys.readouterr().out
    # run.json gained the write timing after the first build, so compare what the files determine.
    assert page_data(copy / "report" / "index.html") == page_data(xss_run_dir / "report" / "index.html")
    assert {p.name for p in (copy / "figures").iterdir()} == {p.name for p in (xss_run_dir / "figures").iterdir()}


def test_report_command_names_a_directory_that_is_not_a_run(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 1
    assert "not a headscope run directory" in capsys.readouterr().err


def test_examples_are_named_by_file_name_and_line_not_by_their_directory(xss_run_dir: Path) -> None:
    index = xss_run_dir / "report" / "index.html"
    section = re.search(r'<section class="analysis" id="examples">(.*?)</section>',
                        index.read_text(encoding="utf-8"), re.S)
    assert section is not None
    doc = json.loads((xss_run_dir / "examples.json").read_text())
    directory = str(Path(doc["examples"][0]["file"]).parent)
    assert directory == str(xss_run_dir.parent)  # the run keeps the full path; the report shows its name
    items = re.findall(r"<li>(.*?)</li>", section.group(1), re.S)
    assert [i.split(" (")[0] for i in items] == [f"xss.conllu, line {e['line']}" for e in doc["examples"]]
    assert directory not in section.group(1)
    # The profiles' thumbnails are captioned from the page data: file name and line, no directory.
    data = page_data(index)
    assert [(e["name"], e["line"]) for e in data["examples"]] == [("xss.conllu", e["line"]) for e in doc["examples"]]
    assert directory not in json.dumps(data["examples"])


def test_source_name_drops_posix_and_windows_directories() -> None:
    from headscope.analyses.examples import source_name

    assert source_name("/home/u/.cache/headscope/data/en_ewt-ud-train.conllu") == "en_ewt-ud-train.conllu"
    assert source_name("C:\\Users\\u\\corpus\\wiki.txt") == "wiki.txt"
    assert source_name("<text>") == "<text>" and source_name("plain.txt") == "plain.txt"


def test_decoder_examples_keep_a_prefix_whose_map_is_that_prefix_read_alone(tiny_llama: Path, tmp_path: Path) -> None:
    """A decoder's raw-text windows are longer than --example-max-tokens: each gives its first tokens, and
    their maps are exactly the model's own eager attention on those tokens alone (causal: later tokens change
    nothing). The text is the lines as written, not their words joined by spaces."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from headscope import run

    corpus = tmp_path / "c.txt"
    corpus.write_text("The dog, the cat and the king ran.\nShe said: it was red!\n\nThe city was big, and old.\n"
                      "He ran, she ran.\n", encoding="utf-8")
    out = tmp_path / "run"
    run(model=str(tiny_llama), text=[str(corpus)], analyses=["examples"], out=str(out), quiet=True,
        max_length=16, example_maps=2, example_max_tokens=6, report=False)
    doc = json.loads((out / "examples.json").read_text())
    kept = doc["examples"]
    assert len(kept) == 2
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation="eager").eval()
    for e in kept:
        assert e["shape"] == [2, 4, 6, 6] and len(e["pieces"]) == 6 and e["prefix_of"] > 6
        assert len(e["unit_of_piece"]) == 6 and max(e["unit_of_piece"]) == len(e["units"]) - 1
        ids = torch.tensor([tokenizer.convert_tokens_to_ids(e["pieces"])])
        with torch.no_grad():
            expected = torch.stack(model(ids, output_attentions=True).attentions)[:, 0]  # [layer, head, 6, 6]
        maps = decode_float16(e["attention"], tuple(e["shape"])).astype(np.float32)
        np.testing.assert_allclose(maps, expected.numpy(), atol=1e-3)  # float16 storage: 2^-11 relative
    # <s>, "The" (three pieces), "dog", ",": the text as written up to the last word the prefix reaches.
    assert [e["text"] for e in kept] == ["The dog, …", "She said: …"]
    assert kept[0]["units"] == ["<s>", "The", "dog", ","]


def test_examples_text_is_the_line_as_written(tiny_bert: Path, tmp_path: Path) -> None:
    from headscope import run

    corpus = tmp_path / "c.txt"
    corpus.write_text("Anarchist, communist and others (as written) need it.\n", encoding="utf-8")
    out = tmp_path / "run"
    run(model=str(tiny_bert), text=[str(corpus)], analyses=["examples"], out=str(out), quiet=True, report=False)
    kept = json.loads((out / "examples.json").read_text())["examples"]
    assert [e["text"] for e in kept] == ["Anarchist, communist and others (as written) need it."]
    assert "prefix_of" not in kept[0]


@pytest.mark.parametrize(("given", "gguf", "expected"), [
    ("minilm", None, "minilm"), ("smollm2", None, "smollm2"),
    ("sentence-transformers/all-MiniLM-L6-v2", None, "sentence-transformers/all-MiniLM-L6-v2"),
    ("/home/me/models/gemma-3-270m/", None, "gemma-3-270m"), ("./my-bert", None, "my-bert"),
    ("C:\\models\\my-bert", None, "my-bert"), ("~/m/SmolLM2-135M.Q8_0.gguf", None, "SmolLM2-135M.Q8_0"),
    ("/data/llm", "Qwen2-0.5B.Q4.gguf", "Qwen2-0.5B.Q4"),
    ("/cache/hub/models--HuggingFaceTB--SmolLM2-135M/snapshots/0123abc", None, "HuggingFaceTB/SmolLM2-135M"),
])
def test_the_report_is_titled_by_the_models_name_not_its_path(given: str, gguf: str | None, expected: str) -> None:
    from types import SimpleNamespace

    from headscope.report.build import model_name

    run = SimpleNamespace(run={"model": {"name": given}, "config": {"model": given, "gguf_file": gguf}})
    assert model_name(run) == expected  # type: ignore[arg-type]


def test_a_decoder_report_names_no_cls_and_is_titled_by_the_model(tiny_llama: Path, text_file: Path,
                                                                  tmp_path: Path) -> None:
    from headscope import run

    out = tmp_path / "run"
    run(model=str(tiny_llama), text=[str(text_file)], analyses=["surface"], out=str(out), quiet=True,
        max_length=16)
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert "[CLS]" not in page and "cls-sink" not in page
    assert "attention to the first token (BOS)" in page  # the figure's title and the chooser's line
    assert f"<h1>{tiny_llama.name}</h1>" in page
    assert f"<title>headscope report: {tiny_llama.name}</title>" in page
    assert str(tiny_llama) in page  # the path, in the run's details
