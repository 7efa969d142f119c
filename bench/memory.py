"""Peak memory of a whole run against the bare forward pass, and how it grows with the number of layers.

Each measurement is its own process (peak RSS on CPU, peak allocated memory on CUDA), on windows of the
packaged Wikipedia sample:

- ``bare``: load the model and run the same batches forward with its fast attention (SDPA), no weights;
- ``run``: ``headscope.run(analyses=["surface"])`` on those windows: load, layer-by-layer capture, writing
  nothing.

Prints run / bare for MiniLM at 512 tokens and SmolLM2 at 512, 1024 and 2048 tokens (goal <= 1.3), then, for
SmolLM2 cut to 10, 20 and 30 layers, the memory the pass adds above what the process held before it, run
minus bare forward (goal: flat in the number of layers, not linear).

    python bench/memory.py [--device cpu|cuda] [--dtype float32|bfloat16|float16] [--windows 4]
                           [--attention-memory 1GiB] [--cases minilm:512,smollm2:512,...] [--layers 10,20,30]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

import torch


def peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PassSampler:
    """Peak resident memory during the pass above the resident memory just before it (CPU: /proc sampling).

    The whole process's peak includes loading the model (for GGUF, dequantising every layer), which hides
    what the pass itself adds; this isolates it.
    """

    def __init__(self, device: str) -> None:
        import threading

        self.device = device
        self.base = self.peak = self._now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _now(self) -> float:
        if self.device.startswith("cuda"):
            return torch.cuda.memory_allocated() / 2**20
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize() / 2**20

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._now())

    def __enter__(self) -> PassSampler:
        self.base = self.peak = self._now()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._now())

    @property
    def added_mb(self) -> float:
        return self.peak - self.base


def truncate_layers(loaded: Any, k: int) -> None:
    """Keep the first ``k`` layers of the model (the longest ModuleList of n_layers blocks) and re-probe."""
    from headscope.engine.capture import choose_route

    n = loaded.info.n_layers
    lists = [m for m in loaded.base.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n]
    if not lists:
        raise ValueError("no layer list found")
    layers = lists[0]
    for _ in range(n - k):
        del layers[len(layers) - 1]
    config = loaded.model.config
    config.num_hidden_layers = k
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:k]
    loaded.info.n_layers = k
    loaded.route = choose_route(loaded, "auto")


def child(args: argparse.Namespace) -> None:
    import headscope
    from headscope.runner import context, orchestrate

    t = time.perf_counter()
    if args.layers_child:
        original = context.load_model

        def load_cut(*a: Any, **kw: Any) -> Any:
            loaded = original(*a, **kw)
            truncate_layers(loaded, args.layers_child)
            return loaded

        context.load_model = load_cut  # type: ignore[assignment]
    common = dict(model=args.model, max_length=args.length, max_segments=args.windows, device=args.device,
                  dtype=args.dtype, attention_memory=args.attention_memory, out=None, quiet=True)
    sampler = PassSampler(args.device)
    if args.mode == "run":
        from headscope.runner import passes

        real_pass = passes.local_pass

        def sampled_pass(*a: Any, **kw: Any) -> Any:
            with sampler:
                return real_pass(*a, **kw)

        orchestrate.local_pass = sampled_pass  # type: ignore[assignment]
        result = headscope.run(analyses=["surface"], **common)
        windows = result.run["counts"]["segments"]
    else:
        from headscope.config import RunConfig
        from headscope.engine.inputs import Corpus
        from headscope.manifest import Manifest
        from headscope.model.encode import Encoder
        from headscope.runner.context import RunContext

        config = RunConfig(**common)
        loaded = context.load_model(args.model, device=args.device, dtype=args.dtype)
        info = loaded.info
        encoder = Encoder(loaded.tokenizer, config.resolved_max_length(info.max_length, info.is_causal),
                          use_token_types=(getattr(loaded.model.config, "type_vocab_size", 0) or 0) > 1)
        manifest = Manifest()
        corpus = Corpus(config, encoder, manifest)
        ctx = RunContext(config, loaded, encoder, corpus, manifest)
        windows = 0
        batches = list(ctx.batches(corpus.examples(manifest)))
        with torch.inference_mode(), sampler:
            for batch in batches:
                loaded.base(**batch.model_inputs())  # no capture active: SDPA, no weights
                windows += batch.size
    print(json.dumps({"peak_mb": peak_mb(args.device), "pass_mb": sampler.added_mb, "windows": windows,
                      "seconds": time.perf_counter() - t}))


def measure(args: argparse.Namespace, model: str, length: int, mode: str, layers: int = 0) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", mode, "--model", model, "--length", str(length), "--windows",
           str(args.windows), "--device", args.device, "--dtype", args.dtype, "--attention-memory",
           args.attention_memory, "--layers-child", str(layers)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--attention-memory", default="256MiB")
    parser.add_argument("--cases", default="minilm:512,smollm2:512,smollm2:1024,smollm2:2048")
    parser.add_argument("--layers", default="10,20,30", help="layer counts of SmolLM2 for the growth check "
                        "(empty to skip)")
    parser.add_argument("--layers-length", type=int, default=1024)
    parser.add_argument("--child", choices=["run", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--layers-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.mode = args.child
        child(args)
        return
    print(f"device {args.device}, dtype {args.dtype}, {args.windows} windows per case, attention memory "
          f"{args.attention_memory}")
    for case in filter(None, args.cases.split(",")):
        model, length = case.split(":")
        bare = measure(args, model, int(length), "bare")
        run = measure(args, model, int(length), "run")
        print(f"{model} at {length} tokens: bare forward {bare['peak_mb']:.0f} MB ({bare['seconds']:.1f} s), "
              f"run {run['peak_mb']:.0f} MB ({run['seconds']:.1f} s, {run['windows']} windows)   "
              f"ratio run/bare = {run['peak_mb'] / bare['peak_mb']:.3f}   (goal <= 1.3)")
    deltas = []
    for k in [int(x) for x in filter(None, args.layers.split(","))]:
        bare = measure(args, "smollm2", args.layers_length, "bare", k)
        run = measure(args, "smollm2", args.layers_length, "run", k)
        deltas.append((k, run["pass_mb"] - bare["pass_mb"]))
        print(f"smollm2 cut to {k} layers at {args.layers_length} tokens: memory the pass adds: bare forward "
              f"{bare['pass_mb']:.0f} MB, run {run['pass_mb']:.0f} MB, run - bare = {deltas[-1][1]:.0f} MB "
              f"(whole-process peaks {bare['peak_mb']:.0f} / {run['peak_mb']:.0f} MB)")
    if len(deltas) >= 2:
        (k0, d0), (k1, d1) = deltas[0], deltas[-1]
        print(f"growth of the pass's extra memory from {k0} to {k1} layers: {d1 - d0:+.0f} MB "
              f"({(d1 - d0) / max(k1 - k0, 1):+.1f} MB per layer; flat = about 0)")


if __name__ == "__main__":
    main()
