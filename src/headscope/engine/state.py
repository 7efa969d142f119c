"""Accumulator states as plain arrays plus JSON: the unit of checkpoints and of distributed merging.

Declared state (:class:`StateSpec`, in the manner of torchmetrics' ``Metric.add_state``): an analysis declares
each state attribute once, with its default, its reduction and, for a value that is not made of arrays and
plain JSON, its :class:`Serializer`; its merge, reset and checkpoint follow from the declarations
(:func:`reduce_states`, :func:`clone_state`, :func:`save_states`, :func:`load_states`;
:meth:`headscope.analyses.base.Analysis.add_state`). Only declared attributes are state: nothing else of an
analysis is saved, merged or loaded.

Format (version :data:`STATE_VERSION`): an analysis's state is ``(arrays, meta)`` where ``arrays`` maps
names to numpy arrays (numbers only: no object arrays) and ``meta`` is JSON. A tensor or numpy array is the
array named after its attribute (``sums_``), a dict of them the arrays ``sums_.cls``, ...; numbers, strings,
booleans, None and lists/tuples/dicts of them go to ``meta``; a state with a serializer writes the arrays
``{name}.{key}`` and ``meta[name] = {"__serialized__": ...}``. Nothing is pickled, so a state from someone
else is safe to load: at worst it is refused.

On disk (:func:`pack` / :func:`unpack`) a set of states is one ``.npz`` (``allow_pickle=False``) holding the
arrays under ``{analysis}/{name}`` and the JSON under ``__meta__`` as UTF-8 bytes.

Keyed state: arrays indexed along one axis by keys met during the run (relation labels, in the order each
shard first met them) are declared with ``reduce=Keyed(by="relations_", axis=2)`` beside the key list,
declared with ``reduce="keys"``. Two shards merge by key, not by position (:func:`reduce_states`): the other
shard's keys unknown here are appended (sorted), the arrays grown with zeros, and the other shard's slices
added at the positions of the same keys. :func:`grow_keys` gives a key's position while accumulating,
growing the arrays for keys not met before.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch

#: 2: only declared attributes are state; examples' and probe's states saved by declared serializers.
STATE_VERSION = 2

Arrays = dict[str, np.ndarray]


class StateError(ValueError):
    """A state that cannot be saved or loaded (unknown type, wrong shape, damaged file)."""


_PLAIN = (int, float, str, bool, type(None))

ReduceName = Literal["sum", "max", "min", "cat", "keys"]
REDUCTIONS: tuple[str, ...] = ("sum", "max", "min", "cat", "keys")


@dataclass(frozen=True)
class Keyed:
    """The reduction of an array indexed by keys along ``axis``: summed key by key (see the module docstring).

    Parameters
    ----------
    by : str
        The state holding the keys (a list declared with ``reduce="keys"``, declared before this one).
    axis : int
        The array's axis that the keys index; its length is the number of keys.
    """

    by: str
    axis: int


#: How two values of a declared state combine into one (:func:`reduce_state`): a name, a :class:`Keyed`, or a
#: callable ``(mine, theirs) -> merged``.
Reduce = ReduceName | Keyed | Callable[[Any, Any], Any]


@dataclass(frozen=True)
class Serializer:
    """How a state that is not arrays and plain JSON is saved and loaded (``add_state(..., serializer=...)``).

    Attributes
    ----------
    save : callable ``value -> (arrays, meta)``
        The value as numpy arrays by name (numbers only) and JSON.
    load : callable ``(arrays, meta, current) -> value``
        The inverse; ``current`` is the value of the started analysis (its default), for what the saved form
        does not repeat (sizes, buffers to fill).
    """

    save: Callable[[Any], tuple[Arrays, Any]]
    load: Callable[[Arrays, Any, Any], Any]


@dataclass
class StateSpec:
    """One declared state attribute: its reduction, a copy of its default (what ``reset`` restores) and its
    serializer (None: saved as arrays and JSON by type)."""

    reduce: Reduce
    default: Any
    serializer: Serializer | None = None


class Stateful(Protocol):
    """What the generic state needs of an analysis (a Protocol: analyses are a layer above the engine core)."""

    @property
    def name(self) -> str: ...

    @property
    def states(self) -> dict[str, StateSpec]: ...


def clone_state(value: Any) -> Any:
    """An independent copy of a state value: tensors cloned (same device and dtype), containers copied deeply."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {k: clone_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(clone_state(v) for v in value)
    return copy.deepcopy(value)


