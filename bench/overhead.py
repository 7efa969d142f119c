"""Overhead and memory of the surface pass, as ratios (a benchmark, not a timed test).

(a) the bare model forward with attention weights returned, and (b) the full surface pass (capture + the
surface accumulator) on the same segments in the same batches: prints b/a. Then the peak memory (RSS) of a
whole ``headscope.run`` over 1x and 4x the corpus, each in its own process: prints 4x/1x.

Goals (issue 2): b/a <= 1.25 on CPU; peak memory at 4x <= 1.15 x peak memory at 1x.

    python bench/overhead.py [--model minilm] [--segments 1000] [--batch-size 16] [--repeats 3]
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
    from headscope.engine.capture import capture_attention
    from headscope.engine.context import RunContext
    from headscope.engine.inputs import Corpus
    from headscope.engine.scratch import Scratch
    from headscope.manifest import Manifest
    from headscope.model.encode import Encoder
    from headscope.model.load import load_model

    config = RunConfig(model=args.model, max_segments=args.segments, batch_size=args.batch_size, out=None)
    loaded = load_model(config.model, device="cpu")
    manifest = Manifest()
    encoder = Encoder(loaded.tokenizer, min(config.max_length, loaded.info.max_length))
    corpus = Corpus(config, encoder, manifest)
    ctx = RunContext(config, loaded, encoder, corpus, manifest)
    batches = list(ctx.batches(corpus.examples(manifest)))
    n_seq = sum(b.size for b in batches)
    print(f"{loaded.info.name}: {n_seq} segments, {len(batches)} batches of <= {args.batch_size}, "
          f"{sum(int(b.lengths.sum()) for b in batches)} tokens, {torch.get_num_threads()} threads")

    def bare() -> None:
        with torch.inference_mode():
            for b in batches:
                loaded.base(**b.model_inputs(), output_attentions=True)

    def full() -> None:
        acc = SurfaceStatistics()
        acc.start(ctx)
        scratch = Scratch()  # as the run loop does
        for b in batches:
            acc.update(b, capture_attention(loaded, b, scratch))
        acc.finalize(ctx, {})

    bare()  # warm-up
    times: dict[str, list[float]] = {"a": [], "b": []}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        for key, fn in (("a", bare), ("b", full)):
            t = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t)
    a, b = min(times["a"]), min(times["b"])
    print(f"(a) bare forward with attentions: {a:.2f} s   (b) full surface pass: {b:.2f} s   "
          f"ratio b/a = {b / a:.3f}   (goal <= 1.25)")


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
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        peak_rss_child(args.child, args.model, args.batch_size)
        return
    timing(args)
    if not args.skip_memory:
        memory(args)


if __name__ == "__main__":
    main()
