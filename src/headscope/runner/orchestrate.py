"""The orchestration of a run, one layer on top of the engine and the analyses: resolve the analyses, open
the context, drive the passes, assemble the results.

Data flows down from here: this module calls the registry and the engine, and nothing below it calls back up.
``headscope.run`` is :func:`run`; importing this module registers every analysis (``headscope.analyses``) and
gives :func:`run` its signature and its list of keywords (:func:`document_run`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import platform
import sys
import time
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
    NEED_HINTS,
    TRAINED_LOSSES,
    check_inputs,
    check_model_needs,
    check_options,
    check_weights,
    expand_all,
    resolve_analyses,
    split_options,
)
from headscope.atlas import atlas_summary, build_atlas, parse_thresholds
from headscope.config import MEMORY, RunConfig
from headscope.corpus.memory import MemoryCorpus, check_tokenlists, open_dataset, text_source
from headscope.engine.outdir import prepare as prepare_output
from headscope.engine.results import RunResult, write_json
from headscope.errors import UsageError
from headscope.model.inmemory import MemoryModelInfo, from_memory, preserved, refresh
from headscope.model.load import LoadedModel
from headscope.runner.checkpoint import CheckpointError, Progress, differences, fingerprint, restore
from headscope.runner.checkpoint import read as read_checkpoint
from headscope.runner.checkpoint import remove as remove_checkpoint
from headscope.runner.console import with_console_logging
from headscope.runner.context import open_context
from headscope.runner.intervene import run_passes
from headscope.runner.passes import local_pass, ray_pass
from headscope.runner.plan import announce_plan
from headscope.runner.preflight import check_dependencies
from headscope.runner.signature import keyword_docs, run_signature
from headscope.runner.usage import check_device, check_files, usage_errors

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


@with_console_logging  # progress lines and headscope: warnings on stderr when the caller configured no logging
def run(config: RunConfig | None = None, /, **options: Any) -> RunResult:
    """Analyse every attention head of a model over a corpus, in one pass.

    Parameters
    ----------
    config : RunConfig, optional
        The run's settings; keyword arguments override its fields.
    **options
        Fields of :class:`RunConfig` (``model``, ``text``, ``treebank``, ``analyses``, ``out`` ...) and
        of any analysis's ``Options``, by their namespaced names (``roles_tau``); every one is listed
        below under "Keyword arguments", with its default (``inspect.signature(run)`` has them all).

    Returns
    -------
    RunResult
        ``.heads`` (DataFrame, one row per head), ``.tables``, ``.documents`` and ``.run`` (the manifest).
        When ``out`` is set (default ``headscope-out``; pass ``out=None`` to keep everything in memory),
        the files are written there too.
    """
    return run_with(config, options)


def run_with(config: RunConfig | None, kwargs: dict[str, Any], loaded: LoadedModel | None = None) -> RunResult:
    """:func:`run`, with ``loaded`` a model already loaded (a :class:`headscope.Session`'s) instead of
    ``config.model``. Objects in ``kwargs`` (``model=`` a model, ``tokenizer=``, ``texts=``, ``treebank=`` a
    list of ``conllu.TokenList``) are taken out of the settings here (:func:`_memory_inputs`)."""
    kwargs = dict(kwargs)
    with usage_errors():  # everything below, up to the model's load, is about the run as asked for
        memory_model, tokenizer, texts, tokenlists = _memory_inputs(kwargs)
        config_kwargs, analysis_kwargs = split_options(kwargs)
        config = dataclasses.replace(config, **config_kwargs) if config is not None else RunConfig(**config_kwargs)
        checkpoint = None
        if config.resume:
            # Read once: state.npz can be large, and its settings decide the run's configuration.
            checkpoint = read_checkpoint(config.resume)
            saved_model = checkpoint[0].get("config", {}).get("model")
            if saved_model == MEMORY and memory_model is None and not _holds_memory_model(loaded):
                raise CheckpointError(
                    f"the run in {config.resume} analysed a model held in memory (weights fingerprint "
                    f"{str(checkpoint[0].get('model', {}).get('weights_fingerprint'))[:12]}...): resume it from "
                    "Python with headscope.run(model=<the same model>, tokenizer=..., resume=...), with the same "
                    "weights")
            config, analysis_kwargs = _resumed_config(config, checkpoint[0], config_kwargs, analysis_kwargs)
        if memory_model is not None:
            loaded = from_memory(memory_model, tokenizer, capture=config.capture)
        memory = MemoryCorpus(tokenlists=tokenlists)
        if texts is not None:
            memory.texts = text_source(texts, config.text_column)
        elif config.dataset and config.dataset != MEMORY:
            memory.texts = open_dataset(config.dataset, config.split, config.text_column)  # before the load
        if config.engine == "ray" and (_holds_memory_model(loaded) or texts is not None or tokenlists is not None):
            raise UsageError("--engine ray loads the model and reads the data by name on each worker; a model or "
                             "data held in memory runs with engine='local'")
    guard = (preserved(loaded.model) if loaded is not None and _holds_memory_model(loaded)
             else contextlib.nullcontext())
    with guard:
        return _run(config, analysis_kwargs, checkpoint, loaded, memory, described=memory_model is not None)


def _run(config: RunConfig, analysis_kwargs: dict[str, dict[str, Any]], checkpoint: Any,
         loaded: LoadedModel | None, memory: MemoryCorpus, described: bool = False) -> RunResult:
    if loaded is not None and _holds_memory_model(loaded):
        if not described:
            refresh(loaded)  # a Session's model: its weights may have changed since the last run
        if loaded.route != "stacked":
            # Chosen again: the attention implementation set for the capture was restored after the last run.
            loaded.route = None
            loaded.capture_state.clear()
    with usage_errors():
        # Check the names now (before the model loads); ``all`` is expanded once the model is known.
        analyses = resolve_analyses([name for name in config.analyses if name != ALL], analysis_kwargs)
        check_weights(config)
        check_options(config, analyses)  # each analysis's options against the run's settings
        parse_thresholds(config.atlas_thresholds)  # an unknown atlas threshold: refused before the model loads
        check_inputs(config, config.analyses)  # an analysis named without its data: refused now, not after the pass
        check_dependencies(config, analyses)  # optional packages, found without importing them
        check_files(config)
        check_device(config.device)
    if config.out:
        prepare_output(config.out, config.overwrite, resuming=bool(config.resume))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)

    ctx = open_context(config, loaded, memory)
    timings["load_model"] = time.perf_counter() - t0
    info, manifest = ctx.info, ctx.manifest
    with usage_errors():  # the analyses' declared needs of the model (causal, encoder), now that it is read
        check_model_needs(config.analyses, info.name, info.is_causal)
    loss_kind = ctx.for_analyses().loss_kind
    asked_all = ALL in config.analyses
    if asked_all:
        config, skipped = expand_all(config, info.is_causal, loss_kind)
        ctx = dataclasses.replace(ctx, config=config)  # the resolved config; nothing changes it from here
        analyses = resolve_analyses(config.analyses, analysis_kwargs)
        with usage_errors():
            check_options(config, analyses)
        manifest.notes["analyses_all"] = {"ran": list(config.analyses), "skipped": skipped}
    else:
        skipped = {}
    actx = ctx.for_analyses()
    with usage_errors():  # what start refuses is an option the loaded model cannot take (before any pass)
        for analysis in analyses:
            analysis.start(actx)
    for analysis in analyses:
        unmet = [n for n in analysis.needs if n == "trained_loss" and loss_kind not in TRAINED_LOSSES]
        if unmet:  # named: it runs, but the user hears now what the run would say only at its end
            manifest.warn_run(f"{analysis.name} {NEED_HINTS['trained_loss']}: its result is likely uninformative")
    announce_plan(ctx.corpus.segment_limit, analyses, actx, skipped, asked_all)

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


#: Settings of how a model is loaded by name; a model handed over in memory is used as it is.
_LOAD_SETTINGS = ("revision", "gguf_file", "trust_remote_code", "cache_model", "dtype", "device")


def _holds_memory_model(loaded: LoadedModel | None) -> bool:
    return loaded is not None and isinstance(loaded.info, MemoryModelInfo)


def _memory_inputs(kwargs: dict[str, Any]) -> tuple[Any, Any, Any, list[Any] | None]:
    """Take the objects out of ``kwargs`` (model, tokenizer, texts, treebank sentences), leaving :data:`MEMORY`
    in their settings so that ``run.json``, the checkpoint and ``--analyses all`` see that they were given."""
    model = kwargs.get("model")
    memory_model = None
    if model is not None and not isinstance(model, str):
        memory_model = kwargs.pop("model")
        kwargs["model"] = MEMORY
        given = [name for name in _LOAD_SETTINGS if name in kwargs]
        if given:
            raise UsageError(f"{', '.join(given)}: settings of a model loaded by name; a model object is used as it "
                             "is (move or cast it yourself before the run)")
    tokenizer = kwargs.pop("tokenizer", None)
    if tokenizer is not None and memory_model is None:
        raise UsageError("tokenizer= goes with model=<a model object>; a model named by a string loads its own")
    if memory_model is not None and tokenizer is None:
        raise UsageError("model=<a model object> needs its tokenizer: pass tokenizer=...")
    texts = kwargs.pop("texts", None)
    dataset = kwargs.get("dataset")
    if dataset is not None and not isinstance(dataset, str):
        if texts is not None:
            raise UsageError("give the texts once: texts= or dataset=, not both")
        texts = kwargs.pop("dataset")
    if texts is not None:
        if kwargs.get("dataset"):
            raise UsageError("give the texts once: texts= or dataset=, not both")
        kwargs["dataset"] = MEMORY
    treebank = kwargs.get("treebank")
    tokenlists = None
    if treebank is not None and not isinstance(treebank, str) and any(not isinstance(t, str) for t in treebank):
        tokenlists = check_tokenlists(treebank)
        kwargs["treebank"] = [MEMORY]
    return memory_model, tokenizer, texts, tokenlists


def document_run() -> None:
    """Give :func:`run` its signature (:func:`run_signature`) and append every keyword (run settings by group,
    each registered analysis's options) to its docstring.

    Called when this module is imported, once every analysis is registered; calling it again (after
    registering another analysis) rebuilds both.
    """
    head = inspect.cleandoc(run.__doc__ or "").split("\n\nKeyword arguments\n")[0]
    run.__doc__ = f"{head}\n\n{keyword_docs()}\n"
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
    from headscope.runner.checkpoint import FREE_SETTINGS

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
