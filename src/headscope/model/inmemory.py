"""A model the caller already holds: analysed in place, described for the manifest, and left exactly as it was.

:func:`from_memory` wraps a ``transformers`` model object (or a ``peft`` model, analysed through its base with
the adapter active) in a :class:`~headscope.model.load.LoadedModel` without copying, moving, casting or
reloading it: the run feeds its inputs to the device of the model's input embeddings, in the model's own
dtype, and an ``accelerate``-dispatched model (``device_map``, offloaded layers included) moves its weights as
its own hooks say.

:func:`preserved` is the guard a run holds around such a model: it records everything the engine may touch
(every module's ``training`` flag and hooks, every parameter's ``requires_grad`` and ``.grad``, the config and
its attention implementation), puts the model in eval mode without gradients for the run, and restores all of
it afterwards, also after an exception or Ctrl-C.

:func:`weights_fingerprint` tells two models apart cheaply (see its docstring for what it reads).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from headscope.config import MEMORY
from headscope.errors import AttentionUnavailableError
from headscope.model.load import LoadedModel, ModelInfo, _model_max_length
from headscope.model.support import check_config

logger = logging.getLogger("headscope")

#: ``RunConfig.model`` of a run whose model was handed over in memory (its name is in ``run.json``'s model).
MEMORY_MODEL = MEMORY

#: Elements read from each tensor for the weights fingerprint (evenly strided over the flattened tensor).
FINGERPRINT_SAMPLE = 4096

_LM_SUFFIXES = ("ForMaskedLM", "ForCausalLM", "ForPreTraining", "LMHeadModel")
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass
class MemoryModelInfo(ModelInfo):
    """:class:`ModelInfo` of a model handed over in memory, with what ``run.json`` records of it."""

    memory: dict[str, Any] = field(default_factory=dict)
    """``source`` ("memory"), ``class``, ``name_or_path``, ``config``, ``dtype``, ``devices``,
    ``weights_fingerprint`` (:func:`weights_fingerprint`) and ``peft`` (the adapters, for a peft model)."""


def unwrap(model: Any) -> tuple[Any, dict[str, Any] | None]:
    """The ``transformers`` model to run and, for a ``peft`` model, its adapters (kept active: the LoRA layers
    live inside the base model, so the base's forward is the adapted model's)."""
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        base = model.get_base_model()
        adapters = getattr(model, "active_adapters", None)
        active = list(adapters() if callable(adapters) else adapters or [])
        kinds = {name: str(getattr(cfg, "peft_type", "")) for name, cfg in model.peft_config.items()}
        return base, {"class": type(model).__name__, "active_adapters": active, "adapters": kinds}
    return model, None


def input_device(model: Any) -> torch.device:
    """Where the model's inputs go: the execution device of its input embeddings (accelerate's hook, for a
    dispatched model), else the embedding weights' device (CPU for weights offloaded to the meta device)."""
    embeddings = model.get_input_embeddings()
    hook = getattr(embeddings, "_hf_hook", None)
    for h in [hook, *getattr(hook, "hooks", [])]:
        device = getattr(h, "execution_device", None)
        if device is not None:
            return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    weight = getattr(embeddings, "weight", None)
    if weight is None or weight.device.type == "meta":
        return torch.device("cpu")
    return weight.device


def _offloaded(model: Any) -> dict[str, torch.Tensor]:
    """Full parameter name -> the stored tensor, for parameters accelerate has offloaded (on the meta device;
    read from the hook's weights map, memory-mapped on disk or held on the CPU)."""
    found: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        hook = getattr(module, "_hf_hook", None)
        for h in [hook, *getattr(hook, "hooks", [])]:
            weights = getattr(h, "weights_map", None) if getattr(h, "offload", False) else None
            if weights is None:
                continue
            for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
                full = f"{prefix}.{name}" if prefix else name
                if tensor.device.type == "meta" and full not in found:
                    with contextlib.suppress(KeyError):
                        found[full] = weights[name]
    return found


