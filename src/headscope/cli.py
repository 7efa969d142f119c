"""The ``headscope`` command. ``run`` options come from :class:`RunConfig` and each analysis's ``Options``.

Subcommands are registered in :data:`COMMANDS` (name -> (help, add_arguments, main)), so a module adds its
own command without touching the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import sys
import types
import typing
import warnings
from collections.abc import Callable
from typing import Any, Union

from headscope.analyses import REGISTRY
from headscope.analyses.registry import public_name
from headscope.config import RunConfig, literal_choices

#: What ``headscope --help`` says first (the module docstring is for developers).
DESCRIPTION = "headscope: what every attention head of a Transformer does, over a whole corpus."

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]
            ) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register a subcommand: ``@command("view", "...", add_view_arguments)`` on its main function."""

    def decorate(main: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = (help, add_arguments, main)
        return main

    return decorate


def _base_type(tp: Any) -> tuple[Any, bool]:
    """The scalar type behind ``X | None`` / ``list[X]``, and whether it is a list."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if origin is list:
        return typing.get_args(tp)[0], True
    return tp, False


def _with_default(help_text: str, default: str) -> str:
    """``help_text`` ending with its default, unless it already states one."""
    return help_text if "(default" in help_text else f"{help_text} (default: {default})"


def _add_field(parser: argparse.ArgumentParser | Any, f: dataclasses.Field, hint: Any, dest: str,
               help_text: str | None) -> None:
    """One option for dataclass field ``f`` stored under ``dest``; ``help_text`` None hides it from --help."""
    flag = f.metadata.get("flag") if dest == f.name else None
    flag = flag or "--" + dest.replace("_", "-")
    tp, is_list = _base_type(hint)
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = None

    def shown(text: str, value: str) -> str:
        return argparse.SUPPRESS if help_text is None else _with_default(text, value)

    text = help_text or ""
    if tp is bool and flag.startswith("--no-"):
        parser.add_argument(flag, dest=dest, action="store_false", default=argparse.SUPPRESS,
                            help=text if help_text is not None else argparse.SUPPRESS)
    elif tp is bool and default:
        # A switch that is on by default needs its --no- form, or it could never be turned off.
        parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                            help=shown(text, "on"))
    elif tp is bool:
        parser.add_argument(flag, dest=dest, action="store_true", default=argparse.SUPPRESS, help=shown(text, "off"))
    elif (choices := literal_choices(tp)) is not None:
        # A Literal[...] field: argparse checks the value and --help lists the choices ({a,b,c}).
        kind = type(choices[0])
        if is_list:
            value = ",".join(map(str, default)) if default else "none"
            parser.add_argument(flag, dest=dest, action="append", type=kind, choices=choices,
                                default=argparse.SUPPRESS, help=shown(text + " Repeatable.", value))
        else:
            parser.add_argument(flag, dest=dest, type=kind, choices=choices, default=argparse.SUPPRESS,
                                help=shown(text, str(default)))
    elif is_list:
        value = ",".join(map(str, default)) if default else "none"
        parser.add_argument(flag, dest=dest, action="append", type=tp, default=argparse.SUPPRESS,
                            metavar=dest.upper(), help=shown(text + " Repeatable.", value))
    else:
        parser.add_argument(flag, dest=dest, type=tp, default=argparse.SUPPRESS, metavar=dest.upper(),
                            help=shown(text, str(default)))


def add_dataclass_options(parser: argparse.ArgumentParser | Any, cls: type,
                          public: Callable[[str], str] | None = None) -> None:
    """Add one option per field of dataclass ``cls`` (help from ``metadata['help']``, ending with the default).

    ``public`` maps a field name to its namespaced name (:func:`headscope.analyses.registry.public_name`);
    a field it renames keeps its old flag too, hidden from --help (the run warns that it is deprecated).
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        name = public(f.name) if public is not None else f.name
        _add_field(parser, f, hints[f.name], name, f.metadata["help"])
        if name != f.name:
            _add_field(parser, f, hints[f.name], f.name, None)


def add_common_arguments(parser: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    """``-v/--verbose`` and ``--quiet``, accepted before and after the subcommand."""
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="log every skipped or truncated input (default: off)")
    if not any("--quiet" in a.option_strings for a in parser._actions):
        parser.add_argument("-q", "--quiet", action="store_true", default=default,
                            help="no progress bar (default: off)")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_options(parser, RunConfig)
    for name, cls in sorted(REGISTRY.items()):
        if cls.Options is not None:
            group = parser.add_argument_group(f"{name} options", cls.description)
            add_dataclass_options(group, cls.Options, functools.partial(public_name, cls))


@command("run", "analyse every head of a model over a corpus (defaults: packaged MiniLM, Wikipedia)",
         add_run_arguments)
def main_run(args: argparse.Namespace) -> int:
    from headscope.engine.runner import run

    kwargs = {k: v for k, v in vars(args).items() if k not in ("command", "func", "verbose")}
    if not kwargs.get("quiet"):
        kwargs.pop("quiet", None)
    result = run(**kwargs)
    out = result.run["config"]["out"]
    counts = result.run.get("counts", {})
    print(f"analysed {counts.get('examples', 0)} sequences ({counts.get('tokens', 0)} tokens) with "
          f"{result.run['model']['name']}: {result.run['model']['n_layers']} layers x "
          f"{result.run['model']['n_heads']} heads; skipped {counts.get('skipped', 0)}, truncated "
          f"{counts.get('truncated', 0)}, warnings {counts.get('warnings', 0)}")
    if out:
        print(f"wrote {out}/heads.csv, {out}/run.json" + (f", {out}/report/index.html"
                                                         if result.run["config"].get("report") else ""))
    return 0


@command("list", "list the analyses (with what each needs) and the packaged models (installed or not)",
         lambda p: None)
def main_list(args: argparse.Namespace) -> int:
    from headscope.model.load import PACKAGED_MODELS

    print("analyses (--analyses):")
    for name, cls in sorted(REGISTRY.items()):
        needs = f"  [needs: {', '.join(cls.needs)}]" if cls.needs else ""
        print(f"  {name:14s} {cls.description}{needs}")
    print("needs: treebank = --treebank or --parse spacy; coreference = --coref; causal = a decoder LM; "
          "encoder = an encoder model")
    print("packaged models (--model):")
    for name, pm in PACKAGED_MODELS.items():
        state = "installed" if pm.installed else f"not installed: {pm.install}"
        print(f"  {name:18s} {state}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headscope", description=DESCRIPTION,
        epilog="`headscope COMMAND --help` lists a command's options; `headscope run` alone analyses the packaged "
               "MiniLM on the packaged Wikipedia sample.")
    from headscope.version import __version__

    parser.add_argument("--version", action="version", version=f"headscope {__version__}")
    add_common_arguments(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, main) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        add_common_arguments(p)
        p.set_defaults(func=main)
    return parser


def main(argv: list[str] | None = None) -> int:
    _load_commands()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="headscope: %(message)s")
    # Deprecations and library warnings in the same one-line form as the rest (no source line).
    warnings.formatwarning = lambda message, category, *rest, **kw: f"{category.__name__}: {message}"
    logging.captureWarnings(True)
    for noisy in ("transformers", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:  # RunInterrupted says where the checkpoint is
        print(f"headscope: {exc or 'interrupted'}", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, OSError, RuntimeError) as exc:
        print(f"headscope: error: {exc}", file=sys.stderr)
        return 1


#: The subcommands that live with what they drive: name -> (module, its add-arguments and main functions,
#: help). The CLI sits on top and imports them; they never import the CLI.
MODULE_COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "compare": ("headscope.compare", "add_compare_arguments", "main_compare",
                "set two runs side by side: per-head changes, tested role changes, a report page"),
    "view": ("headscope.viewer", "add_view_arguments", "main_view",
             "write one HTML page showing every head's attention on one input"),
    "report": ("headscope.report.command", "add_report_arguments", "main_report",
               "rebuild DIR/figures/ and DIR/report/index.html from a finished run's files"),
}


def _load_commands() -> None:
    """Add the subcommands of :data:`MODULE_COMMANDS` to :data:`COMMANDS`."""
    import importlib

    for name, (module_name, add_arguments, main, help_text) in MODULE_COMMANDS.items():
        module = importlib.import_module(module_name)
        COMMANDS[name] = (help_text, getattr(module, add_arguments), getattr(module, main))


if __name__ == "__main__":
    sys.exit(main())
