"""The registry: every analysis module registered, option namespaces, clashes refused, old names deprecated."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from headscope.analyses import registry
from headscope.analyses.base import Analysis, AnalysisResult
from headscope.analyses.registry import deprecated_names, option_names, public_name, register, split_options
from headscope.cli import build_parser
from headscope.config import option

ANALYSES_DIR = Path(registry.__file__).parent


def _analysis_classes(path: Path) -> list[str]:
    """Names (``name = "..."``) of the Analysis subclasses a module defines, read from its source."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ClassDef) and any(getattr(b, "id", None) == "Analysis" for b in node.bases):
            for stmt in node.body:
                if (isinstance(stmt, ast.Assign) and getattr(stmt.targets[0], "id", None) == "name"
                        and isinstance(stmt.value, ast.Constant)):
                    names.append(stmt.value.value)
    return names


def test_every_analysis_module_is_registered_by_the_package() -> None:
    defined = {name for path in ANALYSES_DIR.rglob("*.py") for name in _analysis_classes(path)}  # packages too
    assert len(defined) >= 14
    # A fresh interpreter: only what `import headscope.analyses` registers counts, not what this test imported.
    code = "import json, headscope.analyses as a; print(json.dumps(sorted(a.REGISTRY)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert set(json.loads(out)) == defined


def test_a_clash_with_a_registered_analysis_is_refused_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """``register`` itself refuses (the package's analyses passing it at import proves nothing more)."""
    real = registry.REGISTRY
    before = dict(real)
    monkeypatch.setattr(registry, "REGISTRY", dict(real))  # restored after the test
    roles = registry.REGISTRY["roles"]
    assert "roles_tau" in option_names(roles)
    tau = dataclasses.make_dataclass("TauOptions", [("tau", float, option(1.0, help="x"))])
    with pytest.raises(ValueError, match=r"analyses 'roles' and 'roles2' both define the option\(s\) roles_tau"):
        register(_dummy("roles2", tau, 1001, prefix="roles"))
    order = roles.report_order
    with pytest.raises(ValueError, match=rf"analyses '\w+' and 'elsewhere' both have report_order {order}"):
        register(_dummy("elsewhere", None, roles.report_order))
    with pytest.raises(ValueError, match="two analyses are named 'roles'"):
        register(_dummy("roles", None, 1002))
    assert before == registry.REGISTRY  # nothing half-registered
    with pytest.raises(ValueError, match="roles2"):
        registry.resolve_analyses(["roles2"], {})
    assert register(roles) is roles  # the same class again (a re-import) is not a clash
    assert real == before


def test_public_names() -> None:
    roles, examples, decoder = (registry.REGISTRY[n] for n in ("roles", "examples", "decoder_heads"))
    assert public_name(roles, "tau") == "roles_tau"
    assert public_name(roles, "roles_min_n") == "roles_min_n"
    assert public_name(roles, "role_rule") == "role_rule"  # the singular prefix counts
    assert public_name(examples, "example_maps") == "example_maps"
    assert public_name(decoder, "induction_probe") == "decoder_induction_probe"  # option_prefix
    assert deprecated_names(roles)["tau"] == "roles_tau" and "roles_min_n" not in deprecated_names(roles)


@dataclasses.dataclass
class _AlphaOptions:
    alpha: float = option(0.1, help="a level")


def _dummy(name: str, options: type | None, order: int, prefix: str | None = None) -> type[Analysis]:
    def finalize(self: Analysis, ctx: object, results: object) -> AnalysisResult:
        return AnalysisResult(name)

    return type(f"Dummy_{name}", (Analysis,), {
        "name": name, "Options": options, "report_order": order, "option_prefix": prefix,
        "start": lambda self, ctx: None, "merge": lambda self, other: self, "finalize": finalize})


def test_a_clash_is_an_error_at_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))
    register(_dummy("first", _AlphaOptions, 1001, prefix="shared"))
    with pytest.raises(ValueError, match=r"both define the option.*shared_alpha"):
        register(_dummy("second", _AlphaOptions, 1002, prefix="shared"))
    register(_dummy("third", _AlphaOptions, 1003))  # its own namespace: third_alpha
    with pytest.raises(ValueError, match="both have report_order 1003"):
        register(_dummy("fourth", None, 1003))
    with pytest.raises(ValueError, match="run settings"):
        register(_dummy("lengths", dataclasses.make_dataclass(
            "LengthOptions", [("max_length", int, option(1, help="x"))]), 1004, prefix="max"))
    with pytest.raises(ValueError, match="two analyses are named 'roles'"):
        register(_dummy("roles", None, 1005))


def test_old_names_still_work_with_a_warning() -> None:
    with pytest.warns(FutureWarning, match="'tau' is deprecated: use 'roles_tau'"):
        _, old = split_options({"tau": 2.0, "model": "x"})
    _, new = split_options({"roles_tau": 2.0})
    assert old == new == {"roles": {"tau": 2.0}}
    with pytest.raises(TypeError, match=r"unknown option.*no_such"):
        split_options({"no_such": 1})


def test_cli_flags_are_namespaced_and_old_flags_hidden(capsys: pytest.CaptureFixture) -> None:
    parser = build_parser()
    assert parser.parse_args(["run", "--roles-tau", "2"]).roles_tau == 2.0
    assert parser.parse_args(["run", "--tau", "2"]).tau == 2.0  # routed, with the warning, by split_options
    assert parser.parse_args(["run", "--no-importance-normalize-layers"]).importance_normalize_layers is False
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--help"])
    text = capsys.readouterr().out
    assert "--roles-tau" in text and "--decoder-induction-probe" in text
    assert "--tau " not in text and "--induction-probe" not in text.replace("--decoder-induction-probe", "")
