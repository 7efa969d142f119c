"""The accumulator protocol every analysis implements and its result type (the registry: ``registry``).

An analysis consumes the corpus one batch at a time, and each batch one layer at a time, keeping only
running sums. Attention is never held for every layer at once (:mod:`headscope.engine.capture`):

- ``start(ctx)`` declares the state for the model in ``ctx``: each attribute once, with its reduction,
  ``self.add_state("sums_", torch.zeros(shape), reduce="sum")`` (:meth:`Analysis.add_state`); merge,
  reset, checkpoints and the Ray transfer follow from the declarations;
- ``begin_batch(batch)`` is called before a batch's first layer;
- ``update(batch, block)`` (when ``reads_pieces``) adds one :class:`~headscope.engine.capture.LayerAttention`:
  one layer's piece-level weights of shape [batch, head, query, key], or one block of its query rows when a layer is
  larger than the memory budget (``block.query_start``; blocks of a layer come in order). Vectorised on
  the model's device;
- ``update_words(batch, layer, words)`` (when ``reads_words``) adds one layer's word-level attention, of
  shape [batch, head, unit, unit], computed once per layer and shared by every analysis that asks;
- ``end_batch(batch)`` is called after the batch's last layer (analyses that need several layers at the
  same positions keep just those and finish them here);
- an intervention (``intervenes``: it needs the model, not only the maps) declares its passes in
  ``passes(ctx, results)``, a generator of :class:`~headscope.engine.forwards.Pass` (which examples, which
  forwards: gates, losses, gradients, attention, generation), run by the engine once its dependencies have
  finalized; each forward's :class:`~headscope.engine.forwards.ForwardOutput` comes back in
  ``update_pass(batch, forward, out)`` (and attention blocks in ``update_pass_attention``). It never holds
  the model, the corpus or the manifest;
- ``merge(other)`` adds another accumulator of the same kind (shards, resumed runs): the result equals one
  run over both parts. It comes from the declared reductions (arrays indexed by keys met during the run
  merge key by key: ``Keyed``), as the checkpoint does from the declarations (a state of objects declares
  its ``Serializer``); no analysis writes its own;
- ``finalize(ctx, results)`` returns an :class:`AnalysisResult` of tidy DataFrames. ``results`` holds the
  results of the analyses named in ``after`` (and in ``after_if_run``, when they run), which
  finalize first.

Like a scikit-learn estimator, the constructor only stores the options.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import pandas as pd
import torch

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import numpy as np

    from headscope.analyses.findings import AtlasLabels, Behaviour, Ranking
    from headscope.config import RunConfig
    from headscope.engine.batch import Batch
    from headscope.engine.capture import LayerAttention
    from headscope.engine.context import AnalysisContext
    from headscope.engine.forwards import Forward, ForwardOutput, Generate, Pass
    from headscope.engine.state import Reduce, Serializer, StateSpec
    from headscope.model.encode import Example


_A = TypeVar("_A", bound="Analysis")


@dataclass
class AnalysisResult:
    """What one analysis found, as tables ready to write and to read back."""

    name: str
    """The analysis's registry name."""
    heads: pd.DataFrame | None = None
    """Per-head columns (with ``layer`` and ``head``) merged into ``heads.csv``."""
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    """Tables written as ``DIR/{key}.csv``."""
    documents: dict[str, Any] = field(default_factory=dict)
    """JSON-serialisable objects written as ``DIR/{key}.json``."""
    summary: dict[str, Any] = field(default_factory=dict)
    """A few numbers for ``run.json`` (sizes, what was used, choices made)."""
    probes: list[dict[str, Any]] = field(default_factory=list)
    """The inputs the analysis built itself (needle-in-a-haystack prompts, induction-probe sequences, span's
    windows), one JSON-serialisable record each (``ids``, ``text`` as decoded, the spans that matter, the seed):
    written as ``DIR/probes/{name}.jsonl`` so that any peer can be run on exactly these inputs."""
    warnings: list[str] = field(default_factory=list)
    """Caveats about the whole run found in ``finalize`` (a role left untested); the run counts each one in
    ``run.json`` and logs it."""


