"""A dequantized GGUF model kept as safetensors, so that only the first load of a GGUF file pays for it.

transformers dequantizes a GGUF checkpoint to float32 on every load (about 20 s for SmolLM2-135M on a laptop
CPU). The first float32 load of a local GGUF file saves the dequantized model, its config and its tokenizer
(converted from the GGUF) under ``$HEADSCOPE_CACHE/models/<sha256 of the file>/`` (by default
``~/.cache/headscope/models/``); later loads read that folder in a second or two.

- The key is the sha256 of the file's bytes, so an edited or replaced file never meets an old entry. Hashing a
  large file takes a while, so the hash is remembered per file (``hashes.json``: resolved path, size and
  modification time in nanoseconds); any change to those hashes the file again.
- An entry is written into a temporary folder beside it and renamed into place, so a half-written entry never
  exists; one whose ``entry.json`` does not name the file's hash is ignored.
- ``--no-cache-model`` (``RunConfig.cache_model = False``) neither reads nor writes the cache.
- What happened is recorded in ``run.json`` (``model.cache``: ``status`` used, created, off or unavailable,
  the entry's ``path`` and the file's ``sha256``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger("headscope")

#: Bumped when the layout of an entry changes; entries of another version are not read.
CACHE_VERSION = 1
ENTRY_FILE = "entry.json"
HASHES_FILE = "hashes.json"


def cache_root() -> Path:
    """Where cached models live: ``$HEADSCOPE_CACHE/models`` (default ``~/.cache/headscope/models``)."""
    root = os.environ.get("HEADSCOPE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "headscope")
    return Path(root) / "models"


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _hash_file(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(file: Path, root: Path | None = None) -> str:
    """The sha256 of ``file``, hashed once per (path, size, mtime) and remembered in ``root/hashes.json``."""
    root = cache_root() if root is None else root
    resolved = Path(file).expanduser().resolve()
    stat = resolved.stat()
    key = str(resolved)
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    memo_path = root / HASHES_FILE
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
        if not isinstance(memo, dict):
            memo = {}
    except (OSError, ValueError):
        memo = {}
    known = memo.get(key)
    if isinstance(known, dict) and all(known.get(k) == v for k, v in stamp.items()) and known.get("sha256"):
        return str(known["sha256"])
    sha = _hash_file(resolved)
    memo[key] = {**stamp, "sha256": sha}
    try:
        _write_json_atomic(memo_path, memo)
    except OSError as exc:  # a read-only cache still works, it just hashes again next time
        logger.debug("could not remember the hash of %s: %s", resolved, exc)
    return sha


def entry_dir(sha: str, root: Path | None = None) -> Path:
    return (cache_root() if root is None else root) / sha


def lookup(sha: str, root: Path | None = None) -> Path | None:
    """The complete entry for a file of hash ``sha``, or None."""
    directory = entry_dir(sha, root)
    try:
        entry = json.loads((directory / ENTRY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("sha256") != sha or entry.get("version") != CACHE_VERSION:
        return None
    if not (directory / "config.json").is_file() or not any(directory.glob("*.safetensors")):
        return None
    return directory


def save_model(model: Any, directory: Path) -> None:
    """The model's weights as ``model.safetensors`` and its config as ``config.json``.

    transformers' ``save_pretrained`` refuses a model loaded from GGUF (it counts as quantized), although its
    weights are plain dequantized tensors: they are written directly (tied weights once), with a config that
    names the architecture and carries no quantization.
    """
    import copy

    from safetensors.torch import save_model as save_safetensors

    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    config.save_pretrained(directory)
    save_safetensors(model, str(Path(directory) / "model.safetensors"), metadata={"format": "pt"})


def save(model: Any, tokenizer: Any, source: Path, sha: str, root: Path | None = None,
         on_step: Callable[[], None] | None = None) -> Path:
    """Write ``model`` (safetensors), its config and ``tokenizer`` as the entry of hash ``sha``; return its folder.

    Written into a temporary folder and renamed, so another process sees the whole entry or none. When another
    process finished the same entry first, its copy is kept. ``on_step`` is called after the weights and after
    the tokenizer (two steps: progress).
    """
    final = entry_dir(sha, root)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{sha[:16]}.", dir=final.parent))
    try:
        save_model(model, tmp)
        if on_step is not None:
            on_step()
        tokenizer.save_pretrained(tmp)
        if on_step is not None:
            on_step()
        _write_json_atomic(tmp / ENTRY_FILE, {
            "version": CACHE_VERSION, "sha256": sha, "source": str(Path(source).expanduser().resolve()),
            "size": Path(source).stat().st_size, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        if lookup(sha, root) is None:
            if final.exists():  # an incomplete or outdated entry: replace it
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.rename(tmp, final)
            except OSError:
                if lookup(sha, root) is None:  # not a concurrent writer's finished copy: a real failure
                    raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
