"""Checkpoints of the main pass: accumulator states and the corpus position, written atomically.

``OUT/checkpoint/`` holds two files:

- ``state.npz``: every analysis's state (:mod:`headscope.engine.state`, no pickle);
- ``checkpoint.json``: the format version, the *fingerprint* of the run (model, configuration, analysis
  options, and the sha256 of every input file), the batches already counted (batch numbers of the run's
  deterministic batch order), the running counts, and the sha256 of ``state.npz``.

``state.npz`` is written first under a temporary name and renamed, then ``checkpoint.json`` the same way, so
a crash at any point leaves the previous checkpoint or the new one, never a mix: a ``checkpoint.json``
whose ``state.npz`` hash does not match is refused as damaged. A resumed run streams the corpus again in the
same order (reading is cheap and rebuilds the manifest exactly), skips the model for the batches already
counted, and so gives the same files as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headscope.engine.results import atomic_path
from headscope.engine.state import StateError, pack, unpack

if TYPE_CHECKING:
    from headscope.analyses.base import Analysis
    from headscope.config import RunConfig
    from headscope.manifest import Manifest
    from headscope.model.load import ModelInfo

CHECKPOINT_VERSION = 1
DIRECTORY = "checkpoint"

#: Settings that change neither the batches nor the numbers, so a run may resume with other values.
FREE_SETTINGS = frozenset({"out", "quiet", "report", "resume", "overwrite", "checkpoint_every", "device",
                           "engine", "ray_address", "workers", "gpus_per_worker", "atlas_thresholds"})


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged, or from another run (the message says what differs)."""


@dataclass
class Progress:
    """Where the main pass is: the batches counted and the running totals."""

    done: set[int] = field(default_factory=set)
    """Batch numbers already counted."""
    used: dict[str, int] = field(default_factory=dict)
    """Examples used so far, per analysis."""
    segments: list[dict[str, Any]] = field(default_factory=list)
    """One entry per process that worked on the pass: when it started, batches it counted, seconds."""

    def to_json(self) -> dict[str, Any]:
        return {"done": sorted(self.done), "used": self.used, "segments": self.segments}


def fingerprint(config: RunConfig, info: ModelInfo, analyses: list[Analysis], manifest: Manifest
                ) -> dict[str, Any]:
    """What must be equal for a checkpoint to belong to this run."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in FREE_SETTINGS}
    model = {"name": info.name, "path": info.path, "revision": info.revision, "n_layers": info.n_layers,
             "n_heads": info.n_heads}
    memory = getattr(info, "memory", None)
    if memory:
        # A model handed over in memory has no name to reload it by: its weights say whether it is the same.
        model["weights_fingerprint"] = memory.get("weights_fingerprint")
    return {
        "model": model,
        "config": settings,
        "analysis_options": {a.name: dataclasses.asdict(a.options) if a.options is not None else None
                             for a in analyses},
        "files": [{"path": f["path"], "role": f["role"], "sha256": f.get("sha256"),
                   **({"fingerprint": f["fingerprint"]} if f.get("fingerprint") else {})} for f in manifest.files],
    }


def differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two fingerprints."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        where = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(differences(a, b, where + "."))
        elif a != b:
            out.append(f"{where}: checkpoint {a!r}, this run {b!r}")
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())  # on disk before the rename that makes it the checkpoint


def save(out: str | Path, fp: dict[str, Any], progress: Progress, analyses: list[Analysis]) -> Path:
    """Write the checkpoint of the main pass into ``out/checkpoint/`` (atomically); returns that folder."""
    folder = Path(out) / DIRECTORY
    folder.mkdir(parents=True, exist_ok=True)
    data = pack({a.name: a.state_dict() for a in analyses})
    _atomic_write(folder / "state.npz", data)
    record = {"version": CHECKPOINT_VERSION, "fingerprint": fp, "progress": progress.to_json(),
              "state_sha256": _sha256(data)}
    _atomic_write(folder / "checkpoint.json", (json.dumps(record, indent=1) + "\n").encode("utf-8"))
    return folder


def read(out: str | Path) -> tuple[dict[str, Any], Progress, dict[str, Any]]:
    """The fingerprint, progress and states of ``out/checkpoint/``; clear errors for anything amiss."""
    folder = Path(out) / DIRECTORY
    meta_path, state_path = folder / "checkpoint.json", folder / "state.npz"
    if not meta_path.is_file() and (Path(out) / "run.json").is_file():
        report = Path(out) / "report" / "index.html"
        raise CheckpointError(f"{out}: the run is complete, nothing to resume: its results are in {out} "
                              f"(run.json, heads.csv{', ' + str(report) if report.is_file() else ''}); to run "
                              "it again, use another --out or --overwrite")
    if not meta_path.is_file():
        raise CheckpointError(f"{out}: no checkpoint to resume from ({meta_path} does not exist)")
    try:
        record = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: damaged checkpoint ({exc})") from exc
    if not isinstance(record, dict) or record.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{meta_path}: not a headscope checkpoint of version {CHECKPOINT_VERSION}")
    try:
        data = state_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{state_path}: cannot be read ({exc})") from exc
    if _sha256(data) != record.get("state_sha256"):
        raise CheckpointError(f"{state_path}: does not match {meta_path.name} (truncated or modified); "
                              "delete the checkpoint folder and run again")
    try:
        states, _ = unpack(data)
        progress = Progress(done={int(k) for k in record["progress"]["done"]},
                            used={str(k): int(v) for k, v in record["progress"]["used"].items()},
                            segments=list(record["progress"].get("segments", [])))
    except (StateError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{folder}: damaged checkpoint ({exc})") from exc
    return record["fingerprint"], progress, states


def restore(analyses: list[Analysis], states: dict[str, Any]) -> None:
    """Load saved states into started analyses."""
    missing = [a.name for a in analyses if a.name not in states]
    if missing:
        raise CheckpointError(f"the checkpoint has no state for {', '.join(missing)}")
    for analysis in analyses:
        arrays, meta = states[analysis.name]
        try:
            analysis.load_state_dict(arrays, meta)
        except (StateError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint state of {analysis.name!r} cannot be loaded: {exc}") from exc


def remove(out: str | Path) -> None:
    """Delete ``out/checkpoint/`` once the run has written its results."""
    folder = Path(out) / DIRECTORY
    for name in ("state.npz", "checkpoint.json"):
        (folder / name).unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
