"""``headscope.run``'s signature and the keyword list of its docstring, built from :class:`RunConfig` and each
registered analysis's ``Options`` (completion in editors and notebooks, ``help(headscope.run)``)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

from headscope.analyses.registry import REGISTRY, public_name
from headscope.config import CONFIG_GROUPS, RunConfig


def _field_default(f: dataclasses.Field, missing: Any) -> Any:
    """The default of dataclass field ``f`` (its factory called), or ``missing`` when it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return missing


def keyword_docs() -> str:
    """The "Keyword arguments" part of :func:`run`'s docstring: every field of :class:`RunConfig` and of each
    analysis's ``Options``, under its public (namespaced) name, with its type, default and help."""

    def entries(cls: type, public: Callable[[str], str], fields: list[dataclasses.Field] | None = None) -> list[str]:
        out = []
        for f in dataclasses.fields(cls) if fields is None else fields:
            default = _field_default(f, None)
            # A keyword whose command-line flag is its negation (--no-report) is described as the keyword.
            text = f.metadata.get("api_help") or f.metadata.get("help", "")
            help_text = textwrap.fill(" ".join(str(text).split()), 100,
                                      initial_indent="    ", subsequent_indent="    ")
            out.append(f"{public(f.name)} : {f.type}, default {default!r}\n{help_text}")
        return out

    parts = ["Keyword arguments", "-----------------"]
    for group, description in CONFIG_GROUPS.items():
        fields = [f for f in dataclasses.fields(RunConfig) if f.metadata.get("group") == group]
        parts += ["", textwrap.fill(f"Run settings: {group} ({description}):", 104), "",
                  *entries(RunConfig, lambda name: name, fields)]
    for name, cls in sorted(REGISTRY.items()):
        if cls.Options is not None:
            parts += ["", textwrap.fill(f"Options of ``{name}`` ({cls.description}):", 104), "",
                      *entries(cls.Options, functools.partial(public_name, cls))]
    return "\n".join(parts)


def run_signature() -> inspect.Signature:
    """:func:`run`'s signature: ``config`` (positional only), then every field of :class:`RunConfig` and of
    each registered analysis's ``Options`` as a keyword-only parameter, under its public name, with its default
    and type (as written in the dataclass)."""

    def parameters(cls: type, public: Callable[[str], str]) -> list[inspect.Parameter]:
        return [inspect.Parameter(public(f.name), inspect.Parameter.KEYWORD_ONLY, annotation=f.type,
                                  default=_field_default(f, inspect.Parameter.empty))
                for f in dataclasses.fields(cls)]

    params = [inspect.Parameter("config", inspect.Parameter.POSITIONAL_ONLY, default=None,
                                annotation="RunConfig | None"),
              *parameters(RunConfig, lambda name: name)]
    for cls in (REGISTRY[name] for name in sorted(REGISTRY)):
        if cls.Options is not None:
            params += parameters(cls.Options, functools.partial(public_name, cls))
    return RunSignature(params, return_annotation="RunResult")


class RunSignature(inspect.Signature):
    """:func:`run`'s signature: every keyword in ``parameters`` (completion in editors and notebooks), written
    short (``help(headscope.run)``, ``run?``): the keywords most runs set, then ``**options`` for the hundred
    others, which the docstring lists with their defaults. One line of every keyword ran to 3,500 characters."""

    #: The keywords the short form names.
    SHOWN = ("model", "text", "treebank", "analyses", "out")

    def __str__(self) -> str:
        shown = [str(p.replace(annotation=inspect.Parameter.empty)) for name, p in self.parameters.items()
                 if name in self.SHOWN]
        return f"(config=None, /, *, {', '.join(shown)}, **options) -> RunResult"
