"""The site's generated reference pages (scripts/docs_hooks.py) hold every option of the command line and every
declared output file: they are generated from the parser and from headscope.columns, and checked here."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

from headscope import cli, columns

HOOKS = Path(__file__).resolve().parents[1] / "scripts" / "docs_hooks.py"


def _hooks():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("docs_hooks", HOOKS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_page_has_every_subcommand_option_default_and_choice() -> None:
    page = _hooks().cli_reference()
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, subparser in sub.choices.items():  # the deferred commands got their options while the page was made
        assert f"## headscope {name}\n" in page, name
        for action in subparser._actions:
            if action.help == argparse.SUPPRESS or not action.option_strings or action.dest == "help":
                continue
            row = next((line for line in page.splitlines() if f"`{action.option_strings[-1]}`" in line), None)
            assert row is not None, f"{name}: {action.option_strings}"
            for choice in action.choices or []:
                assert f"`{choice}`" in row, (name, action.dest, choice)
    run = page.split("## headscope run\n", 1)[1].split("\n## headscope ", 1)[0]
    # Defaults from the dataclasses, in their own column: --batch-size 16, --roles-tau 3.0.
    assert re.search(r"^\| `--batch-size` \| `BATCH_SIZE` \| 16 \| Sequences per forward pass\. \|$", run, re.M)
    assert re.search(r"^\| `--roles-tau` \| `ROLES_TAU` \| 3\.0 \|", run, re.M)


def test_the_outputs_page_has_every_declared_file_and_column() -> None:
    page = _hooks().outputs_reference()
    for file in columns.FILES:
        assert f"\n## {file}\n" in page, file
    for column in columns.expanded():
        section = page.split(f"\n## {column.file}\n", 1)[1].split("\n## ", 1)[0]
        assert f"| `{column.name}` | {column.dtype} |" in section, (column.file, column.name)
