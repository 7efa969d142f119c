"""The orchestration of a run, one layer on top of the engine and the analyses: resolve the analyses, open
the context, drive the passes, assemble the results.

Data flows down from here: this module calls the registry and the engine, and nothing below it calls back up.
``headscope.run`` is :func:`run`; importing this module registers every analysis (``headscope.analyses``) and
gives :func:`run` its signature and its list of keywords (:func:`document_run`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import platform
import sys
import textwrap
import time
from collections.abc import Callable
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import headscope.analyses  # noqa: F401 (registers every analysis: run's keywords and signature list them all)
from headscope.analyses import AnalysisResult
from headscope.analyses.registry import (
    ALL,
    REGISTRY,
    check_inputs,
    check_weights,
    expand_all,
    public_name,
    resolve_analyses,
    split_options,
)
from headscope.atlas import atlas_summary, build_atlas, parse_thresholds
from headscope.config import CONFIG_GROUPS, RunConfig
from headscope.engine.checkpoint import CheckpointError, Progress, differences, fingerprint, restore
from headscope.engine.checkpoint import read as read_checkpoint
from headscope.engine.checkpoint import remove as remove_checkpoint
from headscope.engine.context import open_context
from headscope.engine.intervene import run_passes
from headscope.engine.outdir import prepare as prepare_output
from headscope.engine.passes import local_pass, ray_pass
from headscope.engine.preflight import check_dependencies
from headscope.engine.results import RunResult, write_json

logger = logging.getLogger("headscope")


class NoUsableInputError(ValueError):
    """Nothing in the corpus could be used; the manifest's messages say why."""


def _versions() -> dict[str, str]:
    import pandas
    import transformers

    from headscope.version import __version__

    return {"headscope": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__, "pandas": pandas.__version__,
            "platform": platform.platform()}


