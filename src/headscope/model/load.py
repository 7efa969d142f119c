"""Loading a model so that it returns attention weights: local directory, hub id or packaged short name."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from headscope.errors import AttentionUnavailableError
from headscope.model.packaged import PACKAGED_MODELS
from headscope.model.support import check_config

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

    from headscope.config import Capture, Dtype, Route

logger = logging.getLogger("headscope")


class ModelNotFoundError(FileNotFoundError):
    """``--model`` names no packaged model, local directory, cached or reachable hub model."""


@dataclass
class ModelInfo:
    """What the analyses need to know about a loaded model."""

    name: str
    """What the user asked for (short name, path or hub id)."""
    path: str
    """Where the weights were loaded from."""
    revision: str | None
    """Requested revision, or the commit the hub resolved, when known."""
    model_type: str
    """``config.model_type`` (bert, roberta, mpnet, llama, ...)."""
    n_layers: int
    n_heads: int
    max_length: int
    """The longest sequence the model accepts, in tokens."""
    is_causal: bool
    """True for decoder LMs: row i attends only to keys 0..i."""
    has_lm_head: bool
    """True when trained LM-head weights were loaded (masked or causal)."""
    special_ids: dict[str, int | None] = field(default_factory=dict)
    """Token ids by role: cls, sep, bos, eos, pad, mask."""
    cache: dict[str, Any] | None = None
    """GGUF models: the dequantized-model cache (``status`` used, created, off or unavailable; ``path`` of the
    entry; ``sha256`` of the file), see :mod:`headscope.model.gguf_cache`. None for other models."""

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class LoadedModel:
    """A model ready for analysis: the full model, its attention-returning base, tokenizer and info."""

    model: PreTrainedModel
    """The loaded model (with its LM head when the checkpoint has one)."""
    base: PreTrainedModel
    """The transformer body, called for attention capture (skips the LM head)."""
    tokenizer: PreTrainedTokenizerFast
    """A fast tokenizer (words are aligned by character offsets)."""
    info: ModelInfo
    device: torch.device
    route: Route | None = None
    """How attention weights are captured: ``interface``, ``hooks`` or ``stacked`` (see
    :mod:`headscope.engine.capture`); None until the engine chooses it (``engine.capture.ensure_route``, called
    where the run opens its context and by the first capture)."""
    capture: Capture = "auto"
    """The route asked for (``--capture``), which the engine's choice starts from."""
    capture_state: dict[str, Any] = field(default_factory=dict, repr=False)
    """What the capture learned about the model (attention module of each layer), filled on first use."""


def _looks_like_path(name: str) -> bool:
    """True when ``name`` is written as a filesystem path rather than a hub id (``org/model``)."""
    return (name.startswith((".", "/", "~")) or name.endswith(("/", os.sep))
            or name.count("/") > 1 or (os.sep != "/" and os.sep in name))


def _packaged_names() -> str:
    return ", ".join(f"{n} ({'installed' if m.installed else m.install})" for n, m in PACKAGED_MODELS.items())


def check_hub_model(name: str, revision: str | None, gguf_file: str | None) -> dict[str, Any]:
    """Fail at once, with the packaged names, when hub id ``name`` cannot be loaded.

    One metadata request (no retries) decides: the model exists, does not exist, or the hub cannot be reached.
    Without the hub (``HF_HUB_OFFLINE`` or no network) a model already in the local cache still loads.

    Returns
    -------
    dict
        Extra ``from_pretrained`` keyword arguments (``local_files_only`` when only the cache is usable).
    """
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    hint = f"packaged models (--model): {_packaged_names()}"
    try:
        cached = isinstance(try_to_load_from_cache(name, gguf_file or "config.json", revision=revision), str)
    except HFValidationError:
        raise ModelNotFoundError(f"{name}: not a packaged model, a local directory or a valid hub id "
                                 f"(org/name); {hint}") from None
    if constants.HF_HUB_OFFLINE:
        if cached:
            return {"local_files_only": True}
        raise ModelNotFoundError(f"{name}: not a packaged model, a local directory or a model in the Hugging Face "
                                 f"cache, and the hub is offline (HF_HUB_OFFLINE); {hint}")
    try:
        HfApi().model_info(name, revision=revision, timeout=10)
    except GatedRepoError:
        return {}  # it exists; the download says what access is missing
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        what = f"revision {revision!r} of {name}" if isinstance(exc, RevisionNotFoundError) else name
        raise ModelNotFoundError(f"{what}: not found on the Hugging Face hub (nor a packaged model or a local "
                                 f"directory); {hint}") from None
    except Exception as exc:  # any transport failure means "the hub cannot be reached" here
        if cached:
            logger.warning("%s: the hub cannot be reached (%s); using the cached copy", name, exc)
            return {"local_files_only": True}
        raise ModelNotFoundError(f"{name}: the Hugging Face hub cannot be reached ({exc}) and the model is not in "
                                 f"the local cache; {hint}") from None
    return {}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


