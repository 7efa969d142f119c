"""The registry of analyses: names, option namespaces, report order, dependencies and what ``all`` means.

Every analysis module registers its class with :func:`register`; ``headscope.analyses`` imports each module
once, so adding an analysis is one new module plus its import line there (a test lists the package's modules
and fails on one that is not registered).

Each analysis's options live in a namespace of their own: the public name of an ``Options`` field (keyword
of :func:`headscope.run`, ``--flag`` of ``headscope run``) starts with the analysis's ``option_prefix``
(default: its name), as ``roles_tau`` / ``--roles-tau``. A field already named so keeps its name; another
gets the prefix, and its bare name stays accepted, with a deprecation warning, through 0.2.x (removed in
0.3.0; see CHANGELOG.md). Two analyses (or an analysis and :class:`~headscope.config.RunConfig`) claiming one
public name, or two analyses with one report position, is an error at registration.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING, Any

import headscope.errors as errors
from headscope.config import RunConfig
from headscope.errors import UsageError

if TYPE_CHECKING:
    from headscope.analyses.base import Analysis

REGISTRY: dict[str, type[Analysis]] = {}
"""Analysis classes by name (``--analyses``)."""

#: The name that asks for every analysis that applies to the model and the corpus given.
ALL = "all"

#: What each value of ``Analysis.needs`` asks of the run, in words for ``headscope list`` and run.json.
NEED_HINTS = {"treebank": "needs --treebank or --parse spacy", "coreference": "needs --coref",
              "causal": "needs a causal (decoder) LM", "encoder": "needs an encoder model",
              "trained_loss": "needs the loss the model was trained on (an LM head: masked-LM or next-token); this "
                              "model's contrastive loss does not measure what is taken away (docs/importance.md)"}

#: Losses a model was trained to lower (``AnalysisContext.loss_kind``), for the need ``trained_loss``.
TRAINED_LOSSES = ("mlm_loss", "lm_loss")


def public_name(cls: type[Analysis], field_name: str) -> str:
    """The namespaced keyword of ``cls.Options`` field ``field_name``: prefixed unless it already is.

    A field that starts with the prefix or its singular (``example_maps`` of ``examples``) keeps its name.
    """
    prefix = cls.option_prefix or cls.name
    if field_name.startswith((f"{prefix}_", f"{prefix.removesuffix('s')}_")):
        return field_name
    return f"{prefix}_{field_name}"


def option_names(cls: type[Analysis]) -> dict[str, str]:
    """Public name -> ``Options`` field name of ``cls`` (empty without options)."""
    if cls.Options is None:
        return {}
    return {public_name(cls, f.name): f.name for f in dataclasses.fields(cls.Options)}


def deprecated_names(cls: type[Analysis]) -> dict[str, str]:
    """Old bare name -> public name, for the fields that gained a prefix (accepted with a warning)."""
    return {field: public for public, field in option_names(cls).items() if public != field}


def register(cls: type[Analysis]) -> type[Analysis]:
    """Class decorator: make an analysis available by its ``name``.

    Raises
    ------
    ValueError
        When another analysis has the same name, one of the same public option names, or the same
        ``report_order``; or when an option's public name is a :class:`RunConfig` field.
    """
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"two analyses are named {cls.name!r}")
    config_fields = {f.name for f in dataclasses.fields(RunConfig)}
    mine = set(option_names(cls))
    for other in REGISTRY.values():
        if other is cls or other.name == cls.name:
            continue
        clash = mine & set(option_names(other))
        if clash:
            raise ValueError(f"analyses {other.name!r} and {cls.name!r} both define the option(s) "
                             f"{', '.join(sorted(clash))}; give one of them another option_prefix")
        if cls.report_order == other.report_order:
            raise ValueError(f"analyses {other.name!r} and {cls.name!r} both have report_order "
                             f"{cls.report_order}")
    if mine & config_fields:
        raise ValueError(f"analysis {cls.name!r} defines option(s) {', '.join(sorted(mine & config_fields))} that "
                         "are run settings")
    REGISTRY[cls.name] = cls
    return cls


def split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Route keyword arguments to :class:`RunConfig` or to the ``Options`` of the analysis that owns them.

    Returns
    -------
    config_kwargs : dict
        The :class:`RunConfig` fields.
    per_analysis : dict of str to dict
        For each analysis, its ``Options`` keyword arguments by field name.

    Raises
    ------
    TypeError
        On a keyword that no one owns.
    """
    config_fields = {f.name for f in dataclasses.fields(RunConfig)}
    config_kwargs = {k: v for k, v in kwargs.items() if k in config_fields}
    per_analysis: dict[str, dict[str, Any]] = {}
    unknown = set(kwargs) - config_fields
    for name, cls in REGISTRY.items():
        names = option_names(cls)
        old = deprecated_names(cls)
        for key in sorted(unknown):
            if key in names:
                per_analysis.setdefault(name, {})[names[key]] = kwargs[key]
            elif key in old:
                warnings.warn(f"option {key!r} is deprecated: use {old[key]!r} (--{old[key].replace('_', '-')}); "
                              "the old name will be removed in 0.3.0", FutureWarning, stacklevel=3)
                per_analysis.setdefault(name, {})[key] = kwargs[key]
            else:
                continue
            unknown.discard(key)
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return config_kwargs, per_analysis


