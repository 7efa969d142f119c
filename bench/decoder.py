"""Long-context decoder capture against the SDPA floor, as ratios (a benchmark, not a timed test; issue 29).

SmolLM2 (by default) on windows of the packaged Wikipedia sample packed to 1,024 and 2,048 tokens, batch 1,
the same windows for every path, timed side by side in one process (interleaved, best of ``--repeats``):

- (floor) the model's own forward with SDPA and no weights (``attn_implementation="sdpa"``): what the model
  costs without headscope;
- (capture) the forward with headscope's capture and a consumer that does nothing: the capture alone;
- (examples) the same with the ``examples`` analysis (what ``--analyses examples`` runs);
- (surface) the same with the ``surface`` analysis, as a run feeds it.

Goals (issue 29): surface <= 1.3x the floor at 1,024 tokens and <= 1.5x at 2,048; the capture alone <= 1.2x.

    python bench/decoder.py [--model smollm2] [--lengths 1024,2048] [--tokens 6144] [--repeats 2]
                            [--device cpu|cuda] [--dtype float32|bfloat16|float16]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import torch

GOALS = {"surface": {1024: 1.3, 2048: 1.5}, "capture": {1024: 1.2, 2048: 1.2}}


def windows(args: argparse.Namespace, length: int) -> tuple[Any, list[Any]]:
    """A run context at ``--max-length length`` and its first full windows (>= 95% of ``length`` tokens)."""
    from headscope.config import RunConfig
    from headscope.engine.context import open_context

    config = RunConfig(model=args.model, batch_size=1, out=None, device=args.device, dtype=args.dtype,
                       max_length=length, quiet=True)
    ctx = open_context(config)
    picked = []
    for batch in ctx.batches():
        if int(batch.lengths.max()) >= 0.95 * length:
            picked.append(batch)
        if sum(int(b.lengths.sum()) for b in picked) >= args.tokens:
            break
    return ctx, picked


def timers(ctx: Any, batches: list[Any]) -> dict[str, Callable[[], None]]:
    from headscope.analyses.examples import ExampleMaps
    from headscope.analyses.surface import SurfaceStatistics
    from headscope.engine.capture import capture
    from headscope.engine.feed import feed_batch

    loaded = ctx.loaded
    budget = ctx.config.attention_bytes()

    def sync() -> None:
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()

    def floor() -> None:
        model = loaded.model
        current = model.config._attn_implementation
        model.set_attn_implementation("sdpa")
        try:
            with torch.inference_mode():
                for b in batches:
                    loaded.base(**b.model_inputs())
            sync()
        finally:
            model.set_attn_implementation(current)

    def capture_alone() -> None:
        for b in batches:
            capture(loaded, b, lambda block: None, budget)
        sync()

    def with_analysis(cls: type) -> Callable[[], None]:
        def run() -> None:
            acc = cls()
            acc.start(ctx)
            for b in batches:
                feed_batch(ctx, [acc], b)
            sync()

        return run

    return {"floor": floor, "capture": capture_alone, "examples": with_analysis(ExampleMaps),
            "surface": with_analysis(SurfaceStatistics)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--lengths", default="1024,2048", help="window lengths in tokens, comma-separated")
    parser.add_argument("--tokens", type=int, default=6144, help="tokens per length (whole windows)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--only", default="floor,capture,examples,surface", help="paths to time")
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{torch.get_num_threads()} threads, load average {load:.2f} on {os.cpu_count()} CPUs")
    for length in (int(x) for x in args.lengths.split(",")):
        ctx, batches = windows(args, length)
        info = ctx.loaded.info
        print(f"\n{info.name} ({ctx.loaded.route} capture, {args.device}, {args.dtype}), {length} tokens: "
              f"{len(batches)} windows, {sum(int(b.lengths.sum()) for b in batches)} tokens, batch 1")
        runs = {k: v for k, v in timers(ctx, batches).items() if k in args.only.split(",")}
        runs["floor"]()  # warm-up
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits every path alike
            for key, fn in runs.items():
                t = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t)
        best = {k: min(v) for k, v in times.items()}
        print("  " + "   ".join(f"{k} {best[k]:.2f} s" for k in best))
        if "floor" in best:
            for key in (k for k in best if k != "floor"):
                goal = GOALS.get(key, {}).get(length)
                print(f"  {key}/floor = {best[key] / best['floor']:.3f}" + (f"   (goal <= {goal})" if goal else ""))
        del ctx, batches
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload average at the end {load:.2f}")


if __name__ == "__main__":
    main()