def weights_fingerprint(model: Any, sample: int = FINGERPRINT_SAMPLE) -> str:
    """A sha256 over every parameter and buffer: its name, dtype, shape and the bytes of ``sample`` elements
    evenly strided over it (all of it when smaller).

    Cheap (a few thousand elements per tensor, whatever the model's size), and different for two models that
    differ in any architecture detail or in training: fine-tuning moves every element read. An edit that touches
    only elements between the strided ones is not seen. Offloaded weights are read from where accelerate keeps
    them, so a dispatched model has the fingerprint of the same weights in memory.
    """
    h = hashlib.sha256()
    offloaded = _offloaded(model)
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        data = offloaded.get(name, tensor) if tensor.device.type == "meta" else tensor
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if data.device.type == "meta":
            h.update(b"meta")
            continue
        flat = data.detach().reshape(-1)
        step = max(1, flat.numel() // sample)
        picked = flat[::step][:sample].to("cpu").contiguous()
        h.update(picked.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _config_of(model: Any) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _is_causal(model: Any, config: Any) -> bool:
    archs = list(getattr(model.config, "architectures", None) or [])
    if bool(getattr(config, "is_decoder", False)) or type(model).__name__.endswith(_CAUSAL_SUFFIXES) or any(
            a.endswith(_CAUSAL_SUFFIXES) for a in archs):
        return True
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    # A bare body (LlamaModel) of a type that exists only as a causal LM is a decoder.
    model_type = getattr(config, "model_type", "")
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def check_tokenizer(model: Any, tokenizer: Any, name: str) -> None:
    """Refuse a slow tokenizer, or one whose ids the model's embedding cannot take."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer {type(tokenizer).__name__}: headscope needs a fast tokenizer (words are "
                         "aligned by character offsets); load it with AutoTokenizer.from_pretrained(..., "
                         "use_fast=True)")
    rows = int(model.get_input_embeddings().weight.shape[0])
    size = len(tokenizer)
    if size > rows:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__} does "
                         f"not match {name}: it has {size} tokens, the model's embedding only {rows} rows")


def from_memory(model: Any, tokenizer: Any, *, capture: str = "auto", name: str | None = None) -> LoadedModel:
    """A :class:`LoadedModel` around a model object the caller holds: nothing copied, moved or cast.

    Parameters
    ----------
    model : transformers.PreTrainedModel or peft.PeftModel
        Used in place (its device map and dtype as they are).
    tokenizer : transformers.PreTrainedTokenizerFast
        Its tokenizer. One without a pad token is copied and given one (padding is masked out), so the
        caller's tokenizer is never changed.
    capture : {"auto", "interface", "hooks", "stacked"}
        The capture route asked for (``--capture``).
    name : str, optional
        The model's name in the results (default: its ``name_or_path``, else its class name).

    Raises
    ------
    TypeError
        ``model`` is not a transformers model.
    AttentionUnavailableError
        The model has no attention heads (its config gives no layer and head counts).
    ValueError
        A slow tokenizer, or one that does not match the model's vocabulary.
    """
    from transformers import PreTrainedModel

    base_model, peft = unwrap(model)
    if not isinstance(base_model, PreTrainedModel):
        raise TypeError(f"model must be a transformers PreTrainedModel (or a peft model around one), got "
                        f"{type(model).__name__}; or pass a model name")
    config = _config_of(base_model)
    name_or_path = str(getattr(base_model, "name_or_path", "") or getattr(config, "_name_or_path", "") or "")
    shown = name or name_or_path or type(base_model).__name__
    check_config(base_model.config, shown)  # what a named model is refused for (docs/models.md)
    n_layers = getattr(config, "num_hidden_layers", None)
    n_heads = getattr(config, "num_attention_heads", None)
    if not isinstance(n_layers, int) or not isinstance(n_heads, int) or n_layers < 1 or n_heads < 1:
        raise AttentionUnavailableError(f"{shown} ({type(base_model).__name__}): no attention heads to analyse "
                                        "(its config gives no num_hidden_layers / num_attention_heads)")
    if tokenizer is None:
        raise ValueError(f"{shown}: pass its tokenizer with the model (tokenizer=...)")
    check_tokenizer(base_model, tokenizer, shown)
    if tokenizer.pad_token_id is None:
        # Decoder LMs often ship without a pad token; padding is masked out, so any id will do. On a copy: the
        # caller's tokenizer stays as it was.
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    is_causal = _is_causal(base_model, config)
    has_lm_head = (type(base_model).__name__.endswith(_LM_SUFFIXES)
                   or base_model.get_output_embeddings() is not None)
    device = input_device(base_model)
    first = next((p for p in base_model.parameters() if p.is_floating_point()), None)
    dtype = str(first.dtype).removeprefix("torch.") if first is not None else "unknown"
    devices = sorted({str(p.device) for p in base_model.parameters()})
    device_map = getattr(base_model, "hf_device_map", None)
    memory = {
        "source": "memory",
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "name_or_path": name_or_path,
        "config": base_model.config.to_diff_dict() if hasattr(base_model.config, "to_diff_dict") else {},
        "dtype": dtype,
        "devices": devices,
        "input_device": str(device),
        "device_map": {k: str(v) for k, v in device_map.items()} if isinstance(device_map, dict) else None,
        "weights_fingerprint": weights_fingerprint(base_model),
        "fingerprint_method": f"sha256 of names, dtypes, shapes and {FINGERPRINT_SAMPLE} strided elements per "
                              "tensor",
        "peft": peft,
    }
    info = MemoryModelInfo(
        name=shown, path=MEMORY_MODEL, revision=None, model_type=str(getattr(config, "model_type", "unknown")),
        n_layers=n_layers, n_heads=n_heads, max_length=_model_max_length(config, tokenizer), is_causal=is_causal,
        has_lm_head=has_lm_head,
        special_ids={role: getattr(tokenizer, f"{role}_token_id", None)
                     for role in ("cls", "sep", "bos", "eos", "pad", "mask")},
        memory=memory)
    base = getattr(base_model, "base_model", base_model)
    loaded = LoadedModel(model=base_model, base=base, tokenizer=tokenizer, info=info, device=device,
                         capture=capture)  # type: ignore[arg-type]
    if capture == "stacked":
        loaded.route = "stacked"
    return loaded


def refresh(loaded: LoadedModel) -> None:
    """Describe the model again as it is now (dtype, devices, weights fingerprint): a :class:`headscope.Session`
    run after the caller trained or moved the model records the model it analysed."""
    info = loaded.info
    if not isinstance(info, MemoryModelInfo):
        return
    model = loaded.model
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    loaded.device = input_device(model)
    # A new dict: the results of earlier runs hold the old one.
    info.memory = {**info.memory, "dtype": str(first.dtype).removeprefix("torch.") if first is not None else "unknown",
                   "devices": sorted({str(p.device) for p in model.parameters()}),
                   "weights_fingerprint": weights_fingerprint(model), "input_device": str(loaded.device)}


# --- leaving the model as it was ------------------------------------------------------------------------

_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
               "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


@dataclass
class _Snapshot:
    modules: list[tuple[torch.nn.Module, bool, dict[str, dict[Any, Any]]]]
    params: list[tuple[torch.Tensor, bool, torch.Tensor | None]]
    attn_implementation: Any
    config: dict[str, Any]


def snapshot(model: Any) -> _Snapshot:
    """What :func:`preserved` restores."""
    modules = [(m, m.training, {name: dict(getattr(m, name)) for name in _HOOK_DICTS if hasattr(m, name)})
               for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    return _Snapshot(modules, params, getattr(model.config, "_attn_implementation", None),
                     copy.deepcopy(dict(vars(model.config))))


def restore(model: Any, saved: _Snapshot) -> None:
    """Put back what :func:`snapshot` recorded (nothing the caller changed inside is kept: the run owns it)."""
    current = getattr(model.config, "_attn_implementation", None)
    if saved.attn_implementation is not None and current != saved.attn_implementation:
        model.set_attn_implementation(saved.attn_implementation)
    attributes = vars(model.config)
    for key in [k for k in attributes if k not in saved.config]:
        delattr(model.config, key)
    for key, value in saved.config.items():
        if key not in attributes or attributes[key] != value:
            attributes[key] = value
    for module, training, hooks in saved.modules:
        module.training = training
        for name, entries in hooks.items():
            live = getattr(module, name)
            if dict(live) != entries:
                live.clear()
                live.update(entries)
    for param, requires_grad, grad in saved.params:
        param.requires_grad_(requires_grad)
        param.grad = grad


@contextlib.contextmanager
def preserved(model: Any) -> Iterator[None]:
    """The model in eval mode without gradients for the duration, then exactly as it was (see the module)."""
    saved = snapshot(model)
    try:
        model.eval()
        model.requires_grad_(False)
        yield
    finally:
        restore(model, saved)
