"""One output directory, one run: a folder that holds a run is refused, or replaced whole."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

#: What headscope writes into an output directory (files by suffix at its top level, and folders).
OUTPUT_SUFFIXES = (".csv", ".parquet", ".json")
OUTPUT_FOLDERS = ("report", "figures", "checkpoint", "probes")


class OutputExistsError(FileExistsError):
    """The output directory already holds a run."""


def holds_run(out: Path) -> bool:
    return (out / "run.json").is_file() or (out / "checkpoint" / "checkpoint.json").is_file()


def prepare(out: str | Path, overwrite: bool, resuming: bool) -> None:
    """Make ``out`` ready for a new run (or for resuming the one in it).

    Raises
    ------
    OutputExistsError
        When ``out`` holds a run and neither ``overwrite`` nor ``resuming`` is set.
    """
    path = Path(out)
    if resuming or not path.exists():
        return
    if not path.is_dir():
        raise OutputExistsError(f"--out {out} is a file, not a directory")
    if not holds_run(path):
        return
    if not overwrite:
        raise OutputExistsError(
            f"{out} already holds a headscope run; pass --overwrite to replace it whole, --resume {out} to "
            "continue an interrupted one, or another --out")
    # Only what headscope wrote goes (the files run.json lists), so a folder shared with other files keeps them.
    listed: list[str] | None = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        listed = list(json.loads((path / "run.json").read_text(encoding="utf-8")).get("outputs"))
    for entry in path.iterdir():
        if entry.is_dir() and entry.name in OUTPUT_FOLDERS:
            shutil.rmtree(entry)
        elif entry.is_file() and (entry.name == "run.json" or (entry.name in listed if listed is not None
                                                                else entry.suffix in OUTPUT_SUFFIXES)):
            entry.unlink()
