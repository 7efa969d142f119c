"""End to end on a tiny model: files, manifest, batch-size invariance, CLI, clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

import headscope
from headscope.analyses.surface import STATISTICS
from headscope.cli import main
from headscope.errors import UsageError
from headscope.model.load import AttentionUnavailableError, check_attention
from headscope.runner.orchestrate import NoUsableInputError

CONLLU = """# sent_id = s1
1\tThe\tthe\tDET\t_\t_\t2\tdet\t_\t_
2\tdog\tdog\tNOUN\t_\t_\t3\tnsubj\t_\t_
3\tran\trun\tVERB\t_\t_\t0\troot\t_\t_
4\t.\t.\tPUNCT\t_\t_\t3\tpunct\t_\t_

# sent_id = s2
1\tThe\tthe\tDET\t_\t_\t2\tdet\t_\t_
2\tcat\tcat\tNOUN\t_\t_\t3\tnsubj\t_\t_
3\tsaw\tsee\tVERB\t_\t_\t0\troot\t_\t_

# sent_id = bad
1\tOops\toops\tX\t_\t_\t7\tdep\t_\t_
2\tthere\tthere\tX\t_\t_\t0\troot\t_\t_

"""


def test_run_writes_the_output_contract(tiny_bert: Path, text_file: Path, tmp_path: Path) -> None:
    tb = tmp_path / "tb.conllu"
    tb.write_text(CONLLU, encoding="utf-8")
    out = tmp_path / "out"
    result = headscope.run(model=str(tiny_bert), text=[str(text_file)], treebank=[str(tb)], out=str(out),
                           quiet=True, max_length=24)
    heads = pd.read_csv(out / "heads.csv")
    assert list(heads.columns[:2]) == ["layer", "head"] and len(heads) == 2 * 4
    assert set(STATISTICS) <= set(heads.columns)
    pd.testing.assert_frame_equal(heads, result.heads, check_dtype=False, atol=1e-6)
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["n_layers"] == 2 and run["seed"] == 0
    assert {f["role"] for f in run["files"]} == {"text", "treebank"}
    assert all(len(f["sha256"]) == 64 for f in run["files"])
    assert run["counts"]["sentences_read"] == 7 + 3
    assert run["counts"]["skipped"] == 1  # the sentence whose head is out of range
    skipped = run["events"]["skipped"]["listed"][0]
    assert skipped["file"] == str(tb) and skipped["line"] == 13 and "out of range" in skipped["reason"]
    assert isinstance(skipped["batch"], int)  # the shard of the pass it was read for
    assert {"transformers", "torch", "headscope"} <= set(run["versions"])
    assert (out / "report" / "index.html").is_file()
    assert (out / "figures" / "surface_sep.png").is_file() and (out / "figures" / "surface_sep.svg").is_file()


def test_result_does_not_depend_on_batch_size(tiny_bert: Path, text_file: Path) -> None:
    common = dict(model=str(tiny_bert), text=[str(text_file)], out=None, quiet=True, max_length=20)
    one = headscope.run(batch_size=1, **common).heads
    many = headscope.run(batch_size=16, **common).heads
    pd.testing.assert_frame_equal(one, many, atol=1e-5, rtol=0)


def test_same_seed_same_files(tiny_bert: Path, text_file: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        headscope.run(model=str(tiny_bert), text=[str(text_file)], out=str(tmp_path / name), quiet=True,
                      report=False, max_length=20)
    assert (tmp_path / "a" / "heads.csv").read_bytes() == (tmp_path / "b" / "heads.csv").read_bytes()


def test_cli_run(tiny_bert: Path, text_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["run", "--model", str(tiny_bert), "--text", str(text_file), "--out", str(tmp_path / "o"),
                 "--batch-size", "3", "--max-length", "32", "--no-report", "--quiet"])
    assert code == 0
    assert "analysed" in capsys.readouterr().out
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["config"]["batch_size"] == 3 and run["config"]["report"] is False
    assert not (tmp_path / "o" / "report").exists()


def test_no_usable_input_is_a_clear_error(tiny_bert: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    # Refused before the model loads (a usage error), unless told to run without it: then nothing is usable.
    with pytest.raises(UsageError, match="the file is empty"):
        headscope.run(model=str(tiny_bert), text=[str(empty)], out=None, quiet=True)
    with pytest.raises(NoUsableInputError, match="empty"):
        headscope.run(model=str(tiny_bert), text=[str(empty)], out=None, quiet=True, skip_missing=True)
    assert main(["run", "--model", str(tiny_bert), "--text", str(empty), "--out", str(tmp_path / "o")]) == 2


def test_unknown_option_and_analysis(tiny_bert: Path, text_file: Path) -> None:
    with pytest.raises(TypeError, match="no_such_option"):
        headscope.run(model=str(tiny_bert), text=[str(text_file)], no_such_option=1)
    with pytest.raises(ValueError, match="unknown analysis"):
        headscope.run(model=str(tiny_bert), text=[str(text_file)], analyses="nope", out=None)


def test_model_without_attention_weights_fails_clearly(tiny_bert: Path) -> None:
    from transformers import AutoTokenizer

    class NoAttention(torch.nn.Module):
        def forward(self, **kwargs):
            return SimpleNamespace(attentions=None)

    info = SimpleNamespace(name="fake-sdpa-model", n_layers=2, n_heads=4)
    loaded = SimpleNamespace(base=NoAttention(), tokenizer=AutoTokenizer.from_pretrained(tiny_bert), info=info,
                             device=torch.device("cpu"))
    with pytest.raises(AttentionUnavailableError, match=r"fake-sdpa-model.*no attention weights"):
        check_attention(loaded)


def test_analysis_without_usable_input_is_reported(tiny_bert: Path, text_file: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    # Named without any treebank, syntax is refused before the model loads (tests/test_preflight.py); a treebank
    # that turns out to give nothing (here: missing, skipped) leaves it without input, which the run reports.
    result = headscope.run(model=str(tiny_bert), text=[str(text_file)], analyses="surface,syntax", out=None,
                           quiet=True, max_length=24, treebank=[str(text_file.with_name("absent.conllu"))],
                           skip_missing=True)
    assert result.run["analyses"]["syntax"]["examples_used"] == 0  # raw text without --parse has no trees
    assert result.run["analyses"]["surface"]["examples_used"] == result.run["counts"]["examples"]
    assert "syntax" in result.run["notes"]["analyses_without_input"][0]
    assert any("no usable input" in r.message for r in caplog.records)
