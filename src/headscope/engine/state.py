"""Accumulator states as plain arrays plus JSON: the unit of checkpoints and of distributed merging.

Format (version :data:`STATE_VERSION`): an analysis's state is ``(arrays, meta)`` where ``arrays`` maps
names to numpy arrays (numbers only: no object arrays) and ``meta`` is JSON. By default every declared
attribute (every attribute whose name ends in ``_``, the fitted state, scikit-learn style, when none is
declared) is saved: tensors and numpy arrays as arrays named after the attribute (``sums_.cls`` for a dict
of them), numbers, strings, booleans, None and lists/tuples/dicts of them in ``meta``. An analysis whose
state holds other objects defines ``state_dict()``/``load_state_dict()`` itself. Nothing is pickled, so a
state from someone else is safe to load: at worst it is refused.

On disk (:func:`pack` / :func:`unpack`) a set of states is one ``.npz`` (``allow_pickle=False``) holding the
arrays under ``{analysis}/{name}`` and the JSON under ``__meta__`` as UTF-8 bytes.

Declared state (:class:`StateSpec`, in the manner of torchmetrics' ``Metric.add_state``): an analysis declares
each state attribute once, with its default and its reduction, and its merge, reset and checkpoint follow from
the declarations (:func:`reduce_state`, :func:`clone_state`; :meth:`headscope.analyses.base.Analysis.add_state`).
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch

STATE_VERSION = 1

Arrays = dict[str, np.ndarray]


class Named(Protocol):
    """What the generic state needs of an analysis (a Protocol: analyses are a layer above the engine core)."""

    @property
    def name(self) -> str: ...


class StateError(ValueError):
    """A state that cannot be saved or loaded (unknown type, wrong shape, damaged file)."""


_PLAIN = (int, float, str, bool, type(None))

ReduceName = Literal["sum", "max", "min", "cat"]
#: How two values of a declared state combine into one (:func:`reduce_state`): a name, a callable
#: ``(mine, theirs) -> merged``, or None when the analysis's own ``merge`` combines it.
Reduce = ReduceName | Callable[[Any, Any], Any] | None
REDUCTIONS: tuple[str, ...] = ("sum", "max", "min", "cat")


@dataclass
class StateSpec:
    """One declared state attribute: its reduction and a copy of its default (what ``reset`` restores)."""

    reduce: Reduce
    default: Any


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


#: The named reductions of tensors and arrays (the other side already on this side's device and dtype).
_ARRAY_REDUCTIONS: dict[str, dict[str, Callable[[Any, Any], Any]]] = {
    "torch": {"sum": torch.add, "max": torch.maximum, "min": torch.minimum,
              "cat": lambda a, b: torch.cat([a, b])},
    "numpy": {"sum": np.add, "max": np.maximum, "min": np.minimum,
              "cat": lambda a, b: np.concatenate([a, b])},
}


def _combine(reduce: str, mine: Any, theirs: Any, where: str) -> Any:
    if isinstance(mine, dict) and isinstance(theirs, dict):
        # Per key; a key only one side has (a relation, a role seen by one shard) is taken as it is.
        out = dict(mine)
        for key, value in theirs.items():
            out[key] = _combine(reduce, mine[key], value, f"{where}.{key}") if key in mine else clone_state(value)
        return out
    if isinstance(mine, torch.Tensor):
        return _ARRAY_REDUCTIONS["torch"][reduce](mine, torch.as_tensor(theirs).to(device=mine.device,
                                                                                    dtype=mine.dtype))
    if isinstance(mine, np.ndarray):
        return _ARRAY_REDUCTIONS["numpy"][reduce](mine, np.asarray(theirs, dtype=mine.dtype))
    if isinstance(mine, list) and reduce == "cat":
        return [*mine, *theirs]
    if isinstance(mine, tuple) and reduce == "cat":
        return (*mine, *theirs)
    if isinstance(mine, (int, float, np.generic)) and not isinstance(mine, bool) and reduce != "cat":
        if reduce == "sum":
            return mine + theirs
        return max(mine, theirs) if reduce == "max" else min(mine, theirs)
    raise StateError(f"state {where}: cannot reduce a {type(mine).__name__} with {reduce!r}")


def reduce_state(reduce: Reduce, mine: Any, theirs: Any, where: str = "state") -> Any:
    """``mine`` and ``theirs`` (two shards' values of one declared state) combined by ``reduce``.

    ``sum``, ``max``, ``min``: elementwise on tensors (``theirs`` moved to ``mine``'s device and dtype) and
    numpy arrays, and on numbers; ``cat``: tensors and arrays concatenated along their first dimension, lists
    and tuples joined. A dict is reduced key by key (a key only one side has is taken as it is); a callable
    is called as ``reduce(mine, theirs)``.
    """
    if reduce is None:
        raise StateError(f"state {where} is merged by its analysis's own merge()")
    if callable(reduce):
        return reduce(mine, theirs)
    return _combine(reduce, mine, theirs, where)


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def generic_state(analysis: Named, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None
                  ) -> tuple[Arrays, dict[str, Any]]:
    """The ``_`` attributes of ``analysis`` (those in ``only`` when given; but ``skip``) as arrays and JSON
    (see the module docstring)."""
    arrays: Arrays = {}
    meta: dict[str, Any] = {}
    values = vars(analysis) if only is None else {name: getattr(analysis, name) for name in only}
    for name, value in values.items():
        if not name.endswith("_") or name.startswith("_") or name in skip:
            continue
        if isinstance(value, torch.device):
            continue  # where the state lives is set again by start() on the loading side
        if isinstance(value, torch.Tensor):
            arrays[name] = value.detach().cpu().numpy()
        elif isinstance(value, np.ndarray):
            arrays[name] = value
        elif isinstance(value, dict) and value and all(isinstance(v, (torch.Tensor, np.ndarray))
                                                       for v in value.values()):
            for key, tensor in value.items():
                arrays[f"{name}.{key}"] = tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else tensor
            meta[name] = {"__tensors__": list(value)}
        elif isinstance(value, np.generic):
            meta[name] = value.item()
        elif _plain(value):
            meta[name] = {"__tuple__": list(value)} if isinstance(value, tuple) else value
        else:
            raise StateError(f"analysis {analysis.name!r}: state {name} of type {type(value).__name__} cannot be "
                             "saved as arrays + JSON; define state_dict()/load_state_dict() for it")
    return arrays, meta


def load_generic_state(analysis: Named, arrays: Arrays, meta: dict[str, Any]) -> None:
    """Put a :func:`generic_state` back into a started ``analysis`` (tensors keep their device and dtype)."""

    def tensor_like(current: object, array: np.ndarray, where: str) -> torch.Tensor | np.ndarray:
        if array.dtype == object:
            raise StateError(f"{where}: object arrays are not accepted")
        if isinstance(current, torch.Tensor):
            # Sizes may grow with the corpus (relations seen so far), the number of dimensions may not.
            if current.dim() != array.ndim or (current.dim() and current.shape[1:] != array.shape[1:]
                                               and current.shape[-2:] != array.shape[-2:]):
                raise StateError(f"{where}: shape {array.shape} does not fit {tuple(current.shape)}")
            return torch.from_numpy(np.array(array)).to(device=current.device, dtype=current.dtype)
        return np.array(array)

    for name, value in meta.items():
        current = getattr(analysis, name, None)
        if isinstance(value, dict) and "__tensors__" in value:
            setattr(analysis, name, {key: tensor_like((current or {}).get(key), arrays[f"{name}.{key}"],
                                                      f"{analysis.name}.{name}.{key}") for key in value["__tensors__"]})
        elif isinstance(value, dict) and "__tuple__" in value:
            setattr(analysis, name, tuple(value["__tuple__"]))
        else:
            setattr(analysis, name, value)
    for name, array in arrays.items():
        if "." in name:
            continue
        setattr(analysis, name, tensor_like(getattr(analysis, name, None), array, f"{analysis.name}.{name}"))


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
