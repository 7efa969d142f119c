"""Checkpoints and resume, Ctrl-C, one run per output folder, and the safe state format."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import headscope
from headscope.engine.interrupt import RunInterrupted
from headscope.engine.outdir import OutputExistsError
from headscope.engine.state import StateError, pack, unpack
from headscope.runner import passes
from headscope.runner.checkpoint import CheckpointError
from test_coref import _random_corefud
from test_streaming import ANALYSES, _treebank

ALL_BUT_ABLATION = [a for a in ANALYSES if a != "ablation"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    d = tmp_path_factory.mktemp("checkpoint-corpus")
    rng = np.random.default_rng(3)
    (d / "train.conllu").write_text(_treebank(rng, 12, "train"), encoding="utf-8")
    (d / "dev.conllu").write_text(_treebank(rng, 8, "dev"), encoding="utf-8")
    text = "\n\n".join("The dog saw the cat.\nThe cat ran to the house, she said.\nIt was red and old."
                       for _ in range(6))
    (d / "text.txt").write_text(text + "\n", encoding="utf-8")
    # coref is among the analyses: named without --coref it would be refused before the model loads.
    (d / "coref.conllu").write_text(_random_corefud(rng, n_docs=2, n_sentences=4), encoding="utf-8")
    return {"text": [str(d / "text.txt")], "treebank": [str(d / "train.conllu"), str(d / "dev.conllu")],
            "coref": [str(d / "coref.conllu")]}


def _kwargs(model: Path, inputs: dict[str, list[str]]) -> dict[str, object]:
    return dict(model=str(model), analyses=ALL_BUT_ABLATION, quiet=True, max_length=32, batch_size=3,
                similarity_sample=1.0, distance_clusters=2, probe_epochs=1, report=False, **inputs)


def _untimed(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if "seconds" not in k}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def _outputs(out: Path) -> dict[str, object]:
    """Every result file of a run folder but run.json, as text (JSON without its timings)."""
    return {p.name: _untimed(json.loads(p.read_text(encoding="utf-8"))) if p.suffix == ".json"
            else p.read_text(encoding="utf-8")
            for p in sorted(out.iterdir()) if p.is_file() and p.suffix in (".csv", ".json") and p.name != "run.json"}


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, batch_number: int) -> None:
    """Send this process a SIGINT while the given batch (counting from 1) is being fed."""
    real = passes.feed_batch
    seen = {"n": 0}

    def feed(ctx, analyses, batch):  # type: ignore[no-untyped-def]
        seen["n"] += 1
        if seen["n"] == batch_number:
            os.kill(os.getpid(), signal.SIGINT)
        return real(ctx, analyses, batch)

    monkeypatch.setattr(passes, "feed_batch", feed)


def test_resume_after_an_interrupt_gives_the_files_of_an_uninterrupted_run(
        tiny_bert: Path, inputs: dict[str, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = tmp_path / "whole"
    headscope.run(out=str(whole), **_kwargs(tiny_bert, inputs))
    assert not (whole / "checkpoint").exists()  # a complete run leaves no checkpoint behind

    out = tmp_path / "stopped"
    _interrupt_at(monkeypatch, 3)
    with pytest.raises(RunInterrupted, match="resume with: headscope run --resume") as stopped:
        headscope.run(out=str(out), checkpoint_every=0, **_kwargs(tiny_bert, inputs))
    assert stopped.value.checkpoint == str(out / "checkpoint")
    record = json.loads((out / "checkpoint" / "checkpoint.json").read_text())
    assert record["progress"]["done"] == [0, 1, 2]
    assert not (out / "heads.csv").exists() and not (out / "run.json").exists()  # no partial outputs
    monkeypatch.undo()

    resumed = headscope.run(resume=str(out), quiet=True)
    assert _outputs(out) == _outputs(whole)
    assert [s["batches"] for s in resumed.run["segments"]] == [3, len(record["progress"]["done"]) and
                                                               resumed.run["segments"][1]["batches"]]
    assert resumed.run["segments"][1]["batches"] > 0
    assert not (out / "checkpoint").exists()


def test_periodic_checkpoints_and_refusals(tiny_bert: Path, tiny_roberta: Path, inputs: dict[str, list[str]],
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    _interrupt_at(monkeypatch, 4)
    with pytest.raises(RunInterrupted):
        headscope.run(out=str(out), checkpoint_every=2, **_kwargs(tiny_bert, inputs))
    monkeypatch.undo()
    # Another model, another option or another corpus: refused, saying what differs.
    with pytest.raises(CheckpointError, match=r"model: checkpoint .*tiny-bert.*this run .*tiny-roberta"):
        headscope.run(resume=str(out), model=str(tiny_roberta))
    with pytest.raises(CheckpointError, match=r"max_length: checkpoint 32, this run 40"):
        headscope.run(resume=str(out), max_length=40)
    with pytest.raises(CheckpointError, match=r"roles option tau: checkpoint 3.0, this run 2.0"):
        headscope.run(resume=str(out), roles_tau=2.0)
    corpus = Path(inputs["text"][0])
    original = corpus.read_text(encoding="utf-8")
    try:
        corpus.write_text(original + "One more sentence.\n", encoding="utf-8")
        with pytest.raises(CheckpointError, match=r"files: checkpoint .*sha256"):
            headscope.run(resume=str(out), quiet=True)
    finally:
        corpus.write_text(original, encoding="utf-8")
    # A damaged checkpoint gets a clear error, never a traceback from deep inside numpy.
    state = out / "checkpoint" / "state.npz"
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or modified"):
        headscope.run(resume=str(out))
    state.write_bytes(data)
    meta = out / "checkpoint" / "checkpoint.json"
    text = meta.read_text()
    meta.write_text(text[:40])
    with pytest.raises(CheckpointError, match="damaged checkpoint"):
        headscope.run(resume=str(out))
    meta.write_text(text)
    headscope.run(resume=str(out), quiet=True)
    assert (out / "heads.csv").is_file()


def test_one_run_per_output_folder(tiny_bert: Path, inputs: dict[str, list[str]], tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = dict(model=str(tiny_bert), quiet=True, max_length=32, report=False, **inputs)
    headscope.run(out=str(out), analyses=["surface", "roles"], **base)
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(OutputExistsError, match=r"already holds a headscope run; pass --overwrite"):
        headscope.run(out=str(out), analyses=["surface"], **base)
    headscope.run(out=str(out), analyses=["surface"], overwrite=True, **base)
    assert not (out / "roles.csv").exists()  # the old run's files are gone
    assert (out / "notes.txt").read_text() == "mine"  # files headscope did not write stay
    listed = json.loads((out / "run.json").read_text())["outputs"]
    assert "heads.csv" in listed and "roles.csv" not in listed


def test_state_files_refuse_pickles_and_junk() -> None:
    good = pack({"surface": ({"sums_.cls": np.ones((2, 3))}, {"causal_": False})})
    states, _ = unpack(good)
    np.testing.assert_array_equal(states["surface"][0]["sums_.cls"], np.ones((2, 3)))
    buffer = io.BytesIO()
    np.savez(buffer, __meta__=np.frombuffer(b"{}", dtype=np.uint8), evil=np.array([object()], dtype=object))
    with pytest.raises(StateError, match="damaged"):
        unpack(buffer.getvalue())
    with pytest.raises(StateError, match="damaged"):
        unpack(b"not a state file")
    with pytest.raises(StateError, match="object arrays"):
        pack({"x": ({"a": np.array([object()], dtype=object)}, {})})


def test_ctrl_c_on_the_command_line_stops_with_a_checkpoint(tiny_bert: Path, tmp_path: Path) -> None:
    text = tmp_path / "long.txt"
    text.write_text("\n\n".join(f"The dog saw the cat number {i}.\nIt ran to the house." for i in range(400))
                    + "\n", encoding="utf-8")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "headscope.cli", "run", "--model", str(tiny_bert), "--text", str(text),
           "--out", str(out), "--analyses", "surface,roles", "--batch-size", "1", "--checkpoint-every", "5",
           "--max-length", "24", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint" / "checkpoint.json").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert time.monotonic() - sent < 10
    assert "resume with: headscope run --resume" in err and "Traceback" not in err
    assert not (out / "heads.csv").exists() and not (out / "run.json").exists()
    record = json.loads((out / "checkpoint" / "checkpoint.json").read_text())
    assert record["progress"]["done"]
    done = subprocess.run([sys.executable, "-m", "headscope.cli", "run", "--resume", str(out), "--quiet",
                           "--no-report"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    heads = pd.read_csv(out / "heads.csv")
    assert len(heads) == 2 * 4