def check_spec(owner: str, name: str, spec: StateSpec, declared: Mapping[str, StateSpec]) -> None:
    """Refuse a declaration whose name, reduction or keys are not what :class:`StateSpec` allows.

    ``declared``: the states declared before this one (a :class:`Keyed` state names one of them).
    """
    if not name.endswith("_") or name.startswith("_"):
        raise StateError(f"{owner}: state {name!r} must end in '_' (and not start with it)")
    reduce = spec.reduce
    if isinstance(reduce, str) and reduce not in REDUCTIONS:
        raise StateError(f"{owner}: unknown reduction {reduce!r} for {name}")
    if not isinstance(reduce, (str, Keyed)) and not callable(reduce):
        raise StateError(f"{owner}: the reduction of {name} must be one of {', '.join(REDUCTIONS)}, a Keyed or a "
                         f"callable, got {reduce!r}")
    if reduce == "keys" and not isinstance(spec.default, list):
        raise StateError(f"{owner}: state {name} (reduce='keys') must be a list of keys")
    if isinstance(reduce, Keyed):
        keys = declared.get(reduce.by)
        if keys is None or keys.reduce != "keys":
            raise StateError(f"{owner}: state {name} is keyed by {reduce.by!r}, which is not a state declared "
                             "before it with reduce='keys'")
        if not isinstance(spec.default, (torch.Tensor, np.ndarray)) or not 0 <= reduce.axis < spec.default.ndim:
            raise StateError(f"{owner}: keyed state {name} must be a tensor or array with an axis {reduce.axis}")


#: The named reductions of tensors and arrays (the other side already on this side's device and dtype).
_ARRAY_REDUCTIONS: dict[str, dict[str, Callable[[Any, Any], Any]]] = {
    "torch": {"sum": torch.add, "max": torch.maximum, "min": torch.minimum,
              "cat": lambda a, b: torch.cat([a, b])},
    "numpy": {"sum": np.add, "max": np.maximum, "min": np.minimum,
              "cat": lambda a, b: np.concatenate([a, b])},
}


def _combine(reduce: str, mine: Any, theirs: Any, where: str) -> Any:
    if reduce == "keys" and isinstance(mine, list):
        merged = list(mine)
        key_positions(merged, theirs)
        return merged
    if isinstance(mine, dict) and isinstance(theirs, dict):
        # Per key; a key only one side has (a relation, a role seen by one shard) is taken as it is.
        out = dict(mine)
        for key, value in theirs.items():
            out[key] = _combine(reduce, mine[key], value, f"{where}.{key}") if key in mine else clone_state(value)
        return out
    if reduce in _ARRAY_REDUCTIONS["torch"] and isinstance(mine, torch.Tensor):
        return _ARRAY_REDUCTIONS["torch"][reduce](mine, torch.as_tensor(theirs).to(device=mine.device,
                                                                                    dtype=mine.dtype))
    if reduce in _ARRAY_REDUCTIONS["numpy"] and isinstance(mine, np.ndarray):
        return _ARRAY_REDUCTIONS["numpy"][reduce](mine, np.asarray(theirs, dtype=mine.dtype))
    if isinstance(mine, list) and reduce == "cat":
        return [*mine, *theirs]
    if isinstance(mine, tuple) and reduce == "cat":
        return (*mine, *theirs)
    if (isinstance(mine, (int, float, np.generic)) and not isinstance(mine, bool)
            and reduce in ("sum", "max", "min")):
        if reduce == "sum":
            return mine + theirs
        return max(mine, theirs) if reduce == "max" else min(mine, theirs)
    raise StateError(f"state {where}: cannot reduce a {type(mine).__name__} with {reduce!r}")


