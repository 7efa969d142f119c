"""The package's layers (docs/design.md): no module imports from a layer above its own, and no import circle.

For the layers every ``headscope`` import is counted, at module level, inside functions and under
``TYPE_CHECKING`` alike: a type-only import from above is still a dependency a reader has to follow. For
circles, the imports that run, inside functions too (a type-only import cannot deadlock an import), with what
Python runs for them: importing ``a.b.c`` first runs the ``__init__`` of ``a.b``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "headscope"

#: Layers from the bottom up; a module may import its own layer and those below it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("settings", ("headscope.version", "headscope.lazy", "headscope.errors", "headscope.config", "headscope.manifest")),
    ("corpus", ("headscope.corpus",)),
    ("model", ("headscope.model",)),
    ("engine core", ("headscope.engine.batch", "headscope.engine.capture", "headscope.engine.scratch",
                     "headscope.engine.wordlevel", "headscope.engine.norm_weights", "headscope.engine.rollout",
                     "headscope.engine.state", "headscope.engine.results", "headscope.engine.context",
                     "headscope.engine.inputs", "headscope.engine.outdir", "headscope.engine.interrupt",
                     "headscope.engine.progress")),
    ("report parts", ("headscope.report.section", "headscope.report.figures", "headscope.report.heatmap",
                      "headscope.report.page")),
    ("analyses", ("headscope.analyses",)),
    ("report", ("headscope.report.build", "headscope.report")),
    ("run loop", ("headscope.engine.feed", "headscope.engine.checkpoint", "headscope.engine.passes",
                  "headscope.engine.ray_engine", "headscope.engine")),
    ("orchestration", ("headscope.orchestrate", "headscope.atlas")),
    ("commands", ("headscope.compare", "headscope.viewer", "headscope.report.command")),
    ("api and cli", ("headscope.cli", "headscope.catalog", "headscope")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, typing_too: bool = True) -> set[str]:
    """The ``headscope`` modules ``path`` imports (without ``typing_too``: leaving out ``TYPE_CHECKING`` blocks)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if (not typing_too and isinstance(node, ast.If) and isinstance(node.test, ast.Name)
                and node.test.id == "TYPE_CHECKING"):
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("headscope"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("headscope"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for k, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), k
    if rank < 0:
        raise AssertionError(f"{module} is in no layer of tests/test_layers.py")
    return rank


GRAPH = {module_name(p): imports(p) for p in SRC.rglob("*.py")}
#: Imports that run (type-only ones cannot make a circle at import time).
RUNTIME = {module_name(p): imports(p, typing_too=False) for p in SRC.rglob("*.py")}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_from_a_layer_above(module: str) -> None:
    mine = layer_of(module)
    up = [f"{target} ({LAYERS[layer_of(target)][0]})" for target in sorted(GRAPH[module])
          if layer_of(target) > mine]
    assert not up, f"{module} ({LAYERS[mine][0]}) imports from above: {', '.join(up)}"


def test_no_import_circle() -> None:
    known = set(RUNTIME)

    def resolve(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    def with_packages(m: str, target: str) -> set[str]:
        """``target`` and the packages whose ``__init__`` importing it runs (those holding ``m`` already run)."""
        parts = target.split(".")
        found = {target}
        for k in range(2, len(parts)):
            package = ".".join(parts[:k])
            if package in known and not m.startswith(package + "."):
                found.add(package)
        return found

    edges = {m: {t for x in targets for t in with_packages(m, resolve(x) or "") if t and t != m}
             for m, targets in RUNTIME.items()}
    # A module importing from its own package finds the package already running: not an edge of its own.
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join([*stack[stack.index(t):], t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