class Analysis(ABC):
    """Base class of every analysis (see the module docstring for the protocol)."""

    name: ClassVar[str]
    """Registry name, used by ``--analyses``."""
    description: ClassVar[str] = ""
    """One line for ``headscope list``."""
    Options: ClassVar[type | None] = None
    """Dataclass of the analysis's own options (become ``headscope run`` flags), or None."""
    after: ClassVar[tuple[str, ...]] = ()
    """Analyses whose results ``finalize`` reads; they are run too."""
    after_if_run: ClassVar[tuple[str, ...]] = ()
    """Analyses whose results ``finalize`` reads when they run, without asking for them: when they are in the
    run they finalize first, whatever order the user gave (:func:`headscope.analyses.registry.resolve_analyses`)."""
    option_prefix: ClassVar[str | None] = None
    """The namespace of the options (``{prefix}_field``, ``--prefix-field``); None: the analysis's name. See
    :mod:`headscope.analyses.registry`."""
    report_order: ClassVar[int] = 50
    """Position of the analysis's report section, smaller first (unique among analyses). The section itself is
    in :mod:`headscope.report.sections`: an analysis writes tables and a summary, never HTML."""
    accepts_rollout: ClassVar[bool] = False
    """True when the statistics make sense of ``--weights rollout`` maps, which mix every layer below: per-head
    distributions over keys (attention to positions and tokens, distances, dependency matches), example maps."""
    costly: ClassVar[str] = ""
    """Why ``--analyses all`` leaves this analysis out although the run could do it (its cost, said in a few
    words: "one forward per head per batch"); empty: ``all`` includes it."""
    needs: ClassVar[tuple[str, ...]] = ()
    """What the run must offer for ``--analyses all`` to include this analysis: ``treebank``,
    ``coreference``, ``causal`` (a decoder LM) or ``encoder``."""
    ranking: ClassVar[Ranking | None] = None
    """A per-head score of its results that pruning prunes by, weakest first (:mod:`~headscope.analyses.findings`)."""
    behaviour: ClassVar[Behaviour | None] = None
    """The heads in which it identified a behaviour (pruning's seed claim)."""
    atlas_labels: ClassVar[AtlasLabels | None] = None
    """The head atlas's labels it gives: groups, thresholds and the rule (:mod:`headscope.analyses.labels`)."""
    reads_findings: ClassVar[bool] = False
    """True when it reads the others' declared rankings and behaviours: those that run finalize first."""

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None or self.Options is None else self.Options()

    reads_pieces: bool = False
    """True when :meth:`update` is to be fed piece-level attention (an observer of the layers' maps). An
    analysis may set it in :meth:`start` when its options decide (syntax under clark conventions)."""
    reads_words: bool = False
    """True when :meth:`update_words` is to be fed word-level attention (for the examples it
    :meth:`wants_words`)."""
    intervenes: ClassVar[bool] = False
    """True when the analysis declares passes of its own (:meth:`passes`), run by the engine after the main
    pass: gates on heads, losses, gradients, inputs it builds, generation."""

    def requires(self) -> tuple[str, ...]:
        """Importable top-level modules this analysis needs with its options, beyond headscope's own
        dependencies; the run checks them (``importlib.util.find_spec``) before the model loads."""
        return ()

    def check_run(self, config: RunConfig) -> None:  # noqa: B027 (optional hook)
        """Refuse (ValueError, one line) options that do not fit the run's settings, before the model loads.

        Options are checked in one place each: a value alone in ``Options.__post_init__`` (minimums, choices,
        ranges; the options are frozen, so they stay checked), a value against the run's settings here (the
        other analyses asked for, ``--conventions``), a need of the model in ``needs``
        (:func:`~headscope.analyses.registry.check_model_needs`). Only what the loaded model alone can tell
        (its longest input, its tokenizer's special tokens) is checked in :meth:`start`."""

    def wants(self, example: Example) -> bool:
        """Whether this analysis uses ``example``; others are masked out of its updates."""
        return True

    def wants_words(self, example: Example) -> bool:
        """Whether :meth:`update_words` needs ``example`` (word-level attention is built only when some
        analysis wants it for some example of the batch)."""
        return self.reads_words

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The engine reads the flags, never which methods a class overrides: a reader without its flag is a bug.
        for method, flag in (("update", "reads_pieces"), ("update_words", "reads_words"), ("passes", "intervenes")):
            defines = any(method in c.__dict__ for c in cls.__mro__ if c is not Analysis)
            declares = any(flag in c.__dict__ for c in cls.__mro__ if c is not Analysis)
            if defines and not declares:
                raise TypeError(f"{cls.__name__} defines {method}() but does not declare {flag} (True, or set "
                                "in start)")

    # declared state

    def add_state(self, name: str, default: Any, reduce: Reduce = "sum", serializer: Serializer | None = None
                  ) -> None:
        """Declare one state attribute and set it to ``default`` (call in :meth:`start`).

        Only declared attributes are state: :meth:`merge`, :meth:`reset`, :meth:`state_dict` and
        :meth:`load_state_dict` read the declarations and nothing else.

        Parameters
        ----------
        name : str
            The attribute, ending in ``_`` (``sums_``).
        default : tensor, ndarray, number, list, or dict of these
            Its value at the start (and after :meth:`reset`). A dict is a family of states reduced key by key
            (``{"cls": zeros, "sep": zeros}``, ``{"all": 0, "pair": 0}``); keys one shard has and another has
            not are kept.
        reduce : {"sum", "max", "min", "cat", "keys"}, Keyed or callable
            How two shards' values combine in :meth:`merge` (:func:`headscope.engine.state.reduce_states`):
            elementwise sum, max or min; ``cat`` joins along the first dimension (lists: one after the other);
            ``keys`` joins a list of keys (relation labels met so far); ``Keyed(by, axis)`` sums an array whose
            ``axis`` is indexed by the keys of the state ``by``, key by key (grow it with :meth:`grow_keys`);
            a callable ``(mine, theirs) -> merged`` for anything else.
        serializer : Serializer, optional
            How a value that is not arrays and plain JSON (objects of the analysis's own) is saved and loaded
            (:class:`headscope.engine.state.Serializer`).
        """
        # (function-level: the engine package's __init__ imports the run loop, which imports the analyses)
        from headscope.engine.state import StateSpec, check_spec, clone_state

        spec = StateSpec(reduce, clone_state(default), serializer)
        check_spec(type(self).__name__, name, spec, self.states)
        self.__dict__.setdefault("_states", {})[name] = spec
        setattr(self, name, default)

    def grow_keys(self, keys_state: str, keys: Sequence[Any]) -> np.ndarray:
        """Positions of ``keys`` in the key list ``keys_state`` (declared with ``reduce="keys"``); keys not met
        before are appended (sorted) and the states keyed by it grow with zeros. Returns int64 of shape
        (len(keys),)."""
        from headscope.engine.state import grow_keys

        return grow_keys(self, keys_state, keys)

    @property
    def states(self) -> dict[str, StateSpec]:
        """The declared state attributes, by name, in the order of declaration."""
        return self.__dict__.get("_states", {})

    def reset(self) -> None:
        """Every declared state back to its default."""
        from headscope.engine.state import clone_state

        for name, spec in self.states.items():
            setattr(self, name, clone_state(spec.default))

    @abstractmethod
    def start(self, ctx: AnalysisContext) -> None:
        """Allocate the running state for the model described by ``ctx.info``."""

    def begin_batch(self, batch: Batch) -> None:  # noqa: B027 (optional hook)
        """Called before the first layer of ``batch``."""

    def update(self, batch: Batch, block: LayerAttention) -> None:  # noqa: B027
        """Add one layer (or one block of a layer's query rows) of piece-level attention (only if
        ``reads_pieces``).

        ``block.weights`` has shape [batch, head, query, key] and is dropped after this call: copy whatever
        must outlive it.
        """

    def update_words(self, batch: Batch, layer: int, words: torch.Tensor) -> None:  # noqa: B027
        """Add one layer of word-level attention, shape [batch, head, unit, unit] (only if ``reads_words``)."""

    def end_batch(self, batch: Batch) -> None:  # noqa: B027
        """Called after the last layer of ``batch``."""

    def passes(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> Iterator[Pass]:
        """The passes this intervention needs, in order (a generator: it may read its state between yields).

        ``ctx.examples`` is what the main pass counted; ``results`` holds the results of ``after``.
        """
        raise NotImplementedError(f"{type(self).__name__} declares intervenes but no passes()")

    def planned_forwards(self, ctx: AnalysisContext, sequences: int) -> int:
        """Roughly how many forwards of one corpus sequence this analysis's own passes will run, after a main
        pass of ``sequences`` (a backward counts as two forwards), said before the run starts (``--analyses
        all``); 0 for an analysis that only reads the main pass. An upper bound where the count depends on
        results (clusters, ...)."""
        return 0

    def update_pass(self, batch: Batch, forward: Forward | Generate, out: ForwardOutput) -> None:  # noqa: B027
        """Add what ``forward`` gave on ``batch`` (a pass's forwards come in the order declared)."""

    def update_pass_attention(self, batch: Batch, forward: Forward | Generate,  # noqa: B027 (optional hook)
                              block: LayerAttention) -> None:
        """Add one attention block of an :class:`~headscope.engine.forwards.Observe` forward (the shape of
        :meth:`update`'s)."""

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The declared states (:meth:`add_state`) as (numpy arrays by name, JSON-able dict): checkpoints and
        distributed merges (:func:`headscope.engine.state.save_states`)."""
        from headscope.engine.state import save_states

        return save_states(self)

    def load_state_dict(self, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` into this analysis, already started on the same model."""
        from headscope.engine.state import load_states

        load_states(self, arrays, meta)

    def merge(self: _A, other: Analysis) -> _A:
        """Add the state of ``other`` (same kind, same model) into this one and return self: every declared
        state combined by its reduction (:func:`headscope.engine.state.reduce_states`)."""
        from headscope.engine.state import reduce_states

        if type(other) is not type(self):
            raise TypeError(f"cannot merge a {type(other).__name__} into a {type(self).__name__}")
        if not self.states:
            raise NotImplementedError(f"{type(self).__name__} declares no state (add_state)")
        values = reduce_states(self.states, {name: getattr(self, name) for name in self.states},
                               {name: getattr(other, name) for name in self.states}, self.name)
        for name, value in values.items():
            setattr(self, name, value)
        return self

    @abstractmethod
    def finalize(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        """Turn the running state into tables."""


def head_name(layer: int, head: int) -> str:
    """A head as written everywhere in headscope's outputs: ``L{layer}H{head}``, 0-based."""
    return f"L{int(layer)}H{int(head)}"


def head_frame(values: dict[str, Any], n_layers: int, n_heads: int) -> pd.DataFrame:
    """A per-head table from arrays of shape (n_layers, n_heads), with 0-based ``layer`` and ``head``."""
    layer, head = torch.meshgrid(torch.arange(n_layers), torch.arange(n_heads), indexing="ij")
    data: dict[str, Any] = {"layer": layer.reshape(-1).numpy(), "head": head.reshape(-1).numpy()}
    for key, arr in values.items():
        data[key] = torch.as_tensor(arr).reshape(-1).cpu().numpy()
    return pd.DataFrame(data)