def reduce_state(reduce: Reduce, mine: Any, theirs: Any, where: str = "state") -> Any:
    """``mine`` and ``theirs`` (two shards' values of one declared state) combined by ``reduce``.

    ``sum``, ``max``, ``min``: elementwise on tensors (``theirs`` moved to ``mine``'s device and dtype) and
    numpy arrays, and on numbers; ``cat``: tensors and arrays concatenated along their first dimension, lists
    and tuples joined; ``keys``: a list of keys joined with the other's keys it lacks (appended, sorted). A
    dict is reduced key by key (a key only one side has is taken as it is); a callable is called as
    ``reduce(mine, theirs)``. A :class:`Keyed` state needs its keys: :func:`reduce_states` combines it.
    """
    if isinstance(reduce, Keyed):
        raise StateError(f"state {where} is keyed by {reduce.by}: merged with it by reduce_states")
    if callable(reduce):
        return reduce(mine, theirs)
    return _combine(reduce, mine, theirs, where)


def key_positions(keys: list[Any], wanted: Sequence[Any]) -> np.ndarray:
    """Positions of ``wanted`` in ``keys``, after appending to ``keys`` (in place, sorted) the ones it lacks.

    Returns
    -------
    ndarray of shape (len(wanted),), int64
    """
    known = {k: i for i, k in enumerate(keys)}
    new = sorted({k for k in wanted if k not in known})
    for key in new:
        known[key] = len(keys)
        keys.append(key)
    return np.asarray([known[k] for k in wanted], dtype=np.int64)


def grow_axis(value: Any, axis: int, size: int) -> Any:
    """``value`` (tensor or array) padded with zeros along ``axis`` to ``size`` (itself when long enough)."""
    missing = size - int(value.shape[axis])
    if missing <= 0:
        return value
    shape = list(value.shape)
    shape[axis] = missing
    if isinstance(value, torch.Tensor):
        return torch.cat([value, value.new_zeros(shape)], dim=axis)
    return np.concatenate([value, np.zeros(shape, dtype=value.dtype)], axis=axis)


def _add_at(mine: Any, ids: np.ndarray, theirs: Any, axis: int) -> Any:
    """``mine`` with ``theirs``'s slices along ``axis`` added at positions ``ids`` (in place)."""
    if isinstance(mine, torch.Tensor):
        return mine.index_add_(axis, torch.from_numpy(ids).to(mine.device),
                               torch.as_tensor(theirs).to(device=mine.device, dtype=mine.dtype))
    # numpy's stubs do not accept a tuple of (slice, array) as the indices of ufunc.at, which numpy does.
    np.add.at(mine, (*(slice(None),) * axis, ids), np.asarray(theirs, dtype=mine.dtype))  # type: ignore[arg-type]
    return mine


def grow_keys(owner: Any, keys_state: str, wanted: Sequence[Any]) -> np.ndarray:
    """Positions of ``wanted`` in ``owner``'s key list ``keys_state``; keys it lacks are appended (sorted) and
    every state keyed by it (:class:`Keyed`) grows with zeros to match.

    ``owner``: an analysis (:class:`Stateful`). Returns an int64 ndarray of shape (len(wanted),).
    """
    keys = getattr(owner, keys_state)
    before = len(keys)
    ids = key_positions(keys, wanted)
    if len(keys) > before:
        for name, spec in owner.states.items():
            if isinstance(spec.reduce, Keyed) and spec.reduce.by == keys_state:
                setattr(owner, name, grow_axis(getattr(owner, name), spec.reduce.axis, len(keys)))
    return ids


