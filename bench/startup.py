"""Start-up of the ``headscope`` command: ``--version``, ``list`` and ``run --help``, each in a fresh process,
against ``python -c pass`` (and, for scale, ``python -c "import torch"``).

    python bench/startup.py [--repeats 7] [--no-torch]

Prints the median and the fastest wall time of each command, its ratio to bare Python, and the heavy modules
it imported (none is the goal: docs/design.md, "Start-up"). A benchmark, not a test: the times depend on the
machine and its load; ``tests/test_startup.py`` checks what gets imported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "pandas", "scipy", "matplotlib", "transformers", "sklearn")

#: The console script ``headscope`` does this; the imports it made are printed to stderr at exit.
CLI = ("import atexit, json, sys\n"
       "atexit.register(lambda: print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(%r))),"
       " file=sys.stderr))\n"
       "from headscope.cli import main\n"
       "sys.exit(main(sys.argv[1:]))\n")


def timed(argv: list[str]) -> tuple[float, str]:
    """Wall time of one run of ``argv`` (output discarded) and its stderr."""
    t = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return time.perf_counter() - t, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs of each command (default: 7)")
    parser.add_argument("--no-torch", action="store_true", help="leave out the `import torch` reference")
    args = parser.parse_args()

    cli = CLI % (HEAVY,)
    cases: list[tuple[str, list[str]]] = [("python -c pass", [sys.executable, "-c", "pass"])]
    if not args.no_torch:
        cases.append(("python -c 'import torch'", [sys.executable, "-c", "import torch"]))
    for command in (["--version"], ["list"], ["run", "--help"]):
        cases.append(("headscope " + " ".join(command), [sys.executable, "-c", cli, *command]))

    timed(cases[-1][1])  # warm the file cache
    base = None
    print(f"{'command':28s} {'median s':>9s} {'min s':>7s} {'x python':>9s}  heavy modules imported")
    for name, argv in cases:
        runs = [timed(argv) for _ in range(args.repeats)]
        times = [t for t, _ in runs]
        median = statistics.median(times)
        base = base if base is not None else median
        heavy = "-"
        if name.startswith("headscope"):
            last = runs[-1][1].strip().splitlines()
            heavy = ", ".join(json.loads(last[-1])) or "none" if last else "?"
        print(f"{name:28s} {median:9.3f} {min(times):7.3f} {median / base:9.1f}  {heavy}")


if __name__ == "__main__":
    main()