_LM_SUFFIXES = ("ForMaskedLM", "ForCausalLM", "ForPreTraining", "LMHeadModel")


def load_model(
    name: str,
    *,
    revision: str | None = None,
    device: str = "auto",
    dtype: Dtype = "float32",
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
    capture: Capture = "auto",
    cache_model: bool = True,
    progress: Callable[..., Any] | None = None,
) -> LoadedModel:
    """Load a model that can return its attention weights (the engine chooses how they are captured).

    Parameters
    ----------
    name : str
        A packaged short name (see :data:`PACKAGED_MODELS`), a local directory or a hub id.
    revision : str, optional
        Hub revision.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    dtype : str
        ``float32``, ``float16`` or ``bfloat16``.
    trust_remote_code : bool
        Passed to ``transformers``; off unless asked.
    gguf_file : str, optional
        A GGUF file inside the model directory.
    capture : {"auto", "interface", "hooks", "stacked"}
        The capture route asked for, kept in ``LoadedModel.capture``; the engine chooses the route from it
        (:func:`headscope.engine.capture.ensure_route`; ``auto`` picks the attention interface where the model
        uses it). ``stacked`` is checked here.
    cache_model : bool
        For a local GGUF file: read the dequantized model from the cache, and write it there on the first
        float32 load (:mod:`headscope.model.gguf_cache`); recorded in ``ModelInfo.cache``.
    progress : callable, optional
        Makes the progress trackers of a GGUF file's first load (dequantizing its tensors, writing the cache):
        called as ``progress(desc, unit, total)``, it returns an object with ``update(n)`` that is a context
        manager (:class:`headscope.engine.progress.Tracker`, which the run passes). None: no progress shown.

    Returns
    -------
    LoadedModel
    """
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
    )
    from transformers.utils import logging as hf_logging

    # Our own progress bar and manifest speak for the run; transformers' per-load bars are noise here.
    hf_logging.disable_progress_bar()
    path: str = name
    if name in PACKAGED_MODELS:
        folder, packaged_file = PACKAGED_MODELS[name].locate()
        path = str(folder)
        gguf_file = gguf_file or packaged_file
    else:
        path, gguf_file = local_gguf(name, gguf_file)
    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    if name not in PACKAGED_MODELS and not Path(path).expanduser().exists():
        kwargs.update(check_hub_model(name, revision, gguf_file))
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    source, cache = path, None  # where the config, weights and tokenizer are read from
    if gguf_file:
        cache = _gguf_cache_lookup(path, gguf_file, cache_model)
        if cache.get("status") == "used":
            source, kwargs = cache["path"], {"trust_remote_code": trust_remote_code}
    first_gguf = bool(gguf_file) and source == path  # read from the GGUF file itself: minutes for a big one
    with _step(progress if first_gguf else None, "reading the GGUF file's metadata"):
        config = AutoConfig.from_pretrained(source, **kwargs)
    check_config(config, name)  # refused before the weights load (docs/models.md)
    archs = list(getattr(config, "architectures", None) or [])
    is_causal = bool(getattr(config, "is_decoder", False)) or any(
        a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    has_lm_head = any(a.endswith(_LM_SUFFIXES) for a in archs)
    if gguf_file and not archs:
        # GGUF configs carry no architectures list; every GGUF checkpoint transformers reads is a causal LM.
        is_causal = has_lm_head = True
    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    model_kwargs = dict(kwargs, attn_implementation="eager", dtype=torch_dtype)
    auto_cls = (AutoModelForCausalLM if is_causal else AutoModelForMaskedLM) if has_lm_head else AutoModel
    try:
        with _gguf_progress(first_gguf, progress):
            model = auto_cls.from_pretrained(source, **model_kwargs)
    except (ValueError, TypeError) as exc:
        if "attn_implementation" in str(exc) or "eager" in str(exc):
            raise AttentionUnavailableError(
                f"{name}: this model does not support eager attention, so it cannot return attention "
                f"weights ({exc})") from exc
        raise
    torch_device = resolve_device(device)
    # transformers wraps PreTrainedModel.to in a decorator whose stub types the argument as the model.
    model.to(torch_device).eval()  # type: ignore[arg-type]
    model.requires_grad_(False)
    with _step(progress if first_gguf else None, "converting the GGUF tokenizer"):
        tokenizer = _load_tokenizer(source, kwargs, getattr(config, "model_type", ""))
    if cache is not None and cache.get("status") == "miss":
        cache = _gguf_cache_save(cache, model, tokenizer, torch_dtype, progress)
    n_layers = int(config.num_hidden_layers)
    n_heads = int(config.num_attention_heads)
    max_length = _model_max_length(config, tokenizer)
    special_ids = {
        role: getattr(tokenizer, f"{role}_token_id", None) for role in ("cls", "sep", "bos", "eos", "pad", "mask")
    }
    info = ModelInfo(
        name=name,
        path=path,
        revision=revision or getattr(config, "_commit_hash", None),
        model_type=str(getattr(config, "model_type", "unknown")),
        n_layers=n_layers,
        n_heads=n_heads,
        max_length=max_length,
        is_causal=is_causal,
        has_lm_head=has_lm_head,
        special_ids=special_ids,
        cache=cache,
    )
    base = getattr(model, "base_model", model)
    loaded = LoadedModel(model=model, base=base, tokenizer=tokenizer, info=info, device=torch_device,
                         capture=capture)
    if capture == "stacked":
        check_attention(loaded)
        loaded.route = "stacked"
    # Any other route is chosen by the engine (a probe pass of the capture): engine.capture.ensure_route.
    return loaded


def local_gguf(name: str, gguf_file: str | None) -> tuple[str, str | None]:
    """The model folder and GGUF file name of ``--model`` and ``--gguf-file``, checked before anything loads.

    ``--model path/to/model.gguf`` is its folder and file; ``--model DIR --gguf-file NAME`` must name a file in
    DIR. A hub id passes through as it is.

    Raises
    ------
    ModelNotFoundError
        A path that does not exist, or a GGUF file that is not there.
    """
    local = Path(name).expanduser()
    if name.lower().endswith(".gguf") and (local.exists() or _looks_like_path(name) or "/" not in name):
        if not local.is_file():
            raise ModelNotFoundError(f"no such GGUF file: {name}")
        if gguf_file and gguf_file != local.name:
            raise ModelNotFoundError(f"--model names the GGUF file {local.name} and --gguf-file names {gguf_file}: "
                                     "give one")
        return str(local.parent), local.name
    if _looks_like_path(name) and not local.exists():
        # Otherwise the hub client rejects it as a malformed repo id, which sends the user the wrong way.
        raise ModelNotFoundError(f"no such model directory: {name}")
    if gguf_file and local.is_dir() and not (local / gguf_file).is_file():
        present = sorted(p.name for p in local.glob("*.gguf"))
        raise ModelNotFoundError(f"no such GGUF file: {local / gguf_file} (--gguf-file names a file in the --model "
                                 f"directory; GGUF files there: {', '.join(present) or 'none'})")
    return name, gguf_file


def _gguf_cache_lookup(path: str, gguf_file: str, enabled: bool) -> dict[str, Any]:
    """What the cache holds for ``path/gguf_file``: ``status`` used (with the entry's ``path``), miss, off, or
    unavailable (a hub file, or the cache cannot be read; with the ``reason``)."""
    if not enabled:
        return {"status": "off"}
    file = Path(path).expanduser() / gguf_file
    if not file.is_file():
        return {"status": "unavailable", "reason": "not a local file"}
    from headscope.model import gguf_cache

    try:
        sha = gguf_cache.file_sha256(file)
    except OSError as exc:
        return {"status": "unavailable", "reason": f"cannot hash {file}: {exc}"}
    entry = gguf_cache.lookup(sha)
    if entry is None:
        return {"status": "miss", "sha256": sha, "file": str(file), "path": str(gguf_cache.entry_dir(sha))}
    return {"status": "used", "sha256": sha, "path": str(entry)}


def _gguf_cache_save(cache: dict[str, Any], model: Any, tokenizer: Any, dtype: torch.dtype,
                     progress: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Write the entry of a cache miss; only a float32 load holds the dequantized weights as they are."""
    from headscope.model import gguf_cache

    if dtype != torch.float32:
        return {"status": "unavailable", "sha256": cache["sha256"],
                "reason": f"not written from a {str(dtype).removeprefix('torch.')} load (float32 only)"}
    try:
        with contextlib.ExitStack() as stack:
            tracker = None if progress is None else stack.enter_context(
                progress("writing the dequantized-model cache", "files", 2))
            entry = gguf_cache.save(model, tokenizer, Path(cache["file"]), cache["sha256"],
                                    on_step=None if tracker is None else lambda: tracker.update(1))
    except Exception as exc:  # the cache must never cost the run itself
        logger.warning("could not cache the dequantized model (%s); the next run converts the GGUF file again",
                       exc)
        return {"status": "unavailable", "sha256": cache["sha256"], "reason": str(exc)}
    return {"status": "created", "sha256": cache["sha256"], "path": str(entry)}


@contextlib.contextmanager
def _step(progress: Callable[..., Any] | None, desc: str) -> Iterator[None]:
    """One step of a long load, as a tracker of one unit (a bar from its start on a terminal, a line when done
    elsewhere); nothing without ``progress``."""
    if progress is None:
        yield
        return
    with progress(desc, "steps", 1) as tracker:
        yield
        tracker.update(1)


@contextlib.contextmanager
def _gguf_progress(active: bool, progress: Callable[..., Any] | None) -> Iterator[None]:
    """The GGUF reader's loop over tensors counted by ``progress`` (``dequantizing GGUF tensors``) instead of its
    own tqdm bar, which ignores transformers' progress-bar switch; silent without ``progress``."""
    module = sys.modules.get("transformers.modeling_gguf_pytorch_utils") if active else None
    if active and module is None:
        try:
            import transformers.modeling_gguf_pytorch_utils as module
        except ImportError:  # transformers then fails with its own message about gguf
            module = None
    bar = getattr(module, "tqdm", None)
    if module is None or bar is None:
        yield
        return

    def counted(iterable: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        if progress is None:
            yield from iterable
            return
        with progress("dequantizing GGUF tensors", "tensors", len(iterable)) as tracker:
            for item in iterable:
                yield item
                tracker.update(1)

    setattr(module, "tqdm", counted)  # noqa: B010 (a module's attribute)
    try:
        yield
    finally:
        setattr(module, "tqdm", bar)  # noqa: B010


def _load_tokenizer(path: str, kwargs: dict[str, Any], model_type: str) -> PreTrainedTokenizerFast:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{path}: headscope needs a fast tokenizer (words are aligned by character offsets)")
    # Loaded as the model's users load it: inputs are strings, so no add_prefix_space is forced on it.
    if tokenizer.pad_token_id is None:
        # Decoder LMs often ship without a pad token; padding is masked out, so any id will do.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return cast("PreTrainedTokenizerFast", tokenizer)  # is_fast checked above


def _model_max_length(config: Any, tokenizer: Any) -> int:
    candidates = []
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and tok_max < 1_000_000:
        candidates.append(tok_max)
    pos = getattr(config, "max_position_embeddings", None)
    if isinstance(pos, int):
        # RoBERTa-style models reserve padding_idx + 1 positions.
        offset = (config.pad_token_id + 1) if getattr(config, "model_type", "") in ("roberta", "xlm-roberta",
                                                                                   "camembert") else 0
        candidates.append(pos - offset)
    return min(candidates) if candidates else 512


def check_attention(loaded: LoadedModel) -> None:
    """Run one tiny forward pass with ``output_attentions`` and fail clearly if no weights come back."""
    tok = loaded.tokenizer
    enc = tok("attention check", return_tensors="pt")
    with torch.no_grad():
        out = loaded.base(
            input_ids=enc["input_ids"].to(loaded.device),
            attention_mask=enc["attention_mask"].to(loaded.device),
            output_attentions=True,
        )
    attentions = getattr(out, "attentions", None)
    if not attentions or attentions[0] is None:
        raise AttentionUnavailableError(
            f"{loaded.info.name}: the model returned no attention weights with output_attentions=True "
            "(its attention implementation does not expose them)")
    got = tuple(attentions[0].shape[1:2])
    if len(attentions) != loaded.info.n_layers or got != (loaded.info.n_heads,):
        logger.warning("%s: config says %d layers x %d heads, the forward pass returned %d x %s",
                       loaded.info.name, loaded.info.n_layers, loaded.info.n_heads, len(attentions), got)
