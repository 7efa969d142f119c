"""Model load time: SmolLM2 (GGUF, from the dequantized-model cache) against MiniLM (a benchmark; issue 29).

Each load runs in a fresh process, as a run does: ``load_model`` and the capture-route probe
(``ensure_route``), timed inside the process, and the whole process (interpreter, imports, load) timed
outside it. The two models alternate, best of ``--repeats``. SmolLM2 is loaded once first so that its cache
entry exists (that first load, which converts the GGUF file and writes the entry, is printed too).

Goal (issue 29): the second load of SmolLM2 <= 3x MiniLM's load.

    python bench/load.py [--repeats 3] [--model smollm2] [--reference minilm] [--no-cache-model]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def child(model: str, cache_model: bool) -> None:
    t = time.perf_counter()
    from headscope.engine.capture import ensure_route
    from headscope.model.load import load_model

    imported = time.perf_counter()
    loaded = load_model(model, device="cpu", cache_model=cache_model)
    ensure_route(loaded)
    done = time.perf_counter()
    print(json.dumps({"imports": imported - t, "load": done - imported, "cache": loaded.info.cache}))


def measure(model: str, cache_model: bool = True) -> dict[str, float]:
    t = time.perf_counter()
    cmd = [sys.executable, __file__, "--child", model] + ([] if cache_model else ["--no-cache-model"])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process"] = time.perf_counter() - t
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--reference", default="minilm")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cache-model", dest="cache_model", action="store_false")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.cache_model)
        return
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    first = measure(args.model, args.cache_model)
    print(f"{args.model} first load: {first['load']:.2f} s (cache: {first['cache']})")
    times: dict[str, list[dict[str, float]]] = {args.reference: [], args.model: []}
    for _ in range(args.repeats):
        for model in times:
            times[model].append(measure(model, args.cache_model))
    best = {m: {k: min(r[k] for r in rs) for k in ("load", "process")} for m, rs in times.items()}
    for model, b in best.items():
        print(f"{model}: load {b['load']:.2f} s, whole process {b['process']:.2f} s "
              f"(cache: {times[model][-1]['cache']})")
    ratio = best[args.model]["load"] / best[args.reference]["load"]
    whole = best[args.model]["process"] / best[args.reference]["process"]
    print(f"{args.model}/{args.reference}: load {ratio:.2f}x   (goal <= 3)   whole process {whole:.2f}x")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
