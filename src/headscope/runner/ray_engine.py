"""The main pass on Ray Data: an actor pool of model copies, partial states merged on the driver.

The driver reads and batches the corpus exactly as a local run does (so the manifest, with every skipped
input, is the same) and hands the numbered batches to Ray Data. Each actor of the pool
(``map_batches`` with a callable class) loads the model once; for each batch it starts fresh accumulators,
feeds the batch, and returns their state (:mod:`headscope.engine.state`: fixed-size arrays + JSON, never
attention maps). The driver merges each state into its own accumulators as it arrives and finalizes.

Every batch's state is a function of that batch alone, so a worker that dies and whose task Ray retries
gives the same state again; the driver counts each batch number once, so nothing is counted twice or
lost, whatever the number of workers.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from headscope.analyses.base import Analysis
from headscope.config import RunConfig
from headscope.engine.context import AnalysisContext
from headscope.engine.interrupt import RunInterrupted
from headscope.engine.progress import Tracker
from headscope.engine.state import pack, unpack
from headscope.runner.checkpoint import Progress
from headscope.runner.context import RunContext

logger = logging.getLogger("headscope")


def _fresh(analysis: Analysis, actx: AnalysisContext) -> Analysis:
    """A started analysis of ``analysis``'s kind and options, with its declared defaults (a shard to load)."""
    fresh = type(analysis)(analysis.options)
    fresh.start(actx)
    return fresh


class BatchWorker:
    """A Ray Data actor: one model copy; turns numbered batches of examples into packed partial states."""

    def __init__(self, config: dict[str, Any], options: dict[str, dict[str, Any] | None]) -> None:
        import torch

        from headscope.analyses.registry import resolve_analyses
        from headscope.runner.context import open_context

        cpus = max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
        torch.set_num_threads(cpus)
        run_config = RunConfig(**{**config, "engine": "local", "out": None, "quiet": True, "resume": None})
        self.ctx = open_context(run_config)
        self.analyses = resolve_analyses(run_config.analyses, {k: v for k, v in options.items() if v is not None})
        actx = self.ctx.for_analyses()
        for analysis in self.analyses:
            analysis.start(actx)

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from headscope.runner.feed import feed_batch

        ids, states = [], []
        for batch_id, examples in zip(rows["id"], rows["examples"], strict=True):
            analyses = self.analyses
            for analysis in analyses:
                analysis.reset()  # each batch's state is that batch's alone (declared defaults: add_state)
            used = feed_batch(self.ctx, analyses, self.ctx.collate(list(pickle.loads(examples))))
            states.append(pack({a.name: a.state_dict() for a in analyses}, extra={"used": used}))
            ids.append(int(batch_id))
        return {"id": np.asarray(ids, dtype=np.int64), "state": np.asarray(states, dtype=object)}


def _init_ray(config: RunConfig) -> bool:
    """Connect to ``--ray-address`` or start a local instance; True when this call started it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError('--engine ray needs Ray: pip install "headscope[ray]"') from exc
    import ray.data

    # Our own progress bar and manifest speak for the run; Ray Data's per-operator logs are noise here, and so
    # is the warning that says we turned its bars off (its progress module logs nothing else we want).
    ray.data.DataContext.get_current().enable_progress_bars = False
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    if ray.is_initialized():
        return False
    # logging_level: ray.init sets the "ray" logger to INFO by default ("Started a local Ray instance").
    if config.ray_address:
        ray.init(address=config.ray_address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        # A local instance turns token authentication on by itself (recent Ray) and warns that it did: the
        # secure default, kept; only that notice is held back while this instance starts (the warning that a
        # cluster runs without authentication comes from the --ray-address path, untouched).
        notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
        level = notice.level
        notice.setLevel(logging.ERROR)
        try:
            ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        finally:
            notice.setLevel(level)
    return True


def _actor_pool(workers: int) -> dict[str, Any]:
    """``map_batches``'s keyword for a pool of ``workers`` actors, in the spelling this Ray does not call
    deprecated: ``compute=ActorPoolStrategy(size=n)`` from Ray 2.51 (which deprecates ``concurrency``),
    ``concurrency=n`` before (Ray 2.9 to 2.50 deprecated ``compute``)."""
    import ray
    import ray.data

    version = tuple(int(part) for part in re.findall(r"\d+", ray.__version__)[:2])
    if version >= (2, 51):
        return {"compute": ray.data.ActorPoolStrategy(size=workers)}
    return {"concurrency": workers}


def run_on_ray(ctx: RunContext, analyses: list[Analysis], progress: Progress, on_counted: Callable[[], Any],
               stop: Callable[[], str | None], interrupted: Callable[[str], RunInterrupted]) -> tuple[int, int]:
    """Count every batch not in ``progress.done`` on the Ray cluster. Returns (examples, tokens)."""
    import ray
    import ray.data

    config = ctx.config
    started = _init_ray(config)
    try:
        items, n_examples, n_tokens = [], 0, 0
        for k, group in enumerate(ctx.groups(ctx.corpus.examples(ctx.manifest))):
            n_examples += len(group)
            n_tokens += sum(ex.length for ex in group)
            if k not in progress.done:
                # Pickled here: Ray Data cannot turn Example objects into an Arrow column and said so in a
                # warning before pickling them itself; bytes convert as they are.
                items.append({"id": k, "examples": pickle.dumps(group, protocol=pickle.HIGHEST_PROTOCOL)})
        if not items:
            return n_examples, n_tokens
        actx = ctx.for_analyses()  # each shard's state is loaded into a started analysis of this context
        options = {a.name: dataclasses.asdict(a.options) if a.options is not None else None for a in analyses}
        worker_config = {**config.to_dict(), "device": "auto" if config.gpus_per_worker else "cpu"}
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        results = dataset.map_batches(
            BatchWorker, fn_constructor_kwargs={"config": worker_config, "options": options}, batch_size=1,
            num_gpus=config.gpus_per_worker or None, num_cpus=1, **_actor_pool(config.workers))
        # Ray Data restarts a dead actor and retries its task (max_restarts / max_task_retries default to -1).
        with Tracker(f"main pass on Ray ({config.workers} workers)", "batches", len(items), config.quiet) as tracker:
            for row in results.iter_rows():
                batch_id = int(row["id"])
                if batch_id in progress.done:
                    continue  # a retried task delivered twice: count it once
                tracker.update(1)
                states, extra = unpack(row["state"])
                for mine in analyses:
                    part = _fresh(mine, actx)
                    part.load_state_dict(*states[mine.name])
                    mine.merge(part)
                for name, rows in extra["used"].items():
                    progress.used[name] = progress.used.get(name, 0) + int(rows)
                progress.done.add(batch_id)
                on_counted()
                if stop():
                    raise interrupted(stop() or "SIGINT")
        return n_examples, n_tokens
    finally:
        if started:
            ray.shutdown()
