"""Cost of the whole ``head_effects`` analysis in forwards per head, against a floor measured in the same run (a
benchmark, not a timed test; issue 39).

The floor is one forward of the model with its LM head and loss (``sequence_losses``, SDPA attention) over the
held-out batches the analysis measures on (same batch size and length), best of ``--repeats``. The analysis is
run as a run runs it (its passes: the mean sample, then per held-out batch the baseline, AtP and every head
ablated; then finalize with the bootstrap), timed once, and printed as

    forwards per head = analysis time / (floor time x n_layers x n_heads)

(goal, issue 39: <= 0.6). Text: the sentences of the UD English EWT dev treebank (../shared/data) as one
document, packed into full windows of each ``--lengths`` (the packaged Wikipedia sample when absent).
The default model is the tests' tiny random Llama (2 layers x 4 heads); ``--model smollm2`` the packaged
SmolLM2-135M (30 x 9).

    python bench/head_effects.py [--model tiny|smollm2|<dir>] [--lengths 64,256] [--sequences 4]
                                 [--mean-sequences 4] [--batch-size 4] [--bootstrap 1000] [--repeats 3]
                                 [--replay auto|off|auto,off] [--atp-star] [--rows N] [--dump DIR]

``--dump DIR`` writes each run's ``head_effects.csv``, its summary and the per-sequence losses and estimates
(``head_effects-<length>-<replay>-<sequences>[-star].csv``, ``.json``, ``.npz``), from which the noise of the exact
effects is read (how many intervals contain 0, the agreement of two halves of the sequences).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
EWT = REPO.parent / "shared" / "data" / "ud-english-ewt" / "en_ewt-ud-dev.conllu"


def ewt_text(directory: Path) -> list[str]:
    """The EWT dev sentences as one raw-text document, or [] when absent."""
    if not EWT.exists():
        return []
    lines: list[str] = []
    for line in EWT.read_text(encoding="utf-8").splitlines():
        if line.startswith("# text = "):  # one document: the windows are full
            lines.append(line[len("# text = "):])
    path = directory / "ewt-dev.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [str(path)]


def model_path(name: str, directory: Path) -> str:
    if name != "tiny":
        return name
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import make_tiny_llama  # the tests' builder: one tiny model for tests and bench

    return str(make_tiny_llama(directory / "tiny-llama"))


def one_length(args: argparse.Namespace, model: str, text: list[str], length: int) -> dict[str, Any]:
    from headscope.analyses.head_effects import HeadEffects, HeadEffectsOptions, split_sample
    from headscope.config import RunConfig
    from headscope.engine.forwards import CorpusRows, loss_kind, sequence_losses
    from headscope.runner.context import open_context
    from headscope.runner.intervene import _Batches, run_passes

    config = RunConfig(model=model, text=text, max_length=length, batch_size=args.batch_size, out=None,
                       quiet=not args.progress, analyses=["head_effects"])
    ctx = open_context(config)
    loaded = ctx.loaded
    actx = ctx.for_analyses(examples=sum(1 for _ in ctx.corpus.examples()))
    wanted = {"head_effects_sequences": args.sequences, "head_effects_mean_sequences": args.mean_sequences,
              "head_effects_bootstrap": args.bootstrap, "head_effects_replay": args.replay,
              "head_effects_atp_star": args.atp_star, "head_effects_rows": args.rows}
    known = {f.name for f in dataclasses.fields(HeadEffectsOptions)}  # the bench also runs on older trees
    options = HeadEffectsOptions(**{k: v for k, v in wanted.items() if k in known})
    held, mean, _ = split_sample(actx.examples, args.sequences, args.mean_sequences, int(config.seed))
    batches = _Batches(ctx).of(CorpusRows(held | mean, only=held))
    kind = loss_kind(loaded)
    model_ = loaded.model
    current = model_.config._attn_implementation

    def floor() -> float:
        model_.set_attn_implementation("sdpa")
        try:
            t0 = time.perf_counter()
            with torch.inference_mode():
                for b in batches:
                    sequence_losses(loaded, b, kind, int(config.seed))
            return time.perf_counter() - t0
        finally:
            model_.set_attn_implementation(current)

    floor()  # warm-up
    floor_s = min(floor() for _ in range(args.repeats))
    analysis = HeadEffects(options)
    t0 = time.perf_counter()
    analysis.start(actx)
    run_passes(ctx, analysis, actx, {})
    result = analysis.finalize(actx, {})
    wall = time.perf_counter() - t0
    floor_s = min(floor_s, *(floor() for _ in range(args.repeats)))  # again after: the machine is shared
    heads = loaded.info.n_layers * loaded.info.n_heads
    summary = result.summary
    if args.dump:
        import json

        star = "-star" if args.atp_star else ""
        stem = Path(args.dump) / f"head_effects-{length}-{args.replay}-{args.sequences}{star}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        result.tables["head_effects"].to_csv(f"{stem}.csv", index=False)
        Path(f"{stem}.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
        import numpy as np  # the per-sequence losses and estimates, for the noise of the exact effects

        np.savez(f"{stem}.npz", index=analysis.index_, base=analysis.base_, terms=analysis.terms_,
                 ablated=analysis.ablated_, atp=analysis.atp_, atp_drop=analysis.atp_drop_)
    return {"length": length, "tokens": sum(int(b.lengths.sum()) for b in batches),
            "sequences": sum(b.size for b in batches), "heads": heads, "floor_s": floor_s, "analysis_s": wall,
            "per_head": wall / (floor_s * heads), "replay": summary.get("replay", {}),
            "atp": summary["atp"].get("spearman"), "atp_star": (summary.get("atp_star") or {}).get("spearman"),
            "atp_abs": (summary.get("atp_star") or {}).get("spearman_atp_magnitude"),
            "recall": (summary.get("atp_star") or {}).get("recall_top")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--lengths", default="64,256")
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--mean-sequences", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--replay", default="auto", help="auto, off, or both (auto,off): each in turn, same floor")
    parser.add_argument("--atp-star", action="store_true")
    parser.add_argument("--rows", type=int, default=0, help="rows per ablation forward (0: the batch size)")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--dump", default="", help="a directory for each run's head_effects.csv and summary")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        text = ewt_text(directory)
        model = model_path(args.model, directory)
        print(f"model {args.model}, text {'EWT dev' if text else 'packaged Wikipedia sample'}, "
              f"{args.sequences} held-out + {args.mean_sequences} mean sequences, batch {args.batch_size}, "
              f"replay {args.replay}, {torch.get_num_threads()} threads")
        for length, replay in ((int(x), m) for x in args.lengths.split(",") for m in args.replay.split(",")):
            r = one_length(argparse.Namespace(**{**vars(args), "replay": replay}), model, text, length)
            how = r["replay"].get("mode", "full forwards") if isinstance(r["replay"], dict) else r["replay"]
            print(f"  replay {replay}, {length:>4} tokens ({r['sequences']} seq, {r['tokens']} tok, "
                  f"{r['heads']} heads): floor "
                  f"{r['floor_s'] * 1e3:.1f} ms, analysis {r['analysis_s']:.2f} s -> {r['per_head']:.3f} "
                  f"forwards per head (goal <= 0.6) [{how}]")
            print(f"      Spearman: AtP vs effect {r['atp']}; vs |effect|: |AtP| {r['atp_abs']}, AtP* {r['atp_star']}; "
                  f"recall of the top: {r['recall']}")


if __name__ == "__main__":
    main()
