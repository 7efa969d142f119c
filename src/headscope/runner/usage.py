"""What a run refuses before anything loads, as usage errors (exit status 2, one line): a ValueError of the
settings, input files that are missing, empty or not text, a device torch cannot use here."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from headscope.config import RunConfig
from headscope.errors import UsageError
from headscope.runner.checkpoint import CheckpointError


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """A ValueError raised inside is a :class:`UsageError` (the run as asked for cannot be done; exit status 2)."""
    try:
        yield
    except UsageError:
        raise
    except CheckpointError:
        raise
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def check_files(config: RunConfig) -> None:
    """Refuse input files that are missing, empty or not text (unless ``--skip-missing``), before the load."""
    problem = config.file_problems()
    if problem:
        raise UsageError(problem)


def check_device(device: str) -> None:
    """Refuse a GPU device that torch cannot use on this machine, in one line, before the load."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        why = ("this torch is a CPU build" if torch.version.cuda is None  # type: ignore[attr-defined]
               else "torch sees no CUDA GPU on this machine")
        raise UsageError(f"--device {device}: {why} (torch {torch.__version__}); use --device cpu or auto")
    if device.startswith("cuda:") and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                         f"numbered from 0")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: torch cannot use Apple's MPS on this machine; use --device cpu or auto")
