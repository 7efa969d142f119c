"""Start-up: the command line answers ``--version``, ``list`` and ``run --help`` without importing torch, pandas,
scipy, matplotlib or transformers (``bench/startup.py`` measures the time); ``import headscope`` is lazy; the
catalogue the command line reads instead of the analyses is current; every setting has its group and every
keyword is in ``headscope.run``'s signature."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "pandas", "scipy", "matplotlib", "transformers", "sklearn")

#: Run in a fresh interpreter: build the whole parser, answer each command, print what got imported.
PROBE = """
import contextlib, io, json, sys
import headscope.cli
parser = headscope.cli.build_parser()
out = io.StringIO()
with contextlib.redirect_stdout(out):
    for argv in (["--version"], ["run", "--help"], ["list"]):
        try:
            headscope.cli.main(argv)
        except SystemExit:
            pass
import headscope
headscope.__version__, headscope.RunConfig
heavy = set(sys.argv[1:])
print(json.dumps({"modules": sorted(m for m in sys.modules if m.split(".")[0] in heavy), "out": out.getvalue()}))
"""


def test_commands_that_only_answer_import_nothing_heavy() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE, *HEAVY], capture_output=True, text=True, check=True)
    found = json.loads(done.stdout)
    assert found["modules"] == [], f"imported at start-up: {', '.join(found['modules'])}"
    # ... and they answered: the version, the run options of every analysis, the analyses and models.
    from headscope.version import __version__

    assert f"headscope {__version__}" in found["out"]
    assert "--roles-tau" in found["out"] and "model settings:" in found["out"]
    assert "packaged models (--model):" in found["out"] and "decoder_heads" in found["out"]


def test_catalog_is_what_the_registry_gives() -> None:
    from headscope import catalog

    assert catalog.load() == json.loads(json.dumps(catalog.build())), (
        "src/headscope/catalog.json is out of date: run `python -m headscope.catalog`")


def test_run_help_is_the_same_from_the_catalog_and_from_the_registry() -> None:
    from headscope.cli import build_parser

    def run_help(live: bool) -> str:
        parser = build_parser(live=live)
        return parser._subparsers._group_actions[0].choices["run"].format_help()  # type: ignore[union-attr]

    assert run_help(False) == run_help(True)


def test_every_setting_has_a_group_and_run_lists_every_keyword() -> None:
    import headscope
    from headscope.analyses import REGISTRY
    from headscope.analyses.registry import option_names
    from headscope.config import CONFIG_GROUPS, RunConfig

    fields = dataclasses.fields(RunConfig)
    assert {f.name: f.metadata.get("group") for f in fields if f.metadata.get("group") not in CONFIG_GROUPS} == {}
    parameters = inspect.signature(headscope.run).parameters
    expected = [f.name for f in fields] + [name for cls in REGISTRY.values() for name in option_names(cls)]
    assert sorted(set(parameters) - {"config"}) == sorted(expected)
    assert parameters["config"].kind is inspect.Parameter.POSITIONAL_ONLY
    assert parameters["roles_tau"].default == REGISTRY["roles"].Options().tau  # type: ignore[misc]
    doc = headscope.run.__doc__ or ""
    for name in expected:
        assert f"\n{name} : " in doc, name
    for group in CONFIG_GROUPS:
        assert f"Run settings: {group} (" in doc


@pytest.mark.parametrize("name", ["run", "compare", "RunConfig", "view", "build_report", "load_model"])
def test_lazy_names_are_the_real_ones(name: str) -> None:
    import importlib

    import headscope

    importlib.import_module("headscope.comparison")  # a submodule bound as an attribute: no clash with a name
    value = getattr(headscope, name)
    assert callable(value) and value.__name__ == name
    assert name in dir(headscope)
    with pytest.raises(AttributeError):
        headscope.no_such_name  # type: ignore[attr-defined]  # noqa: B018


def test_help_of_run_is_readable_and_describes_the_python_keywords_positively() -> None:
    import pydoc

    import headscope

    signature = inspect.signature(headscope.run)
    assert len(signature.parameters) > 50  # every keyword is still there, for completion
    shown = str(signature)
    assert len(shown) < 160 and shown.endswith("**options) -> RunResult") and "model='minilm'" in shown
    page = pydoc.render_doc(headscope.run, renderer=pydoc.plaintext)
    assert max(len(line) for line in page.splitlines()) < 160
    doc = headscope.run.__doc__ or ""

    def entry(name: str) -> str:
        return doc.split(f"\n{name} : ", 1)[1].split("\n\n", 1)[0].split("\n", 2)[1]

    # The keywords whose command-line flags are negations (--no-cache-model, --no-report): said positively.
    assert entry("cache_model").strip().startswith("Read the dequantized GGUF model from the cache")
    assert entry("report").strip().startswith("Write report/")
    assert "Neither" not in entry("cache_model") and "Skip" not in entry("report")