def run(config: RunConfig | None = None, /, **kwargs: Any) -> RunResult:
    """Analyse every attention head of a model over a corpus, in one pass.

    Parameters
    ----------
    config : RunConfig, optional
        The run's settings; keyword arguments override its fields.
    **kwargs
        Fields of :class:`RunConfig` (``model``, ``text``, ``treebank``, ``analyses``, ``out`` ...) and
        of any analysis's ``Options``, by their namespaced names (``roles_tau``); every one is listed
        below under "Keyword arguments", with its default.

    Returns
    -------
    RunResult
        ``.heads`` (DataFrame, one row per head), ``.tables``, ``.documents`` and ``.run`` (the manifest).
        When ``out`` is set (default ``headscope-out``; pass ``out=None`` to keep everything in memory),
        the files are written there too.
    """
    config_kwargs, analysis_kwargs = split_options(kwargs)
    config = dataclasses.replace(config, **config_kwargs) if config is not None else RunConfig(**config_kwargs)
    checkpoint = None
    if config.resume:
        # Read once: state.npz can be large, and its settings decide the run's configuration.
        checkpoint = read_checkpoint(config.resume)
        config, analysis_kwargs = _resumed_config(config, checkpoint[0], config_kwargs, analysis_kwargs)
    # Check the names now (before the model loads); ``all`` is expanded once the model is known.
    analyses = resolve_analyses([name for name in config.analyses if name != ALL], analysis_kwargs)
    check_weights(config)
    parse_thresholds(config.atlas_thresholds)  # an unknown atlas threshold: refused before the model loads
    check_inputs(config, config.analyses)  # an analysis named without its data: refused now, not after the pass
    check_dependencies(config, analyses)  # optional packages, found without importing them
    missing = config.missing_files()
    if missing and not config.skip_missing:
        raise FileNotFoundError(f"input file not found: {'; '.join(missing)} (check the name, or pass "
                                "--skip-missing to run without it)")
    if config.out:
        prepare_output(config.out, config.overwrite, resuming=bool(config.resume))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)

    ctx = open_context(config)
    timings["load_model"] = time.perf_counter() - t0
    info, manifest = ctx.info, ctx.manifest
    if ALL in config.analyses:
        config, skipped = expand_all(config, info.is_causal)
        ctx = dataclasses.replace(ctx, config=config)  # the resolved config; nothing changes it from here
        analyses = resolve_analyses(config.analyses, analysis_kwargs)
        manifest.notes["analyses_all"] = {"ran": list(config.analyses), "skipped": skipped}
        for name, reason in skipped.items():
            logger.info("--analyses all: %s left out (%s)", name, reason)
    actx = ctx.for_analyses()
    for analysis in analyses:
        analysis.start(actx)

    fp = fingerprint(config, info, analyses, manifest)
    progress = Progress(used={analysis.name: 0 for analysis in analyses})
    if checkpoint is not None:
        saved, progress, states = checkpoint
        diffs = differences(saved, fp)
        if diffs:
            raise CheckpointError(f"the checkpoint in {config.resume} is from another run: " + "; ".join(diffs))
        restore(analyses, states)
        logger.info("resuming %s: %d batches already counted", config.resume, len(progress.done))

    t1 = time.perf_counter()
    pass_ = ray_pass if config.engine == "ray" else local_pass
    n_examples, n_tokens = pass_(ctx, analyses, progress, fp)
    used = dict(progress.used)
    timings["pass"] = time.perf_counter() - t1
    if n_examples == 0:
        problems = "; ".join(str(e) for e in manifest.events[:5]) or "no input"
        raise NoUsableInputError(f"no usable input in the corpus ({problems})")
    manifest.count("examples", n_examples)
    manifest.count("tokens", n_tokens)

    t2 = time.perf_counter()
    results: dict[str, AnalysisResult] = {}
    actx = ctx.for_analyses(examples=n_examples)
    for analysis in analyses:
        ta = time.perf_counter()
        if analysis.intervenes:
            # The analysis's own passes, run by the engine once its dependencies are final; what it used is
            # what they read.
            used[analysis.name] = run_passes(ctx, analysis, actx, results)
            timings[f"passes_{analysis.name}"] = time.perf_counter() - ta
        results[analysis.name] = analysis.finalize(actx, results)
        for message in results[analysis.name].warnings:
            manifest.warn_run(message)
        timings[f"finalize_{analysis.name}"] = time.perf_counter() - ta
    timings["finalize"] = time.perf_counter() - t2
    for analysis in analyses:
        if used[analysis.name] == 0:
            # Say so instead of writing empty tables that look like a result.
            message = (f"analysis {analysis.name!r} found no usable input in this corpus "
                       f"({analysis.description}); check its input (--treebank, --coref, --parse spacy)")
            manifest.warn_run(message)
            manifest.notes.setdefault("analyses_without_input", []).append(message)
    timings["total"] = time.perf_counter() - t0

    run_info = {
        "model": info.to_dict(),
        "config": config.to_dict(),
        "analysis_options": {a.name: dataclasses.asdict(a.options) for a in analyses
                             if a.options is not None},
        "analyses": {name: {"examples_used": used.get(name, 0), **r.summary} for name, r in results.items()},
        "seed": config.seed,
        "engine": {"name": config.engine, "workers": config.workers if config.engine == "ray" else 1},
        "segments": progress.segments,
        **manifest.to_dict(),
        "versions": _versions(),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    result = assemble(results, run_info)
    add_atlas(result)
    if config.out:
        tw = time.perf_counter()
        result.save(config.out)
        if config.report:
            from headscope.report import build_report

            build_report(config.out)
        result.run["timings_s"]["write"] = round(time.perf_counter() - tw, 3)
        write_json(Path(config.out) / "run.json", result.run)
        remove_checkpoint(config.out)  # the run is complete: run.json and the tables are its record
    return result


def _field_default(f: dataclasses.Field, missing: Any) -> Any:
    """The default of dataclass field ``f`` (its factory called), or ``missing`` when it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return missing


def _keyword_docs() -> str:
    """The "Keyword arguments" part of :func:`run`'s docstring: every field of :class:`RunConfig` and of each
    analysis's ``Options``, under its public (namespaced) name, with its type, default and help."""

    def entries(cls: type, public: Callable[[str], str], fields: list[dataclasses.Field] | None = None) -> list[str]:
        out = []
        for f in dataclasses.fields(cls) if fields is None else fields:
            default = _field_default(f, None)
            help_text = textwrap.fill(" ".join(str(f.metadata.get("help", "")).split()), 100,
                                      initial_indent="    ", subsequent_indent="    ")
            out.append(f"{public(f.name)} : {f.type}, default {default!r}\n{help_text}")
        return out

    parts = ["Keyword arguments", "-----------------"]
    for group, description in CONFIG_GROUPS.items():
        fields = [f for f in dataclasses.fields(RunConfig) if f.metadata.get("group") == group]
        parts += ["", f"Run settings: {group} ({description}):", "",
                  *entries(RunConfig, lambda name: name, fields)]
    for name, cls in sorted(REGISTRY.items()):
        if cls.Options is not None:
            parts += ["", f"Options of ``{name}`` ({cls.description}):", "",
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
    return inspect.Signature(params, return_annotation="RunResult")


def document_run() -> None:
    """Give :func:`run` its signature (:func:`run_signature`) and append every keyword (run settings by group,
    each registered analysis's options) to its docstring.

    Called when this module is imported, once every analysis is registered; calling it again (after
    registering another analysis) rebuilds both.
    """
    head = inspect.cleandoc(run.__doc__ or "").split("\n\nKeyword arguments\n")[0]
    run.__doc__ = f"{head}\n\n{_keyword_docs()}\n"
    run.__signature__ = run_signature()  # type: ignore[attr-defined]


def assemble(results: dict[str, AnalysisResult], run: dict[str, Any]) -> RunResult:
    """One :class:`RunResult` from the analyses' results: per-head columns merged into one ``heads`` table."""
    frames = [r.heads for r in results.values() if r.heads is not None]
    if frames:
        heads = reduce(lambda a, b: a.merge(b, on=["layer", "head"], how="outer"), frames)
        heads = heads.sort_values(["layer", "head"]).reset_index(drop=True)
    else:
        heads = pd.DataFrame(columns=["layer", "head"])
    tables: dict[str, pd.DataFrame] = {}
    documents: dict[str, Any] = {}
    probes: dict[str, list[dict[str, Any]]] = {}
    for r in results.values():
        tables.update(r.tables)
        documents.update(r.documents)
        if r.probes:
            probes[r.name] = r.probes
    return RunResult(heads=heads, tables=tables, documents=documents, run=run, probes=probes)


def add_atlas(result: RunResult) -> None:
    """The head atlas (:mod:`headscope.atlas`) as ``result.tables["atlas"]`` and its counts in ``run["atlas"]``."""
    atlas = build_atlas(result.heads, result.tables, result.run)
    result.tables["atlas"] = atlas
    result.run["atlas"] = atlas_summary(atlas, result.run)


def _resumed_config(config: RunConfig, saved: dict[str, Any], explicit: dict[str, Any],
                    analysis_kwargs: dict[str, dict[str, Any]]) -> tuple[RunConfig, dict[str, dict[str, Any]]]:
    """The configuration of the run to resume: the checkpoint's, refusing any explicit option that differs."""
    from headscope.engine.checkpoint import FREE_SETTINGS

    free = {k: v for k, v in explicit.items() if k in FREE_SETTINGS}
    resumed = RunConfig(**{**saved["config"], **free, "out": config.resume, "resume": config.resume})
    asked = RunConfig(**{**saved["config"], **explicit, "out": config.resume, "resume": config.resume})
    diffs = differences({"config": saved["config"]}, {"config": {k: v for k, v in asked.to_dict().items()
                                                                 if k not in FREE_SETTINGS}})
    options = {name: dict(values) for name, values in saved["analysis_options"].items() if values is not None}
    for name, values in analysis_kwargs.items():
        for key, value in values.items():
            if options.get(name, {}).get(key) != value:
                diffs.append(f"{name} option {key}: checkpoint {options.get(name, {}).get(key)!r}, this run "
                             f"{value!r}")
    if diffs:
        raise CheckpointError(f"cannot resume {config.resume} with other settings: " + "; ".join(diffs))
    return resumed, options


document_run()  # help(headscope.run) and inspect.signature list every keyword
