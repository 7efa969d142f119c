"""Lazy package attributes (PEP 562): a package names its public objects and imports each on first use.

``headscope``, ``headscope.model`` and ``headscope.report`` use it so that ``headscope --version``,
``headscope list`` and ``headscope run --help`` never import torch, pandas or matplotlib.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str], namespace: dict[str, Any]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package``.

    Parameters
    ----------
    package : str
        The package's name (for the error message).
    exports : dict
        Public name -> the module it is imported from.
    namespace : dict
        The package's ``globals()``: a name, once imported, becomes an ordinary attribute there.
    """

    def getattr_(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted({*namespace, *exports})

    return getattr_, dir_
