"""A model loaded once and analysed many times: the notebook's workflow.

>>> s = headscope.Session(model="minilm")                                     # doctest: +SKIP
>>> s.run(analyses=["surface"], texts=["The cat sat.", "It slept."], out=None)  # doctest: +SKIP
>>> s.run(analyses=["roles"], texts=my_dataframe["text"], out=None)             # doctest: +SKIP
>>> s.view("The keys to the cabinet are on the table.")                        # doctest: +SKIP

``Session(model=<a transformers model object>, tokenizer=...)`` holds a model already in memory: each run
analyses it in place and leaves it exactly as it was (:func:`headscope.model.inmemory.preserved`), so the model
can be trained between two runs; each run records the weights it saw (their fingerprint).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from headscope.config import MEMORY, RunConfig
from headscope.engine.capture import ensure_route
from headscope.errors import UsageError
from headscope.model.inmemory import MemoryModelInfo, from_memory, preserved
from headscope.model.load import LoadedModel, load_model
from headscope.runner.orchestrate import run_with

if TYPE_CHECKING:
    from headscope.engine.results import RunResult
    from headscope.model.load import ModelInfo
    from headscope.viewer import ViewPage

#: Settings that decide how the model is loaded: fixed for the session, refused when a run asks for others.
MODEL_SETTINGS = ("model", "revision", "gguf_file", "trust_remote_code", "cache_model", "dtype", "device",
                  "capture")


class Session:
    """A model held for many runs: loaded once (by name) or handed over (a model object and its tokenizer).

    Parameters
    ----------
    model : str or transformers.PreTrainedModel or peft.PeftModel
        A name as :func:`headscope.run` takes it (packaged short name, local directory, hub id), or a model
        object, used in place.
    tokenizer : transformers.PreTrainedTokenizerFast, optional
        The tokenizer of a model object (a named model loads its own).
    **settings
        How a named model is loaded (``revision``, ``gguf_file``, ``trust_remote_code``, ``cache_model``,
        ``dtype``, ``device``) and the capture route (``capture``); every run of the session uses them.

    Attributes
    ----------
    loaded : LoadedModel
        The model, its tokenizer and what the analyses know of it.
    load_seconds : float
        What loading took (a named model: with the probe pass that chooses the capture route; a model object:
        describing it, its weights fingerprint included; its route is chosen at each run, as the model is left
        as it was after each).
    """

    def __init__(self, model: Any = "minilm", tokenizer: Any = None, **settings: Any) -> None:
        unknown = [k for k in settings if k not in MODEL_SETTINGS]
        if unknown:
            raise UsageError(f"Session takes the model's settings only ({', '.join(MODEL_SETTINGS[1:])}); "
                             f"{', '.join(unknown)} go to Session.run")
        t0 = time.perf_counter()
        capture = settings.get("capture", "auto")
        if isinstance(model, str):
            if tokenizer is not None:
                raise UsageError("tokenizer= goes with a model object; a model named by a string loads its own")
            config = RunConfig(model=model, **settings)  # the settings checked as a run checks them
            self.loaded: LoadedModel = load_model(
                model, revision=config.revision, device=config.device, dtype=config.dtype,
                trust_remote_code=config.trust_remote_code, gguf_file=config.gguf_file, capture=config.capture,
                cache_model=config.cache_model)
            # The capture route is part of the load (a probe pass): chosen once, so no run pays for it.
            ensure_route(self.loaded)
            self._settings = {"model": model, **settings}
        else:
            given = [k for k in settings if k != "capture"]
            if given:
                raise UsageError(f"{', '.join(given)}: settings of a model loaded by name; a model object is used "
                                 "as it is")
            RunConfig(capture=capture)
            self.loaded = from_memory(model, tokenizer, capture=capture)
            self._settings = {"model": MEMORY, "capture": capture}
        self.load_seconds = time.perf_counter() - t0

    @property
    def info(self) -> ModelInfo:
        """The model's name, layers, heads, kind (see :class:`~headscope.model.load.ModelInfo`)."""
        return self.loaded.info

    @property
    def in_memory(self) -> bool:
        """True when the session holds a model object handed over by the caller."""
        return isinstance(self.loaded.info, MemoryModelInfo)

    def run(self, config: RunConfig | None = None, /, **kwargs: Any) -> RunResult:
        """:func:`headscope.run` on the session's model: the same keywords (``analyses``, ``texts``,
        ``treebank``, ``out`` ...), no load.

        Resuming (``resume=``) works as for :func:`headscope.run`; for a model object the checkpoint is
        accepted only when the model's weights have the fingerprint they had when it was written.
        """
        for name in MODEL_SETTINGS:
            if name in kwargs and kwargs[name] != self._settings.get(name, kwargs[name]):
                raise UsageError(f"{name}={kwargs[name]!r}: this session holds {self.info.name} with "
                                 f"{name}={self._settings.get(name)!r}; start another Session for other model "
                                 "settings")
            if name in kwargs and name not in self._settings and name != "capture":
                raise UsageError(f"{name}: a setting of how the model is loaded; give it to Session(...)")
        if "tokenizer" in kwargs:
            raise UsageError("tokenizer: the session's model has its tokenizer; start another Session for another")
        return run_with(config, {**kwargs, **self._settings}, loaded=self.loaded)

    def view(self, text: str | None = None, **kwargs: Any) -> ViewPage:
        """:func:`headscope.view` of one input on the session's model: every head's attention, a page shown
        inline in a notebook (written to ``out``, default ``headscope-view.html``)."""
        from headscope.viewer import view

        if "model" in kwargs:
            raise UsageError("model: the session's model is shown; start another Session for another")
        if not self.in_memory:
            return view(text, loaded=self.loaded, **kwargs)
        with preserved(self.loaded.model):
            if self.loaded.route != "stacked":
                self.loaded.route = None  # chosen again: the last run's attention implementation was restored
                self.loaded.capture_state.clear()
            return view(text, loaded=self.loaded, **kwargs)

    def __repr__(self) -> str:
        info = self.loaded.info
        where = "in memory" if self.in_memory else f"loaded in {self.load_seconds:.1f} s"
        return (f"Session({info.name!r}: {info.n_layers} layers x {info.n_heads} heads, "
                f"{'decoder' if info.is_causal else 'encoder'}, {where}, on {self.loaded.device})")
