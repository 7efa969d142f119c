"""The notebook workflow, timed (issue 37): a model loaded once in a :class:`headscope.Session`, then three runs,
against the cost of one plain ``headscope.run`` by name (which loads the model each time).

Texts from memory, as a notebook holds them: the packaged Wikipedia sample's documents as a list (run 1), as a
pandas Series (run 2) and as a ``datasets.Dataset`` (run 3, when datasets is installed; else the list again).

    python bench/session.py [--model minilm] [--segments 100] [--max-length 128] [--object]

``--object`` hands the session a model object loaded with transformers (the in-memory path) instead of a name.
"""

from __future__ import annotations

import argparse
import logging
import time


def documents() -> list[str]:
    from headscope.corpus.wiki import wikipedia_sample_text

    text = wikipedia_sample_text().read_text(encoding="utf-8")
    return [doc.strip() for doc in text.split("\n\n") if doc.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--segments", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--object", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    t0 = time.perf_counter()
    import pandas as pd

    import headscope

    texts = documents()
    print(f"imports + texts: {time.perf_counter() - t0:.1f} s ({len(texts)} documents)")
    common = {"out": None, "quiet": True, "max_segments": args.segments, "max_length": args.max_length}

    for k in (1, 2):  # the first also pays the process's first forward passes (thread pools, allocator)
        t = time.perf_counter()
        plain = headscope.run(model=args.model, texts=texts, analyses=["surface"], **common)
        timings = plain.run["timings_s"]
        print(f"plain headscope.run by name #{k} (load + surface): {time.perf_counter() - t:.1f} s; load_model "
              f"{timings['load_model']:.1f} s, pass {timings['pass']:.1f} s")

    t = time.perf_counter()
    if args.object:
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

        from headscope.model.packaged import PACKAGED_MODELS

        packaged = PACKAGED_MODELS[args.model]
        kwargs = {"gguf_file": packaged.gguf_file} if packaged.gguf_file else {}
        cls = AutoModelForCausalLM if packaged.gguf_file else AutoModel
        model = cls.from_pretrained(packaged.path(), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(packaged.path(), **kwargs)
        print(f"transformers load of the object: {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        session = headscope.Session(model=model, tokenizer=tokenizer)
    else:
        session = headscope.Session(model=args.model)
    print(f"Session(...): {time.perf_counter() - t:.1f} s  {session!r}")

    try:
        import datasets

        third: object = datasets.Dataset.from_dict({"text": texts})
    except ImportError:
        third = texts
    runs = [("surface", texts), ("surface,examples", pd.Series(texts, name="text")), ("distance", third)]
    for k, (analyses, data) in enumerate(runs, start=1):
        t = time.perf_counter()
        result = session.run(analyses=analyses.split(","), texts=data, **common)
        took = time.perf_counter() - t
        timings = result.run["timings_s"]
        print(f"run {k} ({analyses}, {type(data).__name__}): {took:.1f} s; load_model {timings['load_model']:.2f} s, "
              f"pass {timings['pass']:.1f} s, {result.run['counts']['segments']} segments")


if __name__ == "__main__":
    main()