def resolve_analyses(names: list[str], options: dict[str, dict[str, Any]]) -> list[Analysis]:
    """Instantiate the requested analyses and those they run ``after``, dependencies first.

    Parameters
    ----------
    names : list of str
        Registry names.
    options : dict of str to dict
        ``Options`` keyword arguments (by field name) of each analysis.
    """
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...] = ()) -> None:
        if name not in REGISTRY:
            raise UsageError(unknown_analysis_message(name))
        if name in chain:
            raise ValueError(f"analyses depend on each other in a cycle: {' -> '.join((*chain, name))}")
        for dep in REGISTRY[name].after:
            visit(dep, (*chain, name))
        if name not in order:
            order.append(name)

    for name in names:
        visit(name)
    order = finalize_order(order)
    analyses = []
    for name in order:
        cls = REGISTRY[name]
        opts = cls.Options(**options.get(name, {})) if cls.Options is not None else None
        analyses.append(cls(opts))
    return analyses


def unknown_analysis_message(name: str) -> str:
    """``unknown analysis 'surfce'; did you mean 'surface'?`` and the names available."""
    return errors.unknown_analysis_message(name, list(REGISTRY), ALL)


#: What gives each input named in ``Analysis.needs`` that the data decides (``causal`` and ``encoder`` are
#: known only once the model has loaded).
INPUT_OPTIONS = {"treebank": "a dependency treebank: --treebank FILE.conllu, or --parse spacy for silver parses of "
                             "raw text",
                 "coreference": "coreference annotation: --coref FILE (CoNLL-U with Entity=, or CoNLL-2012)"}


def available_inputs(config: RunConfig, is_causal: bool | None = None, loss_kind: str | None = None
                     ) -> dict[str, bool]:
    """Which needs the run meets; ``causal``, ``encoder`` and ``trained_loss`` count as met while the model is
    unknown (None)."""
    return {"treebank": bool(config.treebank) or config.parse != "none", "coreference": bool(config.coref),
            "causal": True if is_causal is None else is_causal,
            "encoder": True if is_causal is None else not is_causal,
            "trained_loss": True if is_causal is None else loss_kind in TRAINED_LOSSES}


def check_inputs(config: RunConfig, names: list[str]) -> None:
    """Refuse, before the model loads, an analysis asked for by name whose input the data does not give.

    ``all`` is not checked here: it leaves out what does not apply (:func:`expand_all`).

    Raises
    ------
    UsageError
        Naming each such analysis, the input it needs and the option that gives it.
    """
    have = available_inputs(config)
    problems = []
    for name in names:
        if name == ALL or name not in REGISTRY:
            continue
        missing = [need for need in REGISTRY[name].needs if not have.get(need, True)]
        if missing:
            problems.append(f"{name} needs {' and '.join(INPUT_OPTIONS.get(n, n) for n in missing)}")
    if problems:
        raise UsageError("; ".join(problems) + " (or leave it out of --analyses; --analyses all runs only what "
                         "applies)")


def check_options(config: RunConfig, analyses: list[Analysis]) -> None:
    """Each analysis's options against the run's settings (:meth:`Analysis.check_run`), before the model loads."""
    for analysis in analyses:
        analysis.check_run(config)


