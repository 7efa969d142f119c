"""``headscope view``: input selection, the weight encoding, and the page's data against the engine."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from headscope.cli import main
from headscope.engine.batch import collate
from headscope.engine.capture import capture_stacked
from headscope.manifest import Manifest
from headscope.model.encode import Encoder
from headscope.model.load import load_model
from headscope.viewer import dequantize_sqrt, input_sentences, quantize_sqrt
from reference import word_attention_reference
from test_report import XSS, page_data, write_xss_treebank

#: Largest error of a weight after the one-byte square-root encoding: 2 * sqrt(w) * (0.5 / 255) at w = 1.
MAX_CODE_ERROR = 1 / 255


def test_sqrt_codes_bound_the_error_and_keep_broad_heads_visible() -> None:
    w = np.concatenate([np.linspace(0, 1, 10001), np.random.default_rng(0).random(1000)]).astype(np.float32)
    codes = quantize_sqrt(w)
    assert codes.dtype == np.uint8 and codes.min() == 0 and codes.max() == 255
    assert np.abs(dequantize_sqrt(codes) - w).max() <= MAX_CODE_ERROR
    assert quantize_sqrt(np.array([1 / 512]))[0] == 11  # a uniform row over 512 keys is not blank


def test_input_sentences_from_text_file_and_treebank(tmp_path: Path) -> None:
    (s,) = input_sentences("She said it, twice.")
    assert s.words == ["She", "said", "it", ",", "twice", "."]
    text = tmp_path / "t.txt"
    text.write_text("One two.\nThree four.\n\nOther document.\n", encoding="utf-8")
    assert [x.words for x in input_sentences(file=text)] == [["One", "two", "."], ["Three", "four", "."]]
    treebank = write_xss_treebank(tmp_path)
    assert input_sentences(treebank=treebank, sentence="2")[0].words[3] == XSS[1]
    assert input_sentences(treebank=treebank, sentence="x3")[0].words[:2] == ["The", "dog"]
    with pytest.raises(ValueError, match="no sentence '9'"):
        input_sentences(treebank=treebank, sentence="9")
    with pytest.raises(ValueError, match="exactly one input"):
        input_sentences("a", file=text)
    with pytest.raises(ValueError, match="exactly one input"):
        input_sentences()


def test_view_page_holds_the_models_attention_at_both_levels(tiny_bert: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    text = f"She said {XSS[0]} and {XSS[1]} twice."
    out = tmp_path / "view.html"
    assert main(["view", "--model", str(tiny_bert), "--out", str(out), text]) == 0
    assert str(out) in capsys.readouterr().out
    html = out.read_text(encoding="utf-8")
    for probe in XSS:
        assert probe not in html
    assert "default-src 'none'" in html and "http://" not in html and "https://" not in html

    data = page_data(out)
    assert data["text"] == text and data["model"]["n_layers"] == 2 and data["model"]["n_heads"] == 4

    # The same input through the engine directly.
    loaded = load_model(str(tiny_bert), device="cpu")
    (sentence,) = input_sentences(text)
    example = Encoder(loaded.tokenizer, 64).encode(0, "sentence", [sentence], None, Manifest(), True)
    attn = capture_stacked(loaded, collate([example], 0))[0].numpy()
    n = example.length

    piece = data["levels"]["piece"]
    assert piece["tokens"] == example.pieces and piece["n"] == n
    codes = np.frombuffer(base64.b64decode(piece["data"]), dtype=np.uint8).reshape(2, 4, n, n)
    np.testing.assert_allclose(dequantize_sqrt(codes), attn, atol=MAX_CODE_ERROR)

    word = data["levels"]["word"]
    groups = [np.flatnonzero(example.unit_of_piece == u).tolist() for u in range(example.n_units)]
    reference = np.stack([np.stack([word_attention_reference(attn[layer, head], groups, mode="mean")
                                    for head in range(4)]) for layer in range(2)])
    assert word["tokens"] == example.units and word["n"] == example.n_units
    codes = np.frombuffer(base64.b64decode(word["data"]), dtype=np.uint8).reshape(reference.shape)
    np.testing.assert_allclose(dequantize_sqrt(codes), reference, atol=MAX_CODE_ERROR)
    assert XSS[0] not in example.units  # raw text is split into words; the page's text block keeps it whole


def test_view_refuses_to_overwrite_a_file_unless_forced(tiny_bert: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import headscope
    import headscope.model.load

    out = tmp_path / "view.html"
    out.write_text("my earlier page", encoding="utf-8")

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model must not load before the output is checked")

    monkeypatch.setattr(headscope.model.load, "load_model", no_load)
    assert main(["view", "--model", str(tiny_bert), "--out", str(out), "The cat sat."]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--force" in err and str(out) in err
    with pytest.raises(ValueError, match="force=True"):
        headscope.view("The cat sat.", model=str(tiny_bert), out=out)
    assert out.read_text(encoding="utf-8") == "my earlier page"
    monkeypatch.undo()
    assert main(["view", "--model", str(tiny_bert), "--out", str(out), "--force", "The cat sat."]) == 0
    assert page_data(out)["text"] == "The cat sat."
    headscope.view("The dog sat.", model=str(tiny_bert), out=out, force=True)
    assert page_data(out)["text"] == "The dog sat."
