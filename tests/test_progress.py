"""Signs of life: every pass shows its progress (a bar on a terminal, log lines elsewhere); warnings print once."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from headscope.cli import main
from headscope.engine.progress import Tracker, track


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "headscope.progress"]


def test_without_a_terminal_a_line_every_tenth_of_the_work(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="headscope.progress")
    with Tracker("importance", "sequences", total=100, terminal=False, clock=clock) as tracker:
        for _ in range(100):
            clock.now += 0.01  # fast: only the 10 % rule applies
            tracker.update(1)
    lines = _lines(caplog)
    assert len(lines) == 10
    assert lines[0].startswith("importance: 10/100 sequences (10%)")
    assert lines[-1].startswith("importance: 100/100 sequences, done in")


def test_without_a_terminal_a_line_every_30_seconds(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="headscope.progress")
    tracker = Tracker("pruning: importance order", "steps", total=1000, terminal=False, clock=clock)
    for _ in range(20):  # 2 % of the work, 10 s a step: the time rule applies
        clock.now += 10.0
        tracker.update(1)
    lines = _lines(caplog)
    assert [re.match(r"pruning: importance order: (\d+)/1000 steps", line)[1] for line in lines] == [  # type: ignore[index]
        "3", "6", "9", "12", "15", "18"]
    tracker.close()
    assert _lines(caplog)[-1].startswith("pruning: importance order: 20/1000 steps (2%), 200 s")


def test_unknown_total_quiet_and_inner_work(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="headscope.progress")
    assert list(track(iter(range(5)), "retrieval", "prompts", terminal=False, clock=clock)) == list(range(5))
    assert _lines(caplog) == ["retrieval: 5 prompts, 0 s"]
    caplog.clear()
    with Tracker("x", "sequences", total=10, quiet=True, terminal=False, clock=clock) as tracker:
        tracker.update(10)
    inner = Tracker("ablation: conditions", "conditions", total=10, terminal=False, clock=clock, fraction=None,
                    final=False)
    inner.update(10)
    inner.close()
    assert _lines(caplog) == []


def test_on_a_terminal_a_bar_names_the_work_and_its_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    import tqdm.auto

    made: list[tuple[object, object]] = []
    real = tqdm.auto.tqdm

    def recording(*args: object, **kwargs: object) -> object:
        made.append((kwargs.get("desc"), kwargs.get("unit")))
        return real(*args, **{**kwargs, "disable": True})

    monkeypatch.setattr(tqdm.auto, "tqdm", recording)
    assert sum(track(range(3), "importance", "sequences", terminal=True)) == 3
    assert made == [("importance", " sequences")]


@contextlib.contextmanager
def cli_logging() -> Iterator[None]:
    """The command line's own logging set-up (``basicConfig`` onto the captured stderr), undone after."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    progress_level = logging.getLogger("headscope.progress").level
    for handler in saved:
        root.removeHandler(handler)
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
        root.setLevel(level)
        logging.getLogger("headscope.progress").setLevel(progress_level)
        logging.captureWarnings(False)


def test_a_run_with_importance_logs_its_progress_without_a_terminal(tiny_bert: Path, text_file: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    with cli_logging():
        assert main(["run", "--model", str(tiny_bert), "--text", str(text_file), "--analyses", "surface,importance",
                     "--max-length", "24", "--out", "", "--no-report"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^headscope: main pass: .*sentences", err, re.M), err
    assert re.search(r"^headscope: importance: \d+/\d+ sequences, done in", err, re.M), err
    with cli_logging():
        assert main(["run", "--model", str(tiny_bert), "--text", str(text_file), "--analyses", "surface,importance",
                     "--max-length", "24", "--out", "", "--no-report", "--quiet"]) == 0
    assert "importance:" not in capsys.readouterr().err


def test_a_warning_is_printed_once_on_a_terminal(tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    text = tmp_path / "long.txt"
    text.write_text(" ".join(["the dog saw the cat and ran to the house"] * 4) + ".\n", encoding="utf-8")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the bar and its log redirect, as on a terminal
    with cli_logging():
        # importance streams the corpus again for its own pass: that re-read does not warn again either.
        assert main(["run", "--model", str(tiny_bert), "--text", str(text), "--max-length", "16", "--out", "",
                     "--no-report", "--analyses", "surface,importance"]) == 0
    err = capsys.readouterr().err
    assert "main pass" in err and "importance" in err  # the bars were drawn
    assert err.count("tokens cut to 16") == 1, err
    assert "headscope: truncated: " in err


def _python_run(model: Path, text: Path, out: Path, quiet: bool) -> str:
    """headscope.run from a plain Python process whose stderr is a pipe (not a terminal); its stderr."""
    import subprocess

    code = (f"import headscope\nheadscope.run(model={str(model)!r}, text=[{str(text)!r}], analyses=['roles'], "
            f"out={str(out)!r}, report=False, quiet={quiet})\n")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("PYTEST")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_the_python_api_logs_progress_lines_and_prefixed_warnings_like_the_cli(tiny_bert: Path, text_file: Path,
                                                                               tmp_path: Path) -> None:
    """As the CLI without a terminal: progress lines and ``headscope: warning: ...``; quiet keeps the warning
    and drops the progress lines. Nothing else on stderr."""
    err = _python_run(tiny_bert, text_file, tmp_path / "a", quiet=False)
    lines = [line for line in err.splitlines() if line.strip()]
    assert any(re.match(r"headscope: main pass: \d+/\d+ sentences, done in \d+ s$", line) for line in lines), err
    warnings = [line for line in lines if "roles:" in line]
    assert len(warnings) == 1 and warnings[0].startswith("headscope: warning: roles: "), err
    assert all(line.startswith("headscope: ") for line in lines), err
    quiet = [line for line in _python_run(tiny_bert, text_file, tmp_path / "b", quiet=True).splitlines()
             if line.strip()]
    assert quiet == warnings
