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

#: Layers from the bottom up; a module may import its own layer and those below it. Every module of the package
#: is named here (a package by its ``__init__``'s name): a module that is not fails
#: :func:`test_every_module_has_a_layer`, so a new one is placed on purpose.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("settings", ("headscope.version", "headscope.lazy", "headscope.errors", "headscope.config", "headscope.manifest",
                  "headscope.columns", "headscope.seeds")),
    ("corpus", ("headscope.corpus", "headscope.corpus.types", "headscope.corpus.text", "headscope.corpus.conllu",
                "headscope.corpus.wiki", "headscope.corpus.parse", "headscope.corpus.vectors",
                "headscope.corpus.coref", "headscope.corpus.coref_readers", "headscope.corpus.coref_windows",
                "headscope.corpus.mentions", "headscope.corpus.memory")),
    ("model", ("headscope.model", "headscope.model.support", "headscope.model.packaged", "headscope.model.gguf_cache",
               "headscope.model.load", "headscope.model.inmemory", "headscope.model.segments", "headscope.model.align",
               "headscope.model.encode", "headscope.model.coref_encode", "headscope.model.gates",
               "headscope.model.losses")),
    ("engine", ("headscope.engine", "headscope.engine.batch", "headscope.engine.capture", "headscope.engine.scratch",
                "headscope.engine.wordlevel", "headscope.engine.norm_weights", "headscope.engine.rollout",
                "headscope.engine.state", "headscope.engine.results", "headscope.engine.context",
                "headscope.engine.codec", "headscope.engine.inputs", "headscope.engine.outdir",
                "headscope.engine.interrupt",
                "headscope.engine.progress", "headscope.engine.forwards", "headscope.engine.replay",
                "headscope.engine.chunked_loss",
                "headscope.engine.capture.blocks", "headscope.engine.capture.stream",
                "headscope.engine.capture.attention", "headscope.engine.capture.padding",
                "headscope.engine.capture.routes", "headscope.engine.forwards.vocabulary",
                "headscope.engine.forwards.executor", "headscope.engine.forwards.losses",
                "headscope.engine.forwards.gradients", "headscope.engine.forwards.ablations",
                "headscope.engine.forwards.kv_budget", "headscope.engine.forwards.generation",
                 "headscope.engine.atp_star")),
    ("report parts", ("headscope.report.section", "headscope.report.figures", "headscope.report.heatmap",
                      "headscope.report.page", "headscope.report.viewpage")),
    ("analyses", ("headscope.analyses", "headscope.analyses.base", "headscope.analyses.registry",
                  "headscope.analyses.splits", "headscope.analyses.stats", "headscope.analyses.conventions",
                  "headscope.analyses.relations", "headscope.analyses.ablation", "headscope.analyses.coref",
                  "headscope.analyses.decoder_heads", "headscope.analyses.decoder_scores",
                  "headscope.analyses.induction_probe", "headscope.analyses.distance", "headscope.analyses.examples",
                  "headscope.analyses.head_effects", "headscope.analyses.effect_stats",
                  "headscope.analyses.importance", "headscope.analyses.probe",
                  "headscope.analyses.pruning", "headscope.analyses.retrieval",
                  "headscope.analyses.retrieval_prompts", "headscope.analyses.roles",
                  "headscope.analyses.roles.accumulator", "headscope.analyses.roles.arcs",
                  "headscope.analyses.roles.options", "headscope.analyses.roles.scores",
                  "headscope.analyses.roles.tables", "headscope.analyses.roles.targets",
                  "headscope.analyses.sep_gradient", "headscope.analyses.similarity", "headscope.analyses.span",
                  "headscope.analyses.span_masses", "headscope.analyses.surface", "headscope.analyses.syntax",
                  "headscope.analyses.syntax.analysis",
                  "headscope.analyses.syntax.arcs", "headscope.analyses.syntax.predict",
                  "headscope.analyses.syntax.selection", "headscope.analyses.probe.analysis",
                  "headscope.analyses.probe.features", "headscope.analyses.probe.store",
                  "headscope.analyses.probe.training", "headscope.analyses.trees", "headscope.analyses.findings",
                  "headscope.analyses.labels", *(f"headscope.analyses.labels.{name}" for name in (
                      "coref", "decoder_heads", "distance", "head_effects", "importance", "retrieval", "roles",
                      "span", "surface", "syntax")))),
    ("atlas", ("headscope.atlas",)),
    ("report", ("headscope.report", "headscope.report.build", "headscope.report.overview",
                "headscope.report.sections", *(f"headscope.report.sections.{name}" for name in (
                    "ablation", "coref", "decoder_heads", "distance", "examples", "head_effects", "importance",
                    "probe", "pruning", "retrieval", "roles", "sep_gradient", "similarity", "span", "surface",
                    "syntax")))),
    ("run loop", ("headscope.runner", "headscope.runner.feed", "headscope.runner.checkpoint",
                  "headscope.runner.passes", "headscope.runner.intervene", "headscope.runner.ray_engine",
                  "headscope.runner.preflight", "headscope.runner.console", "headscope.runner.usage",
                  "headscope.runner.plan", "headscope.runner.signature", "headscope.runner.context")),
    ("orchestration", ("headscope.runner.orchestrate",)),
    ("commands", ("headscope.comparison", *(f"headscope.comparison.{name}" for name in (
        "result", "stats", "figures", "page", "save", "command")), "headscope.viewer", "headscope.report.command",
        "headscope.session")),
    ("api and cli", ("headscope.cli", "headscope.catalog", "headscope.__main__", "headscope")),
]

