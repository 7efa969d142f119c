"""Accumulator states as plain arrays plus JSON: the unit of checkpoints and of distributed merging.

Format (version :data:`STATE_VERSION`): an analysis's state is ``(arrays, meta)`` where ``arrays`` maps
names to numpy arrays (numbers only: no object arrays) and ``meta`` is JSON. By default every attribute
whose name ends in ``_`` (the fitted state, scikit-learn style) is saved: tensors and numpy arrays as
arrays named after the attribute (``sums_.cls`` for a dict of tensors), numbers, strings, booleans, None
and lists/tuples of them in ``meta``. An analysis whose state holds other objects defines
``state_dict()``/``load_state_dict()`` itself. Nothing is pickled, so a state from someone else is safe to
load: at worst it is refused.

On disk (:func:`pack` / :func:`unpack`) a set of states is one ``.npz`` (``allow_pickle=False``) holding the
arrays under ``{analysis}/{name}`` and the JSON under ``__meta__`` as UTF-8 bytes.
"""

from __future__ import annotations

import io
import json
from typing import Any, Protocol

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


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def generic_state(analysis: Named, skip: tuple[str, ...] = ()) -> tuple[Arrays, dict[str, Any]]:
    """The ``_`` attributes of ``analysis`` (but ``skip``) as arrays and JSON (see the module docstring)."""
    arrays: Arrays = {}
    meta: dict[str, Any] = {}
    for name, value in vars(analysis).items():
        if not name.endswith("_") or name.startswith("_") or name in skip:
            continue
        if isinstance(value, torch.device):
            continue  # where the state lives is set again by start() on the loading side
        if isinstance(value, torch.Tensor):
            arrays[name] = value.detach().cpu().numpy()
        elif isinstance(value, np.ndarray):
            arrays[name] = value
        elif isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
            for key, tensor in value.items():
                arrays[f"{name}.{key}"] = tensor.detach().cpu().numpy()
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
