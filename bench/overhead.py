"""Overhead and memory of the surface pass, as ratios (a benchmark, not a timed test).

On the same segments in the same batches:

- (floor) the model forward with its fast attention kernel (SDPA) and no weights: what the model costs;
- (a) the 0.1 path: eager forward with every layer's weights returned (``output_attentions=True``);
- (b) the full surface pass as a run does it: layer-by-layer capture and the surface accumulator.

Prints b/floor (goal <= 1.3 on CPU for MiniLM, issue 12) and a/floor. Then whole runs as a user sees them,
each in its own process, alternating, best of ``--repeats``: ``headscope.run`` with the surface analysis
against a floor process that loads the model, reads the same corpus into the same batches and runs the SDPA
forward without weights (goal <= 1.25, issue 29). Then the peak memory (RSS) of a whole ``headscope.run`` over
1x and 4x the corpus, each in its own process: prints 4x/1x (goal <= 1.15).

    python bench/overhead.py [--model minilm] [--segments 1000] [--batch-size 16] [--repeats 3]
                             [--device cpu|cuda] [--dtype float32|bfloat16|float16] [--skip-whole]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def timing(args: argparse.Namespace) -> None:
    from headscope.analyses.surface import SurfaceStatistics
    from headscope.config import RunConfig
    from headscope.engine.capture import capture, ensure_route
    from headscope.engine.inputs import Corpus
    from headscope.manifest import Manifest
    from headscope.model.encode import Encoder
    from headscope.model.load import load_model
    from headscope.runner.context import RunContext
    from headscope.runner.feed import feed_batch

    config = RunConfig(model=args.model, max_segments=args.segments, batch_size=args.batch_size, out=None,
                       device=args.device, dtype=args.dtype)
    loaded = load_model(config.model, device=args.device, dtype=args.dtype)
    ensure_route(loaded)  # the capture route, as open_context chooses it
    manifest = Manifest()
    encoder = Encoder(loaded.tokenizer, config.resolved_max_length(loaded.info.max_length, loaded.info.is_causal))
    corpus = Corpus(config, encoder, manifest)
    ctx = RunContext(config, loaded, encoder, corpus, manifest)
    batches = list(ctx.batches(corpus.examples(manifest)))
    n_seq = sum(b.size for b in batches)
    print(f"{loaded.info.name} ({loaded.route} capture, {args.device}, {args.dtype}): {n_seq} segments, "
          f"{len(batches)} batches of <= {args.batch_size}, {sum(int(b.lengths.sum()) for b in batches)} tokens, "
          f"{torch.get_num_threads()} threads")

    def sync() -> None:
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()

    def floor() -> None:
        with torch.inference_mode():
            for b in batches:
                loaded.base(**b.model_inputs())  # no capture active: SDPA only
        sync()

    def stacked() -> None:
        for b in batches:
            capture(loaded, b, lambda block: None, 1 << 40, route="stacked")
        sync()

    def full() -> None:
        acc = SurfaceStatistics()
        acc.start(ctx)
        for b in batches:
            feed_batch(ctx, [acc], b)
        acc.finalize(ctx, {})
        sync()

    floor()  # warm-up
    runs = {"floor": floor, "a": stacked, "b": full}
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits all alike
        for key, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t)
    f, a, b = (min(times[k]) for k in ("floor", "a", "b"))
    print(f"(floor) SDPA forward, no weights: {f:.2f} s   (a) eager forward, all layers' weights: {a:.2f} s   "
          f"(b) full surface pass: {b:.2f} s")
    print(f"ratio b/floor = {b / f:.3f}   (goal <= 1.3)   a/floor = {a / f:.3f}   b/a = {b / a:.3f}")


def floor_child(segments: int, model: str, batch_size: int, device: str, dtype: str) -> None:
    """A whole process that does what a run must do at least: load, read and batch the corpus, SDPA forward."""
    from headscope.config import RunConfig
    from headscope.runner.context import open_context

    config = RunConfig(model=model, max_segments=segments, batch_size=batch_size, out=None, device=device,
                       dtype=dtype, quiet=True, analyses=["surface"])
    ctx = open_context(config)
    model_ = ctx.loaded.model
    model_.set_attn_implementation("sdpa")
    with torch.inference_mode():
        for b in ctx.batches():
            ctx.loaded.base(**b.model_inputs())
    print(json.dumps({"segments": segments}))


def run_child(segments: int, model: str, batch_size: int, device: str, dtype: str) -> None:
    import headscope

    headscope.run(model=model, max_segments=segments, out=None, quiet=True, batch_size=batch_size, device=device,
                  dtype=dtype, analyses=["surface"])
    print(json.dumps({"segments": segments}))


def whole(args: argparse.Namespace) -> None:
    """Whole processes, as a user sees them: ``headscope.run`` (surface) against the floor process."""
    times: dict[str, list[float]] = {"floor": [], "run": []}
    for _ in range(args.repeats):
        for kind in times:
            t = time.perf_counter()
            subprocess.run([sys.executable, __file__, f"--{kind}-child", str(args.segments), "--model", args.model,
                            "--batch-size", str(args.batch_size), "--device", args.device, "--dtype", args.dtype],
                           capture_output=True, text=True, check=True)
            times[kind].append(time.perf_counter() - t)
    f, r = min(times["floor"]), min(times["run"])
    print(f"whole processes: floor (load, corpus, SDPA forward) {f:.2f} s   headscope run (surface) {r:.2f} s")
    print(f"ratio run/floor = {r / f:.3f}   (goal <= 1.25)")


def peak_rss_child(segments: int, model: str, batch_size: int) -> None:
    import headscope

    t = time.perf_counter()
    result = headscope.run(model=model, max_segments=segments, out=None, quiet=True, batch_size=batch_size,
                           device="cpu", analyses=["surface"])
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "segments": result.run["counts"]["segments"], "seconds": time.perf_counter() - t}))


def memory(args: argparse.Namespace) -> None:
    """A whole run over N and 4N segments of the packaged Wikipedia sample, each in a fresh process."""
    peaks = {}
    for factor in (1, 4):
        out = subprocess.run([sys.executable, __file__, "--child", str(args.segments * factor), "--model",
                              args.model, "--batch-size", str(args.batch_size)], capture_output=True, text=True,
                             check=True)
        peaks[factor] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{factor}x corpus: {peaks[factor]['segments']} segments, peak RSS "
              f"{peaks[factor]['peak_rss_mb']:.0f} MB, {peaks[factor]['seconds']:.1f} s")
    ratio = peaks[4]["peak_rss_mb"] / peaks[1]["peak_rss_mb"]
    print(f"peak memory 4x / 1x = {ratio:.3f}   (goal <= 1.15)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--segments", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-whole", action="store_true")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--floor-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        peak_rss_child(args.child, args.model, args.batch_size)
        return
    if args.floor_child or args.run_child:
        fn = floor_child if args.floor_child else run_child
        fn(args.floor_child or args.run_child, args.model, args.batch_size, args.device, args.dtype)
        return
    timing(args)
    if not args.skip_whole:
        whole(args)
    if not args.skip_memory:
        memory(args)


if __name__ == "__main__":
    main()
