"""Throughput on Ray with 1 and 2 local workers, and the cost of checkpointing and resuming.

Whole runs as a user sees them (``headscope.run``: model load on every worker, the pass, finalizing),
on segments of the packaged Wikipedia sample with the packaged MiniLM:

- ``--engine local`` once, then ``--engine ray`` with 1 and 2 workers on a local Ray instance: sequences per
  second of the whole run and the 2 / 1 worker ratio (on a 2-core machine, at most about 2);
- a local run checkpointing every ``--checkpoint-every`` batches against one that never does: the extra time
  as a share of the run; then a run stopped half-way and resumed: the resumed part's time against the
  half of an uninterrupted run it replaces.

    python bench/scaling.py [--segments 400] [--analyses surface,roles] [--checkpoint-every 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import tempfile
import time
from typing import Any


def timed(**kwargs: Any) -> tuple[float, Any]:
    import headscope

    t = time.perf_counter()
    result = headscope.run(quiet=True, **kwargs)
    return time.perf_counter() - t, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--segments", type=int, default=400)
    parser.add_argument("--analyses", default="surface,roles")
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    common = dict(model=args.model, max_segments=args.segments, analyses=args.analyses, device="cpu", report=False)
    work = tempfile.mkdtemp(prefix="headscope-scaling-")
    try:
        local_s, result = timed(out=None, **common)
        n = result.run["counts"]["examples"]
        print(f"{args.model}, {n} segments, analyses {args.analyses}")
        print(f"local engine: {local_s:.1f} s, {n / local_s:.1f} sequences/s")
        if not args.skip_ray:
            import ray

            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            rates = {}
            for workers in (1, 2):
                seconds, _ = timed(out=None, engine="ray", workers=workers, **common)
                rates[workers] = n / seconds
                print(f"ray engine, {workers} worker(s): {seconds:.1f} s, {rates[workers]:.1f} sequences/s")
            ray.shutdown()
            print(f"throughput 2 workers / 1 worker = {rates[2] / rates[1]:.2f}")

        never, _ = timed(out=f"{work}/never", checkpoint_every=0, **common)
        every, _ = timed(out=f"{work}/every", checkpoint_every=args.checkpoint_every, **common)
        print(f"checkpoint every {args.checkpoint_every} batches: {every:.1f} s against {never:.1f} s without: "
              f"+{(every - never) / never:.1%} of the run")

        from headscope.runner import passes

        real, seen = passes.feed_batch, {"n": 0}
        batches = sum(s["batches"] for s in result.run["segments"])
        half = max(1, batches // 2)

        def feed(ctx: Any, analyses: Any, batch: Any) -> Any:
            seen["n"] += 1
            if seen["n"] == half:
                os.kill(os.getpid(), signal.SIGINT)
            return real(ctx, analyses, batch)

        passes.feed_batch = feed  # type: ignore[assignment]
        stopped_at = time.perf_counter()
        with contextlib.suppress(KeyboardInterrupt):  # the stop writes the checkpoint, then raises
            timed(out=f"{work}/stopped", checkpoint_every=0, **common)
        first = time.perf_counter() - stopped_at
        passes.feed_batch = real  # type: ignore[assignment]
        resume_s, _ = timed(resume=f"{work}/stopped")
        print(f"stopped after {half} of {batches} batches ({first:.1f} s, checkpoint written), resumed in "
              f"{resume_s:.1f} s: stop + resume = {(first + resume_s) / never:.2f} x an uninterrupted run")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
