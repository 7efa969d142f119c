"""Long-context decoder capture against the SDPA floor, as ratios (a benchmark, not a timed test; issue 29).

SmolLM2 (by default) on windows of the packaged Wikipedia sample packed to 1,024 and 2,048 tokens, batch 1,
the same windows for every path, timed side by side in one process (interleaved, best of ``--repeats``):

- (floor) the model's own forward with SDPA and no weights (``attn_implementation="sdpa"``): what the model
  costs without headscope;
- (capture) the forward with headscope's capture and a consumer that does nothing: the capture alone;
- (examples) the same with the ``examples`` analysis (what ``--analyses examples`` runs);
- (surface) the same with the ``surface`` analysis, as a run feeds it;
- (effects_base, effects_atp, effects_heads, effects_heads_1; on request with ``--only``) the forwards of
  ``head_effects`` (issue 30) on the same windows, mean ablation: the baseline loss forward (also what a batch
  of the mean sample costs), attribution patching's forward and backward, and ``--effects-heads`` heads
  ablated, batched into one forward with per-row gates (``effects_heads``) or one head per forward
  (``effects_heads_1``). Printed per head against the floor, and the whole pass per window extrapolated to
  every head (baseline + AtP + n_layers x n_heads ablations).
- (span) the ``span`` analysis's measuring pass at that length: the capture with span's per-block statistic
  (a cumulative sum over keys read at the bucket edges), printed against the floor and against the capture alone
  (the main pass's capture); (span_check, on request with ``--only``) its causal check: three loss forwards per
  window (every head whole, and twice a KV budget of a sink and 64 keys, here on every head: the mask's worst case).

Goals (issue 29): surface <= 1.3x the floor at 1,024 tokens and <= 1.5x at 2,048; the capture alone <= 1.2x.
head_effects: one forward per head is its floor (an ablation costs a loss forward: the floor plus the LM head).

    python bench/decoder.py [--model smollm2] [--lengths 1024,2048] [--tokens 6144] [--repeats 2]
                            [--device cpu|cuda] [--dtype float32|bfloat16|float16]
    python bench/decoder.py --only floor,effects_base,effects_atp,effects_heads,effects_heads_1 --lengths 256
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
    from headscope.runner.context import open_context

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


def timers(ctx: Any, batches: list[Any], effects_heads: int = 9) -> dict[str, Callable[[], None]]:
    from headscope.analyses.examples import ExampleMaps
    from headscope.analyses.surface import SurfaceStatistics
    from headscope.engine.capture import capture
    from headscope.runner.feed import feed_batch

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

    def effects(kind: str) -> Callable[[], None]:
        """``head_effects``' forwards of each window (mean ablation; the means of these windows)."""
        from headscope.analyses.head_effects import head_forwards
        from headscope.engine.forwards import HeadSums, Loss, run_forward

        seed = int(ctx.config.seed)
        info = loaded.info
        sums = [run_forward(loaded, b, HeadSums(loss="objective"), seed) for b in batches]
        replace = sum(o.head_sums for o in sums) / sum(o.head_tokens for o in sums)

        def run() -> None:
            import numpy as np

            total = info.n_layers * info.n_heads
            for b in batches:
                if kind == "base":
                    forwards = [Loss(tag=("base",), per_sequence=True)]
                elif kind == "atp":
                    forwards = head_forwards(b.size, replace)[:1]
                else:  # the first effects_heads heads, in one forward (per-row gates) or one per forward
                    per = effects_heads if kind == "heads" else 1
                    forwards = []
                    for start in range(0, effects_heads, per):
                        gates = np.ones((per, total))
                        gates[np.arange(per), np.arange(start, start + per)] = 0.0
                        forwards.append(Loss(per_sequence=True, replace=replace,
                                             gates=gates.reshape(per, info.n_layers, info.n_heads)))
                for forward in forwards:
                    run_forward(loaded, b, forward, seed)
            sync()

        return run

    def span_measure() -> None:
        """``span``'s measuring pass of these windows at their length."""
        from headscope.analyses.span import AttentionSpan, SpanOptions
        from headscope.engine.forwards import Observe

        acc = AttentionSpan(SpanOptions(span_lengths=str(max(int(b.lengths.max()) for b in batches))))
        acc.start(ctx.for_analyses())
        forward = Observe(tag=("measure", 0))
        for b in batches:
            capture(loaded, b, lambda block, b=b: acc.update_pass_attention(b, forward, block), budget)
            acc.update_pass(b, forward, None)  # type: ignore[arg-type]
        sync()

    def span_check() -> None:
        """``span``'s causal check of these windows: the loss whole, and twice with a KV budget."""
        import numpy as np

        from headscope.engine.forwards import Loss, run_forward

        info = loaded.info
        windows = np.full((info.n_layers, info.n_heads), 64, dtype=np.int64)
        forwards = [Loss(tag="base", per_sequence=True)] + [
            Loss(tag=tag, per_sequence=True, kv_budget=windows) for tag in ("budget", "random")]
        for b in batches:
            for forward in forwards:
                run_forward(loaded, b, forward, int(ctx.config.seed))
        sync()

    return {"span": span_measure, "span_check": span_check,
            "floor": floor, "capture": capture_alone, "examples": with_analysis(ExampleMaps),
            "surface": with_analysis(SurfaceStatistics), "effects_base": effects("base"),
            "effects_atp": effects("atp"), "effects_heads": effects("heads"), "effects_heads_1": effects("heads_1")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--lengths", default="1024,2048", help="window lengths in tokens, comma-separated")
    parser.add_argument("--tokens", type=int, default=6144, help="tokens per length (whole windows)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--only", default="floor,capture,examples,surface,span", help="paths to time (also: "
                        "span_check, "
                        "effects_base, effects_atp, effects_heads, effects_heads_1)")
    parser.add_argument("--effects-heads", type=int, default=9, help="heads ablated by the effects_heads paths")
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{torch.get_num_threads()} threads, load average {load:.2f} on {os.cpu_count()} CPUs")
    for length in (int(x) for x in args.lengths.split(",")):
        ctx, batches = windows(args, length)
        info = ctx.loaded.info
        print(f"\n{info.name} ({ctx.loaded.route} capture, {args.device}, {args.dtype}), {length} tokens: "
              f"{len(batches)} windows, {sum(int(b.lengths.sum()) for b in batches)} tokens, batch 1")
        only = args.only.split(",")
        runs = {k: v for k, v in timers(ctx, batches, args.effects_heads).items() if k in only}
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
            if {"span", "capture"} <= set(best):
                print(f"  span/capture = {best['span'] / best['capture']:.3f}   (span's statistic on the main pass's "
                      "capture)")
            per_head = {k: best[k] / args.effects_heads for k in ("effects_heads", "effects_heads_1") if k in best}
            for key, t in per_head.items():
                print(f"  {key}: per head {t / best['floor']:.3f} x floor")
            if {"effects_base", "effects_atp"} <= set(best) and per_head:
                heads = info.n_layers * info.n_heads
                whole = best["effects_base"] + best["effects_atp"] + heads * min(per_head.values())
                print(f"  head_effects pass (baseline + AtP + {heads} heads, the faster batching) = "
                      f"{whole / best['floor']:.1f} x floor, {whole / heads / best['floor']:.3f} x floor per head")
        del ctx, batches
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload average at the end {load:.2f}")


if __name__ == "__main__":
    main()
