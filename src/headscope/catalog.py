"""What the command line shows of the analyses without importing them: ``catalog.json``.

``headscope list`` and ``headscope run --help`` need each analysis's name, description, needs and options, but
the analysis modules import torch, pandas and scipy (seconds). ``catalog.json`` holds that description, as
the option specs :func:`dataclass_specs` makes of each analysis's ``Options``; :func:`build` makes it from the
registry and ``python -m headscope.catalog`` writes it. ``tests/test_startup.py`` fails while the file differs
from what the registry gives (run the command above after changing an analysis's options or description).

A run itself (``headscope run`` without ``--help``) builds its options from the registry, not from this file.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Union

from headscope.config import literal_choices

#: Where :func:`build`'s result is kept, next to this module (package data).
PATH = Path(__file__).with_name("catalog.json")

#: The scalar types an option may have (the ``type`` of a spec).
TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool}


def _base_type(tp: Any) -> tuple[Any, bool]:
    """The scalar type behind ``X | None`` / ``list[X]``, and whether it is a list."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if origin is list:
        return typing.get_args(tp)[0], True
    return tp, False


def _shown(value: Any) -> str:
    """A default as ``--help`` states it."""
    if isinstance(value, list):
        return ",".join(map(str, value)) if value else "none"
    return str(value)


def field_spec(f: dataclasses.Field, hint: Any, dest: str, help_text: str | None) -> dict[str, Any]:
    """What ``headscope run`` needs to offer dataclass field ``f`` as an option stored under ``dest``.

    Keys: ``flag``, ``dest``, ``kind`` (``switch_off`` for a ``--no-`` flag, ``switch`` for a bool on by default
    (with its ``--no-`` form), ``flag`` for a bool off by default, ``list`` or ``value``), ``type``, ``choices``
    (a ``Literal``'s values, or None), ``default`` (as shown) and ``help`` (None: accepted, hidden from --help).
    """
    flag = (f.metadata.get("flag") if dest == f.name else None) or "--" + dest.replace("_", "-")
    tp, is_list = _base_type(hint)
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = None
    choices = literal_choices(tp)
    if tp is bool:
        kind = "switch_off" if flag.startswith("--no-") else "switch" if default else "flag"
    else:
        kind = "list" if is_list else "value"
    scalar = type(choices[0]) if choices is not None else tp
    return {"flag": flag, "dest": dest, "kind": kind, "type": scalar.__name__,
            "choices": list(choices) if choices is not None else None,
            "default": "on" if kind == "switch" else "off" if kind == "flag" else _shown(default),
            "help": help_text}


def dataclass_specs(cls: type, public: Callable[[str], str] | None = None) -> list[dict[str, Any]]:
    """One spec per field of dataclass ``cls`` that has help text (:func:`field_spec`).

    ``public`` maps a field name to its namespaced name (:func:`headscope.analyses.registry.public_name`); a
    field it renames gets a second, hidden spec under its old name (deprecated: the run warns).
    """
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        name = public(f.name) if public is not None else f.name
        specs.append(field_spec(f, hints[f.name], name, f.metadata["help"]))
        if name != f.name:
            specs.append(field_spec(f, hints[f.name], f.name, None))
    return specs


def build() -> dict[str, Any]:
    """The catalogue from the registry (imports every analysis): per analysis, in name order, its name,
    description, needs and option specs."""
    from headscope.analyses import REGISTRY
    from headscope.analyses.registry import public_name

    return {"analyses": [{"name": name, "description": cls.description, "needs": list(cls.needs),
                          "costly": cls.costly,
                          "options": (dataclass_specs(cls.Options, functools.partial(public_name, cls))
                                      if cls.Options is not None else [])}
                         for name, cls in sorted(REGISTRY.items())]}


def load() -> dict[str, Any]:
    """The catalogue as written by :func:`write` (no analysis imported)."""
    return json.loads(PATH.read_text(encoding="utf-8"))


def write() -> Path:
    """Write :func:`build`'s catalogue to :data:`PATH`."""
    PATH.write_text(json.dumps(build(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return PATH


if __name__ == "__main__":
    print(f"wrote {write()}")
