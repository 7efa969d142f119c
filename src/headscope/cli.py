"""The ``headscope`` command. ``run`` options come from :class:`RunConfig` and each analysis's ``Options``.

Subcommands are registered in :data:`COMMANDS` (name -> (help, add_arguments, main)), so a module adds its
own command without touching the others.

Start-up stays fast (``headscope --version``, ``list`` and ``run --help`` import no torch, pandas or
matplotlib; ``bench/startup.py``): the analyses' options and descriptions come from ``catalog.json``
(:mod:`headscope.catalog`) unless a run is about to start, and the subcommands of :data:`MODULE_COMMANDS` are
imported only when chosen.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import typing
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from headscope import catalog
from headscope.config import CONFIG_GROUPS, RunConfig
from headscope.errors import MissingDependencyError, UsageError, unknown_analysis_message

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


def _with_default(help_text: str, default: str) -> str:
    """``help_text`` ending with its default, unless it already states one."""
    return help_text if "(default" in help_text else f"{help_text} (default: {default})"


def add_option(parser: argparse.ArgumentParser | Any, spec: dict[str, Any]) -> None:
    """One option from a spec of :func:`headscope.catalog.field_spec` (``help`` None: hidden from --help)."""
    flag, dest, kind, text = spec["flag"], spec["dest"], spec["kind"], spec["help"]

    def shown(help_text: str) -> str:
        return argparse.SUPPRESS if text is None else _with_default(help_text, spec["default"])

    if kind == "switch_off":
        parser.add_argument(flag, dest=dest, action="store_false", default=argparse.SUPPRESS,
                            help=argparse.SUPPRESS if text is None else text)
    elif kind == "switch":
        # A switch that is on by default needs its --no- form, or it could never be turned off.
        parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                            help=shown(text or ""))
    elif kind == "flag":
        parser.add_argument(flag, dest=dest, action="store_true", default=argparse.SUPPRESS, help=shown(text or ""))
    else:
        # A Literal[...] field gets choices=: argparse checks the value and --help lists them ({a,b,c}).
        tp = catalog.TYPES[spec["type"]]
        typed: dict[str, Any] = ({"type": tp, "choices": spec["choices"]} if spec["choices"] is not None
                                 else {"type": tp, "metavar": dest.upper()})
        if kind == "list":
            parser.add_argument(flag, dest=dest, action="append", default=argparse.SUPPRESS, **typed,
                                help=shown((text or "") + " Repeatable."))
        else:
            parser.add_argument(flag, dest=dest, default=argparse.SUPPRESS, **typed, help=shown(text or ""))


def add_common_arguments(parser: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    """``-v/--verbose`` and ``--quiet``, accepted before and after the subcommand."""
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="log every skipped or truncated input (default: off)")
    if not any("--quiet" in a.option_strings for a in parser._actions):
        parser.add_argument("-q", "--quiet", action="store_true", default=default,
                            help="no progress bar (default: off)")


def add_run_arguments(parser: argparse.ArgumentParser, live: bool = False) -> None:
    """The options of ``headscope run``: :class:`RunConfig`'s by group (:data:`CONFIG_GROUPS`), then one group
    per analysis with its ``Options``; from the registry when ``live``, else from ``catalog.json`` (no analysis
    imported)."""
    specs = catalog.dataclass_specs(RunConfig)
    group_of = {name: f.metadata.get("group") for name, f in RunConfig.__dataclass_fields__.items()}
    for group, description in CONFIG_GROUPS.items():
        target = parser.add_argument_group(f"{group} settings", description)
        for spec in specs:
            if group_of.get(spec["dest"]) == group:
                add_option(target, spec)
    for spec in specs:  # a field without a group (none today) still gets its option
        if group_of.get(spec["dest"]) not in CONFIG_GROUPS:
            add_option(parser, spec)
    for analysis in (catalog.build() if live else catalog.load())["analyses"]:
        if analysis["options"]:
            target = parser.add_argument_group(f"{analysis['name']} options", analysis["description"])
            for spec in analysis["options"]:
                add_option(target, spec)


@command("run", "analyse every head of a model over a corpus (defaults: packaged MiniLM, Wikipedia)",
         add_run_arguments)
def main_run(args: argparse.Namespace) -> int:
    kwargs = {k: v for k, v in vars(args).items() if k not in ("command", "func", "verbose")}
    if not kwargs.get("quiet"):
        kwargs.pop("quiet", None)
    check_run_arguments(kwargs)
    from headscope.runner.orchestrate import run

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


def check_run_arguments(kwargs: dict[str, Any]) -> None:
    """The checks of :class:`RunConfig` and of the input files, before anything heavy is imported: a bad value
    or file is a usage error (exit 2) in a tenth of a second. The analyses' own options are checked by the run,
    still before the model loads."""
    fields = RunConfig.__dataclass_fields__
    try:
        config = RunConfig(**{k: v for k, v in kwargs.items() if k in fields})
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    names = [a["name"] for a in catalog.load()["analyses"]]
    for name in config.analyses:
        if name != "all" and name not in names:
            raise UsageError(unknown_analysis_message(name, names))
    problem = None if config.resume else config.file_problems()  # a resumed run takes its files from the checkpoint
    if problem:
        raise UsageError(problem)


@command("list", "list the analyses (with what each needs) and the packaged models (installed or not)",
         lambda p: None)
def main_list(args: argparse.Namespace) -> int:
    from headscope.model.packaged import PACKAGED_MODELS  # found with importlib.util.find_spec: nothing loaded

    print("analyses (--analyses):")
    for analysis in catalog.load()["analyses"]:
        needs = f"  [needs: {', '.join(analysis['needs'])}]" if analysis["needs"] else ""
        costly = f"  [not in all: {analysis['costly']}]" if analysis.get("costly") else ""
        print(f"  {analysis['name']:14s} {analysis['description']}{needs}{costly}")
    print("needs: treebank = --treebank or --parse spacy; coreference = --coref; causal = a decoder LM; "
          "encoder = an encoder model")
    print("packaged models (--model):")
    for name, pm in PACKAGED_MODELS.items():
        state = "installed" if pm.installed else f"not installed: {pm.install}"
        print(f"  {name:18s} {pm.family}; {state}")
    print("other models: a hub id, a local directory, or a GGUF file (--model path/to/model.gguf); which "
          "architectures are exact or refused: docs/models.md")
    return 0


class _SubCommands(argparse._SubParsersAction):
    """The subcommands: a command of :data:`MODULE_COMMANDS` imports its module and adds its options when it is
    chosen (parsed or asked for --help), so the other commands never import it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deferred: dict[str, tuple[str, str, str]] = {}

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        name = values[0] if isinstance(values, list | tuple) and values else None
        if name in self.deferred:
            module_name, add_arguments, main = self.deferred.pop(name)
            module = importlib.import_module(module_name)
            subparser = self.choices[name]
            getattr(module, add_arguments)(subparser)
            add_common_arguments(subparser)
            subparser.set_defaults(func=getattr(module, main))
        super().__call__(parser, namespace, values, option_string)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, with the option meant when one was mistyped: the usage of
    ``run`` alone is some 80 lines, which buried the error."""

    def error(self, message: str) -> typing.NoReturn:
        hint = ""
        if message.startswith("unrecognized arguments:"):
            hint = _suggestion(message.split(":", 1)[1].split(), self._command_parser())
        self.exit(2, f"{self.prog}: error: {message}{hint} (`{self.prog} --help` lists the options)\n")

    def _command_parser(self) -> argparse.ArgumentParser:
        """The parser of the subcommand on the command line, if any (unknown options reach the top parser)."""
        actions = self._subparsers._group_actions if self._subparsers is not None else []
        argv = sys.argv[1:] if self._argv is None else self._argv
        for action in actions:
            for word in argv:
                if isinstance(action.choices, dict) and word in action.choices:
                    return action.choices[word]
        return self

    _argv: list[str] | None = None

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        self._argv = list(args) if args is not None else None
        return super().parse_args(args, namespace)


def _suggestion(words: list[str], parser: argparse.ArgumentParser) -> str:
    """``" (did you mean --max-length?)"`` for the first unknown option close to one of ``parser``'s."""
    import difflib

    known = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    for word in words:
        if word.startswith("--"):
            close = difflib.get_close_matches(word.split("=")[0], known, n=1, cutoff=0.75)
            if close:
                return f" (did you mean {close[0]}?)"
    return ""


