"""The write phase of a run against its pass, as ratios (issue 16; a benchmark, not a timed test).

Runs ``headscope run`` in a fresh process, as a user does, and reads the run's own timings from ``run.json``:
``pass`` (the forward passes and accumulators), ``finalize`` (tables from the running sums) and ``write``
(tables, figures and the report). Prints write/pass and write/total; the goal is write <= 25% of the run and
never more than the pass.

Two cases from the issue: six analyses on 500 EWT sentences (needs ../shared), and ``surface`` alone on the
whole EWT dev treebank.

    python bench/write_phase.py [--model minilm] [--treebank PATH] [--sentences 500]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ud-english-ewt"
SIX = "surface,examples,syntax,probe,similarity,roles"


def one_run(model: str, treebank: str, analyses: str, sentences: int | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        cmd = [str(Path(sys.executable).with_name("headscope")), "run", "--model", model, "--treebank", treebank,
               "--analyses", analyses, "--out", out, "--quiet"]
        if sentences:
            cmd += ["--max-sentences", str(sentences)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        timings = json.loads((Path(out) / "run.json").read_text())["timings_s"]
    timings["wall"] = wall
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--treebank", default=str(next(SHARED.glob("*dev.conllu"), SHARED / "en_ewt-ud-dev.conllu")))
    parser.add_argument("--sentences", type=int, default=500)
    args = parser.parse_args()
    if not Path(args.treebank).exists():
        sys.exit(f"no treebank at {args.treebank} (pass --treebank)")
    for label, analyses, sentences in ((f"six analyses, {args.sentences} sentences", SIX, args.sentences),
                                       ("surface, whole treebank", "surface", None)):
        t = one_run(args.model, args.treebank, analyses, sentences)
        print(f"{label}: pass {t['pass']:.1f} s, finalize {t.get('finalize', 0):.1f} s, write {t['write']:.1f} s, "
              f"run {t['total'] + t['write']:.1f} s, wall {t['wall']:.1f} s")
        print(f"  write/pass = {t['write'] / t['pass']:.2f}   write/run = {t['write'] / (t['total'] + t['write']):.2f}"
              "   (goal: write/run <= 0.25 and write/pass <= 1)")


if __name__ == "__main__":
    main()