def reduce_states(specs: Mapping[str, StateSpec], mine: Mapping[str, Any], theirs: Mapping[str, Any],
                  where: str = "state") -> dict[str, Any]:
    """Every declared state of two shards combined by its reduction (``mine``'s arrays may be updated in place).

    Key lists (``keys``) are joined first; a :class:`Keyed` array is then grown to the joined keys and the
    other's slices are added at the positions of their keys here, so the result does not depend on the order
    in which either shard met its keys.
    """
    out: dict[str, Any] = {}
    positions: dict[str, np.ndarray] = {}
    for name, spec in specs.items():
        if spec.reduce == "keys":
            out[name] = list(mine[name])
            positions[name] = key_positions(out[name], theirs[name])
    for name, spec in specs.items():
        reduce = spec.reduce
        if name in out:
            continue
        if isinstance(reduce, Keyed):
            grown = grow_axis(mine[name], reduce.axis, len(out[reduce.by]))
            out[name] = _add_at(grown, positions[reduce.by], theirs[name], reduce.axis)
        else:
            out[name] = reduce_state(reduce, mine[name], theirs[name], f"{where}.{name}")
    return out


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _as_array(value: torch.Tensor | np.ndarray) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def save_states(owner: Stateful) -> tuple[Arrays, dict[str, Any]]:
    """The declared states of ``owner`` as arrays and JSON (see the module docstring)."""
    arrays: Arrays = {}
    meta: dict[str, Any] = {}
    for name, spec in owner.states.items():
        value = getattr(owner, name)
        if spec.serializer is not None:
            saved, saved_meta = spec.serializer.save(value)
            arrays.update({f"{name}.{key}": array for key, array in saved.items()})
            meta[name] = {"__serialized__": saved_meta}
        elif isinstance(value, (torch.Tensor, np.ndarray)):
            arrays[name] = _as_array(value)
        elif isinstance(value, dict) and value and all(isinstance(v, (torch.Tensor, np.ndarray))
                                                       for v in value.values()):
            arrays.update({f"{name}.{key}": _as_array(tensor) for key, tensor in value.items()})
            meta[name] = {"__tensors__": list(value)}
        elif isinstance(value, np.generic):
            meta[name] = value.item()
        elif _plain(value):
            meta[name] = {"__tuple__": list(value)} if isinstance(value, tuple) else value
        else:
            raise StateError(f"analysis {owner.name!r}: state {name} of type {type(value).__name__} cannot be "
                             "saved as arrays + JSON; declare a serializer for it (add_state(..., serializer=))")
    return arrays, meta


def _like(current: object, array: np.ndarray, where: str, keyed_axis: int | None = None
          ) -> torch.Tensor | np.ndarray:
    """``array`` as the kind of ``current`` (a tensor keeps its device and dtype).

    A keyed state's sizes must match but along ``keyed_axis`` (keys met so far); another tensor's number of
    dimensions must match, and its sizes but the first (rows gathered) or but the last two.
    """
    if array.dtype == object:
        raise StateError(f"{where}: object arrays are not accepted")
    if isinstance(current, (torch.Tensor, np.ndarray)):
        shape, saved = tuple(current.shape), tuple(array.shape)
        if keyed_axis is not None:
            fits = len(shape) == len(saved) and all(a == b for k, (a, b) in enumerate(zip(shape, saved, strict=True))
                                                    if k != keyed_axis)
        elif isinstance(current, torch.Tensor):
            fits = len(shape) == len(saved) and (not shape or shape[1:] == saved[1:] or shape[-2:] == saved[-2:])
        else:
            fits = True  # a numpy state is taken as saved (its size may follow the corpus)
        if not fits:
            raise StateError(f"{where}: shape {saved} does not fit {shape}")
    if isinstance(current, torch.Tensor):
        return torch.from_numpy(np.array(array)).to(device=current.device, dtype=current.dtype)
    return np.array(array)