def check_model_needs(names: list[str], model: str, is_causal: bool) -> None:
    """Refuse an analysis asked for by name whose ``needs`` the loaded model does not meet (``causal``,
    ``encoder``): once the model's config is read, before any pass. ``all`` leaves such analyses out instead.

    Raises
    ------
    UsageError
        Naming the model, what it is, the analysis and what it needs.
    """
    for name in names:
        cls = REGISTRY.get(name)
        if cls is None:
            continue
        if "causal" in cls.needs and not is_causal:
            raise UsageError(f"{model} is not a causal language model (its attention is bidirectional): the {name} "
                             f"analysis ({cls.description}) needs a decoder LM; run it on a decoder LM")
        if "encoder" in cls.needs and is_causal:
            raise UsageError(f"{model} is a causal language model: the {name} analysis ({cls.description}) needs "
                             "an encoder model (bidirectional attention)")


def finalize_order(names: list[str]) -> list[str]:
    """``names`` reordered so that every analysis comes after those of its ``after`` and ``after_if_run`` (and,
    when it ``reads_findings``, those declaring a ranking or a behaviour) that are among ``names``: a stable
    topological order (each step takes the first name, in the given order, whose dependencies are all placed),
    so analyses without dependencies keep the order given.

    Raises
    ------
    ValueError
        On a cycle.
    """
    present = set(names)
    # An analysis that reads the declared rankings and behaviours comes after every analysis that declares one.
    declaring = {n for n in names if REGISTRY[n].ranking is not None or REGISTRY[n].behaviour is not None}
    deps = {name: {d for d in (*REGISTRY[name].after, *REGISTRY[name].after_if_run,
                               *(declaring if REGISTRY[name].reads_findings else ())) if d in present and d != name}
            for name in names}
    placed: list[str] = []
    left = list(dict.fromkeys(names))
    while left:
        ready = next((name for name in left if deps[name] <= set(placed)), None)
        if ready is None:
            raise ValueError(f"analyses depend on each other in a cycle: {', '.join(left)}")
        placed.append(ready)
        left.remove(ready)
    return placed


def applicable_analyses(config: RunConfig, is_causal: bool, loss_kind: str | None = "lm_loss"
                        ) -> tuple[list[str], dict[str, str]]:
    """What ``--analyses all`` means for this model and corpus: the names to run, and why others are not.

    An analysis declares what it needs in ``needs`` (``treebank``, ``coreference``, ``causal``,
    ``encoder``); one whose need is not met is left out with the reason, rather than run to an empty table.
    """
    have = available_inputs(config, is_causal, loss_kind)
    names: list[str] = []
    skipped: dict[str, str] = {}
    for name, cls in sorted(REGISTRY.items(), key=lambda item: item[0]):
        missing = [need for need in cls.needs if not have.get(need, True)]
        if missing:
            skipped[name] = "; ".join(NEED_HINTS.get(need, f"needs {need}") for need in missing)
        elif cls.costly:
            skipped[name] = f"{cls.costly}; name it to run it"
        elif config.weights == "rollout" and not cls.accepts_rollout:
            skipped[name] = "does not accept --weights rollout"
        else:
            names.append(name)
    return names, skipped


def check_weights(config: RunConfig) -> None:
    """Refuse ``--weights rollout`` with an analysis that does not accept rollout maps (before the model loads).

    Raises
    ------
    ValueError
        Naming the analyses that do not accept rollout and those that do.
    """
    if config.weights != "rollout":
        return
    other = [a for a in config.analyses if a != ALL and a in REGISTRY and not REGISTRY[a].accepts_rollout]
    if other:
        accepting = ", ".join(sorted(n for n, cls in REGISTRY.items() if cls.accepts_rollout))
        raise ValueError(f"--weights rollout gives maps that mix every layer below; the analyses {', '.join(other)} "
                         f"do not accept them (rollout works with {accepting})")


def expand_all(config: RunConfig, is_causal: bool, loss_kind: str | None = "lm_loss"
               ) -> tuple[RunConfig, dict[str, str]]:
    """``config`` with ``all`` in its analyses replaced by the analyses that apply (others kept as named)."""
    if ALL not in config.analyses:
        return config, {}
    names, skipped = applicable_analyses(config, is_causal, loss_kind)
    explicit = [name for name in config.analyses if name != ALL]
    expanded = explicit + [name for name in names if name not in explicit]
    return dataclasses.replace(config, analyses=expanded), {k: v for k, v in skipped.items() if k not in explicit}