MODULES = {"headscope" + "".join("." + part for part in p.relative_to(SRC).with_suffix("").parts
                                 if part != "__init__") for p in SRC.rglob("*.py")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, typing_too: bool = True) -> set[str]:
    """The ``headscope`` modules ``path`` imports (without ``typing_too``: leaving out ``TYPE_CHECKING`` blocks).

    ``from headscope.model import gguf_cache`` imports the module ``headscope.model.gguf_cache`` (and the package).
    A string literal that names a module of the package is an import too: lazy exports (``_EXPORTS``),
    ``importlib.import_module(...)`` and the CLI's table of subcommand modules import by name. The module's
    own packages are left out (they run before it).
    """
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if (not typing_too and isinstance(node, ast.If) and isinstance(node.test, ast.Name)
                and node.test.id == "TYPE_CHECKING"):
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("headscope"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("headscope"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in MODULES:
            found.add(node.value)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    # Its own packages have run before the module does (importing ``a.b.c`` runs ``a`` and ``a.b`` first), so
    # naming one (the logger "headscope", ``resources.files("headscope.report")``) adds no dependency.
    name = module_name(path)
    parts = name.split(".")
    return found - {".".join(parts[:k]) for k in range(1, len(parts) + 1)}


LISTED = {module: rank for rank, (_, modules) in enumerate(LAYERS) for module in modules}


def layer_of(module: str) -> int:
    """The layer of ``module`` (a name a module imports may be a class or function of a module: its module's)."""
    name = module
    while name not in LISTED and "." in name:
        name = name.rpartition(".")[0]
    if name not in LISTED:
        raise AssertionError(f"{module} is in no layer of tests/test_layers.py")
    return LISTED[name]


def test_every_module_has_a_layer() -> None:
    unlisted = sorted(MODULES - set(LISTED))
    assert not unlisted, f"modules in no layer of tests/test_layers.py (place each in LAYERS): {unlisted}"
    gone = sorted(set(LISTED) - MODULES)
    assert not gone, f"LAYERS names modules that do not exist: {gone}"
    twice = sorted(m for m in LISTED if sum(m in modules for _, modules in LAYERS) > 1)
    assert not twice, f"modules in two layers: {twice}"


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


#: What an analysis may not import at run time (issue #27, analyses as pure accumulators): it reads what the
#: corpus and the encoder put on the examples and what the run's context hands over, and imports from these
#: packages under ``if TYPE_CHECKING:`` only, for annotations.
DATA_PACKAGES = ("headscope.model", "headscope.corpus")
#: None left: the intervention analyses declare their passes and the engine runs the model for them
#: (headscope.engine.forwards).
PENDING_INTERVENTIONS: set[str] = set()
ANALYSES = SRC / "analyses"


def _type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def runtime_data_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of each import of :data:`DATA_PACKAGES` in ``path`` that runs: at module level, in
    functions and classes, relative and ``importlib.import_module("...")`` ones too; only the body of an
    ``if TYPE_CHECKING:`` is left out (its ``else`` runs)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []

    def check(line: int, candidates: list[str]) -> None:
        for name in candidates:
            if any(name == p or name.startswith(p + ".") for p in DATA_PACKAGES):
                found.append((line, name))
                return

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                check(node.lineno, [alias.name])
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            # ``from headscope import model`` imports the package by its name.
            check(node.lineno, [base, *(f"{base}.{alias.name}" for alias in node.names)])
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                check(node.lineno, [node.args[0].value])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return found


def test_pending_interventions_exist() -> None:
    missing = sorted(name for name in PENDING_INTERVENTIONS if not (ANALYSES / name).is_file())
    assert not missing, f"PENDING_INTERVENTIONS names files that are not under src/headscope/analyses: {missing}"


@pytest.mark.parametrize("path", sorted(ANALYSES.rglob("*.py")), ids=lambda p: str(p.relative_to(ANALYSES)))
def test_analyses_import_no_model_or_corpus_at_run_time(path: Path) -> None:
    where = path.relative_to(SRC.parents[1])
    found = runtime_data_imports(path)
    if str(path.relative_to(ANALYSES)) in PENDING_INTERVENTIONS:
        assert found, (f"{where} imports no headscope.model or headscope.corpus at run time any more: take it out "
                       "of PENDING_INTERVENTIONS in tests/test_layers.py")
        return
    assert not found, (f"{where} imports at run time (outside `if TYPE_CHECKING:`): "
                       + ", ".join(f"{where}:{line} {name}" for line, name in found)
                       + "; an analysis reads what the corpus and the encoder put on the example, or asks the "
                       "run's context (docs/design.md, Adding an analysis)")


def test_imports_by_name_are_followed() -> None:
    """Lazy exports, ``from package import module`` and the CLI's subcommand table count as imports."""
    assert "headscope.runner.orchestrate" in GRAPH["headscope"]  # _EXPORTS: headscope.run
    assert "headscope.comparison.command" in GRAPH["headscope.cli"]  # MODULE_COMMANDS, imported with import_module
    assert "headscope.report.build" in GRAPH["headscope.report"]
    assert "headscope.engine.capture" in GRAPH["headscope.session"]
    assert "headscope.runner.passes" in GRAPH["headscope.runner.orchestrate"]
