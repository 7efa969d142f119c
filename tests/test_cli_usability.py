"""What a new user trips over on the command line: model names, missing files, counts, flags, help, progress."""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

import pytest

import headscope
from headscope.cli import build_parser, main
from headscope.config import DECODER_DEFAULT_LENGTH, RunConfig
from headscope.model.load import PACKAGED_MODELS, ModelNotFoundError, load_model


def test_hub_id_offline_fails_at_once_with_the_packaged_names(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    import huggingface_hub
    import transformers
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    attempts: list[str] = []  # anything that would load the model or ask the hub: none may happen

    def refuse(what: str) -> object:
        def call(*args: object, **kwargs: object) -> None:
            attempts.append(what)
            raise AssertionError(f"{what} was called")
        return call

    for cls in (transformers.AutoConfig, transformers.AutoTokenizer, transformers.AutoModel):
        monkeypatch.setattr(cls, "from_pretrained", refuse(f"{cls.__name__}.from_pretrained"))
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", refuse("HfApi.model_info"))
    # What the user sees: one line naming the model, why, and the packaged models; exit status 1.
    assert main(["run", "--model", "someone/no-such-model-here", "--out", "", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("headscope: error: someone/no-such-model-here: "), lines
    assert "the hub is offline (HF_HUB_OFFLINE)" in lines[0]
    assert all(name in lines[0] for name in PACKAGED_MODELS)
    assert attempts == []
    with pytest.raises(ModelNotFoundError, match="hub is offline"):  # the same from Python
        load_model("someone/no-such-model-here", device="cpu")
    assert attempts == []


def test_unreachable_hub_is_one_fast_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    calls = []

    def no_network(self: object, *args: object, **kwargs: object) -> None:
        calls.append(args)
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", no_network)
    with pytest.raises(ModelNotFoundError, match=r"cannot be reached.*not in the local cache.*minilm"):
        load_model("someone/no-such-model-here", device="cpu")
    assert len(calls) == 1  # one request, no retries


def test_unknown_hub_id_says_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    def not_found(self: object, *args: object, **kwargs: object) -> None:
        request = httpx.Request("GET", "https://huggingface.co/api/models/someone/x")
        raise RepositoryNotFoundError("404", response=httpx.Response(404, request=request))

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", not_found)
    with pytest.raises(ModelNotFoundError, match=r"not found on the Hugging Face hub.*packaged models"):
        load_model("someone/x", device="cpu")


def test_path_like_model_and_malformed_id(capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--model", "./no/such/dir", "--out", "", "--quiet"]) == 1
    assert "no such model directory: ./no/such/dir" in capsys.readouterr().err
    with pytest.raises(ModelNotFoundError, match="not a packaged model, a local directory or a valid hub id"):
        load_model("bad name!", device="cpu")


def test_missing_text_file_is_an_error_unless_skip_missing(tiny_bert: Path, text_file: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    typo = tmp_path / "typo.txt"
    args = ["run", "--model", str(tiny_bert), "--text", str(text_file), "--text", str(typo), "--max-length", "32",
            "--no-report", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2  # a usage error, as every bad file or value
    err = capsys.readouterr().err
    assert f"input file not found: --text {typo}" in err and "--skip-missing" in err
    assert not (tmp_path / "a").exists()  # refused before anything was written
    assert main([*args, "--out", str(tmp_path / "b"), "--skip-missing"]) == 0
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["counts"]["skipped"] == 1
    event = run["events"]["skipped"]["listed"][0]
    assert (event["file"], event["line"], event["reason"]) == (str(typo), None, "file not found")


def test_run_level_warnings_are_counted(tiny_bert: Path, text_file: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    # A treebank that gives nothing (missing, skipped): syntax runs without trees (named with no treebank at all,
    # it would be refused before the model loads).
    assert main(["run", "--model", str(tiny_bert), "--text", str(text_file), "--analyses", "surface,syntax",
                 "--treebank", str(tmp_path / "absent.conllu"), "--skip-missing",
                 "--max-length", "200", "--out", str(tmp_path / "o"), "--no-report", "--quiet"]) == 0
    out = capsys.readouterr().out
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    # Two: --max-length above the model's 64, and syntax without trees.
    assert run["counts"]["warnings"] == 2
    assert "warnings 2" in out
    reasons = [e["reason"] for e in run["events"]["warning"]["listed"]]
    assert any("--max-length 200" in r for r in reasons) and any("'syntax'" in r for r in reasons)


def test_verbose_and_quiet_before_or_after_the_subcommand() -> None:
    parser = build_parser()
    for argv in (["-v", "-q", "run"], ["run", "-v", "--quiet"], ["-v", "run", "--quiet"]):
        args = parser.parse_args(argv)
        assert args.verbose is True and args.quiet is True, argv
    args = parser.parse_args(["run"])
    assert args.verbose is False and args.quiet is False
    assert parser.parse_args(["list", "-v"]).verbose is True


def test_help_is_plain_and_states_every_default(capsys: pytest.CaptureFixture) -> None:
    markup = re.compile(r"``|:(class|func|mod|meth|data):")
    for argv in ([], ["run"], ["list"], ["compare"], ["view"], ["report"]):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        text = capsys.readouterr().out
        assert not markup.search(text), argv
    parser = build_parser()
    run_parser = parser._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    for action in run_parser._actions:
        if action.option_strings and action.dest != "help" and action.help != argparse.SUPPRESS:
            assert "default" in (action.help or ""), action.option_strings


def test_switches_on_by_default_can_be_turned_off() -> None:
    parser = build_parser()
    args = parser.parse_args(["run", "--no-importance-normalize-layers", "--no-report"])
    assert args.importance_normalize_layers is False and args.report is False
    assert "importance_normalize_layers" not in parser.parse_args(["run"])


def test_literal_options_offer_their_choices(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for shown in ("--weights {attention,norm,rollout}", "--dtype {float32,float16,bfloat16}",
                  "--capture {auto,interface,hooks,stacked}", "--roles-correction {none,bh}",
                  "--distance-cluster-method {kmeans,agglomerative}", "--sep-gradient-append-eos {auto,yes,no}"):
        assert shown in text, shown
    parser = build_parser()
    assert parser.parse_args(["run", "--weights", "norm", "--roles-unit", "input"]).roles_unit == "input"
    for argv in (["run", "--weights", "softmax"], ["run", "--roles-correction", "bonferroni"]):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(argv)
        assert exit_info.value.code == 2
        assert "invalid choice" in capsys.readouterr().err


def test_literal_fields_are_checked_in_the_python_api_too() -> None:
    from headscope.analyses.distance import DistanceOptions
    from headscope.analyses.roles import RolesOptions

    with pytest.raises(ValueError, match=r"weights must be one of attention, norm, rollout, got 'softmax'"):
        RunConfig(weights="softmax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="role_rule must be one of ttest, mean"):
        RolesOptions(role_rule="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cluster_method must be one of kmeans, agglomerative"):
        DistanceOptions(cluster_method="spectral")  # type: ignore[arg-type]


def test_list_says_what_is_installed_and_what_each_analysis_needs(capsys: pytest.CaptureFixture) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"syntax .*\[needs: treebank\]", out)
    assert re.search(r"decoder_heads .*\[needs: causal\]", out)
    for name, pm in PACKAGED_MODELS.items():
        # each packaged model with its family, and whether it is installed or the pip command that installs it
        state = "installed" if pm.installed else f"not installed: {re.escape(pm.install)}"
        assert pm.family
        assert re.search(rf"^  {re.escape(name)} +{re.escape(pm.family)}; {state}$", out, re.M), name


def test_decoder_default_length_is_capped() -> None:
    config = RunConfig()
    assert config.resolved_max_length(8192, is_causal=True) == DECODER_DEFAULT_LENGTH
    assert config.resolved_max_length(512, is_causal=True) == 512
    assert config.resolved_max_length(512, is_causal=False) == 128
    assert RunConfig(max_length=4096).resolved_max_length(8192, is_causal=True) == 4096


def test_progress_bar_counts_segments_and_writes_warnings_through_tqdm(
        tiny_bert: Path, text_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tqdm

    from headscope.runner import passes
    from headscope.runner.context import open_context

    written: list[str] = []
    monkeypatch.setattr(tqdm.tqdm, "write", classmethod(lambda cls, s, *a, **k: written.append(s)))
    units: list[str] = []
    real = tqdm.auto.tqdm

    def recording(*args: object, **kwargs: object) -> object:
        units.append(str(kwargs.get("unit")))
        return real(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", recording)
    ctx = open_context(RunConfig(model=str(tiny_bert), text=[str(text_file)], max_segments=3, max_length=24,
                                 out=None))
    handler = logging.StreamHandler()  # a console handler, as the command line installs
    logging.root.addHandler(handler)
    try:
        batches = passes.progress_bar(ctx.batches(ctx.corpus.examples(ctx.manifest)), ctx, force=True)
        for _ in batches:
            logging.getLogger("headscope").warning("a warning during the pass")
    finally:
        logging.root.removeHandler(handler)
    assert units == [" segments"]
    assert any("a warning during the pass" in line for line in written)


def test_api_run_without_cli_still_takes_quiet(tiny_bert: Path, text_file: Path) -> None:
    result = headscope.run(model=str(tiny_bert), text=[str(text_file)], out=None, quiet=True, max_length=24)
    assert result.run["config"]["quiet"] is True


def _headscope(*args: str) -> tuple[int, list[str], float]:
    """Run the installed command as a user does: exit status, stderr lines, seconds."""
    import subprocess
    import sys
    import time

    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "headscope", *args], capture_output=True, text=True, timeout=300)
    return done.returncode, done.stderr.strip().splitlines(), time.perf_counter() - t0


@pytest.mark.parametrize(("args", "says"), [
    (["--max-length", "0"], "max_length must be at least 4, got 0"),
    (["--max-length", "-5"], "max_length must be at least 4, got -5"),
    (["--batch-size", "0"], "batch_size must be at least 1, got 0"),
    (["--max-segments", "0"], "max_segments must be at least 1, got 0"),
    (["--analyses", "surfce"], "did you mean 'surface'?"),
    (["--max-lenght", "64"], "did you mean --max-length?"),
    (["--dtype", "float8"], "invalid choice: 'float8'"),
    (["--device", "gpu"], "device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
])
def test_usage_errors_are_one_line_exit_2_and_import_no_torch(args: list[str], says: str) -> None:
    rc, lines, _ = _headscope("run", *args)
    assert rc == 2 and len(lines) == 1 and says in lines[0], lines
    # No torch: the check ran on the command line and the catalog alone (timed imports would be flaky; the
    # import list is not).
    import subprocess
    import sys

    probe = ("import sys, headscope.cli as c\n"
             f"rc = None\ntry:\n    rc = c.main({['run', *args]!r})\nexcept SystemExit as e:\n    rc = e.code\n"
             "print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120).stdout.split()
    assert out == ["2", "False"], out


def test_empty_and_binary_text_files_are_refused_before_the_model_loads(tmp_path: Path) -> None:
    empty, binary = tmp_path / "empty.txt", tmp_path / "model.bin"
    empty.write_bytes(b"")
    binary.write_bytes(b"PK\x03\x04\x00\x00" + bytes(range(256)) * 40)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1") * 3)
    for path, says in ((empty, "the file is empty"), (binary, "not a text file (a NUL byte at offset 4"),
                       (latin1, "not UTF-8 text")):
        rc, lines, _ = _headscope("run", "--model", "no/such-model-is-loaded", "--text", str(path), "--out", "")
        assert rc == 2 and len(lines) == 1, lines
        assert f"--text {path}: {says}" in lines[0] and "--skip-missing" in lines[0] and len(lines[0]) < 300


def test_a_gpu_device_without_a_gpu_is_one_line_before_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from headscope.errors import UsageError
    from headscope.runner.usage import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match=r"--device cuda: .*use --device cpu or auto"):
        check_device("cuda")
    check_device("cpu")
    check_device("auto")