def build_parser(live: bool = False) -> argparse.ArgumentParser:
    """The ``headscope`` parser; ``run``'s analysis options from the registry when ``live`` (imports every
    analysis), else from ``catalog.json`` (``tests/test_startup.py`` keeps it equal to the registry)."""
    parser = _Parser(
        prog="headscope", description=DESCRIPTION,
        epilog="`headscope COMMAND --help` lists a command's options; `headscope run` alone analyses the packaged "
               "MiniLM on the packaged Wikipedia sample.")
    from headscope.version import __version__

    parser.add_argument("--version", action="version", version=f"headscope {__version__}")
    add_common_arguments(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", action=_SubCommands)
    assert isinstance(sub, _SubCommands)
    for name, (help_text, add_arguments, main) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if add_arguments is add_run_arguments:
            add_run_arguments(p, live)
        else:
            add_arguments(p)
        add_common_arguments(p)
        p.set_defaults(func=main)
    for name, (module_name, add_name, main_name, help_text) in MODULE_COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
        sub.deferred[name] = (module_name, add_name, main_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # From catalog.json, also for a run: a mistyped option or value is then refused in a tenth of a second,
    # before torch is imported.
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="headscope: %(message)s")
    # Progress lines (stderr not a terminal: every 30 s or 10 % of a pass) show without -v, not with --quiet.
    logging.getLogger("headscope.progress").setLevel(logging.WARNING if args.quiet else logging.INFO)
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
    except UsageError as exc:  # found before the model loaded: a usage error, as argparse's own
        print(f"headscope: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, OSError, RuntimeError, MissingDependencyError) as exc:
        print(f"headscope: error: {exc}", file=sys.stderr)
        return 1


#: The subcommands that live with what they drive: name -> (module, its add-arguments and main functions,
#: help). The CLI sits on top and imports each one when it is chosen; they never import the CLI.
MODULE_COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "compare": ("headscope.comparison.command", "add_compare_arguments", "main_compare",
                "set two runs side by side: per-head changes, tested role changes, a report page"),
    "view": ("headscope.viewer", "add_view_arguments", "main_view",
             "write one HTML page showing every head's attention on one input"),
    "report": ("headscope.report.command", "add_report_arguments", "main_report",
               "rebuild DIR/figures/ and DIR/report/index.html from a finished run's files"),
}


if __name__ == "__main__":
    sys.exit(main())