def load_states(owner: Stateful, arrays: Arrays, meta: dict[str, Any]) -> None:
    """Put a :func:`save_states` back into a started ``owner`` (tensors keep their device and dtype).

    Refuses a state ``owner`` does not declare, and a declared state the saved one lacks.
    """
    specs = owner.states
    saved = set(meta) | {key.partition(".")[0] for key in arrays}
    if saved != set(specs):
        unknown, missing = sorted(saved - set(specs)), sorted(set(specs) - saved)
        raise StateError(f"analysis {owner.name!r}: the saved state does not match the declared one"
                         + (f"; not declared: {', '.join(unknown)}" if unknown else "")
                         + (f"; missing: {', '.join(missing)}" if missing else ""))
    for name, spec in specs.items():
        where = f"{owner.name}.{name}"
        value = meta.get(name)
        parts = {key.partition(".")[2]: array for key, array in arrays.items() if key.startswith(name + ".")}
        if spec.serializer is not None:
            if not isinstance(value, dict) or "__serialized__" not in value:
                raise StateError(f"{where}: saved without its serializer")
            setattr(owner, name, spec.serializer.load(parts, value["__serialized__"], getattr(owner, name)))
        elif name in arrays:
            keyed = spec.reduce.axis if isinstance(spec.reduce, Keyed) else None
            setattr(owner, name, _like(getattr(owner, name), arrays[name], where, keyed))
        elif isinstance(value, dict) and "__tensors__" in value:
            current = getattr(owner, name) or {}
            setattr(owner, name, {key: _like(current.get(key), parts[key], f"{where}.{key}")
                                  for key in value["__tensors__"]})
        elif isinstance(value, dict) and "__tuple__" in value:
            setattr(owner, name, tuple(value["__tuple__"]))
        else:
            setattr(owner, name, value)


def pack(states: dict[str, tuple[Arrays, dict[str, Any]]], extra: dict[str, Any] | None = None) -> bytes:
    """Several analyses' states (by name) as the bytes of one ``.npz``."""
    flat: Arrays = {}
    meta: dict[str, Any] = {"version": STATE_VERSION, "analyses": {}, **(extra or {})}
    for name, (arrays, analysis_meta) in states.items():
        meta["analyses"][name] = {"meta": analysis_meta, "arrays": sorted(arrays)}
        for key, array in arrays.items():
            if array.dtype == object:
                raise StateError(f"{name}.{key}: object arrays cannot be saved")
            flat[f"{name}/{key}"] = array
    flat["__meta__"] = np.frombuffer(json.dumps(meta, allow_nan=True).encode("utf-8"), dtype=np.uint8)
    buffer = io.BytesIO()
    # numpy's stubs let the arrays' **kwds collide with the ``allow_pickle: bool`` keyword.
    np.savez(buffer, **flat)  # type: ignore[arg-type]
    return buffer.getvalue()


def unpack(data: bytes) -> tuple[dict[str, tuple[Arrays, dict[str, Any]]], dict[str, Any]]:
    """The states and the extra JSON of :func:`pack`'s bytes; refuses anything else with a clear error."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            flat = {key: npz[key] for key in npz.files}
        meta = json.loads(bytes(flat.pop("__meta__")).decode("utf-8"))
    except Exception as exc:  # any damage to the bytes ends here
        raise StateError(f"not a headscope state file, or a damaged one ({type(exc).__name__}: {exc})") from exc
    if meta.get("version") != STATE_VERSION:
        raise StateError(f"state format version {meta.get('version')!r}; this headscope reads {STATE_VERSION}")
    states = {}
    for name, entry in meta.pop("analyses").items():
        arrays = {key: flat[f"{name}/{key}"] for key in entry["arrays"]}
        states[name] = (arrays, entry["meta"])
    return states, meta
