"""The capture routes: one batch through the model, every layer's attention handed over block by block.

:func:`capture` drives one batch by the model's route (``interface``: headscope's attention function;
``hooks``: a forward hook on each attention module; ``stacked``: eager ``output_attentions``, the reference);
:func:`choose_route` picks and verifies the route when a model is first captured (a probe pass, compared
with the model's own eager weights); :func:`capture_stacked` gives every layer of a small batch at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from headscope.engine.capture.attention import IMPLEMENTATION, active_key_mask, register, streaming
from headscope.engine.capture.blocks import Consumer, LayerAttention, emit_whole
from headscope.engine.capture.padding import PaddingSide, model_inputs, shift
from headscope.engine.capture.stream import Stream, WeightsKind

if TYPE_CHECKING:
    from headscope.config import Capture, Route
    from headscope.engine.batch import Batch
    from headscope.model.load import LoadedModel


def capture(loaded: LoadedModel, batch: Batch, consume: Consumer, budget_bytes: int,
            route: Route | None = None, padding_side: PaddingSide = "right",
            weights: WeightsKind = "attention") -> None:
    """Run the model body on ``batch`` and hand every layer's attention to ``consume``, block by block.

    Parameters
    ----------
    loaded : LoadedModel
    batch : Batch
    consume : callable
        Called with a :class:`LayerAttention` for each block of query rows of each layer, layers in order,
        blocks in order within a layer.
    budget_bytes : int
        The most memory one block may take (see :data:`BYTES_PER_WEIGHT`).
    route : {"interface", "hooks", "stacked"}, optional
        Default: the model's own route (``loaded.route``).
    padding_side : {"right", "left"}
        Padding of the forward pass; the blocks are right-aligned either way.
    weights : {"attention", "norm", "rollout"}
        What is handed over (``--weights``, docs/weights.md): the attention weights, norm-based weights
        (Kobayashi et al. 2020; ``interface`` route only) or per-head attention rollout (Abnar & Zuidema
        2020; each layer in one block).
    """
    from headscope.errors import AttentionUnavailableError

    route = route or ensure_route(loaded)
    projections = None
    if weights == "norm":
        if route != "interface":
            raise ValueError(f"--weights norm needs the value vectors, which only the 'interface' capture route "
                             f"sees; {loaded.info.name} is captured by the {route!r} route (--capture {route}). "
                             "Use --weights attention or rollout, or --capture interface where the model "
                             "supports it.")
        projections = loaded.capture_state.get("output_projections")
        if projections is None:
            try:
                projections = layer_projections(loaded)
            except ValueError as exc:
                raise ValueError(f"--weights norm: {exc}") from exc
            loaded.capture_state["output_projections"] = projections
    elif weights not in ("attention", "rollout"):
        raise ValueError(f"weights must be attention, norm or rollout, got {weights!r}")
    keys = active_key_mask()
    if padding_side == "left" and keys is not None:
        raise ValueError(keys.refusal)
    align = shift(batch, 1) if padding_side == "left" else None
    stream = Stream(consume, loaded.capture_state.setdefault("layer_of", {}), budget_bytes, align, batch.mask,
                    weights, projections)
    inputs = model_inputs(loaded, batch, padding_side)
    with torch.inference_mode():
        if route == "interface":
            with streaming(stream):
                loaded.base(**inputs)
        elif route == "hooks":
            with _hooks(loaded, stream):
                loaded.base(**inputs, output_attentions=True)
        else:
            with eager_attention(loaded):
                out = loaded.base(**inputs, output_attentions=True)
            attentions = getattr(out, "attentions", None)
            if not attentions or attentions[0] is None:
                raise AttentionUnavailableError(f"{loaded.info.name}: no attention weights were returned")
            for layer, layer_weights in enumerate(attentions):
                emit_whole(stream, layer, layer_weights)
            del out, attentions
    if not stream.seen:
        raise AttentionUnavailableError(
            f"{loaded.info.name}: the {route!r} capture route saw no attention layer; try another "
            "--capture route")


def layer_projections(loaded: LoadedModel) -> list[torch.nn.Module]:
    """The self-attention output projection of every layer, in layer order; a projection that several layers
    share (ALBERT) appears once per layer, in the order a forward pass calls it.

    Raises
    ------
    ValueError
        No known projection, or a number of calls that is not the model's number of layers.
    """
    from headscope.model.gates import find_output_projections

    unique = find_output_projections(loaded.base)
    n_layers = loaded.info.n_layers
    if len(unique) == n_layers:
        return unique
    order: list[torch.nn.Module] = []
    handles = [m.register_forward_pre_hook(lambda module, args: order.append(module)) for m in unique]
    try:
        with torch.inference_mode(), streaming(None):
            loaded.base(**probe_batch(loaded).model_inputs())
    finally:
        for handle in handles:
            handle.remove()
    if len(order) != n_layers:
        raise ValueError(f"{loaded.info.name}: a forward pass calls the attention output projections "
                         f"{len(order)} times for {n_layers} layers")
    return order


@contextlib.contextmanager
def eager_attention(loaded: LoadedModel) -> Iterator[None]:
    """Eager attention for the duration, the model's own restored after: the weights as the model's own
    output (the stacked reference route) and in the autograd graph (gradient analyses)."""
    model = loaded.model
    current = getattr(model.config, "_attn_implementation", None)
    if current in (None, "eager") or loaded.route == "hooks" or not hasattr(model, "set_attn_implementation"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(current)


def attention_modules(loaded: LoadedModel) -> list[torch.nn.Module]:
    """For the hooks route: the innermost module of each layer whose output carries its attention weights, one
    entry per layer in call order (a module called k times, as ALBERT's shared layer, is k entries).

    Found once with a probe pass (children finish before their parents, so the first module to return a
    given weights tensor is the one that computed it; each call returns a new tensor, kept alive by the output).
    """
    cached = loaded.capture_state.get("hook_modules")
    if cached is not None:
        return cached
    producers: dict[int, torch.nn.Module] = {}
    handles = []

    def record(module: torch.nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, tuple) and len(output) > 1 and isinstance(output[1], torch.Tensor) \
                and output[1].dim() == 4:
            producers.setdefault(id(output[1]), module)

    for module in loaded.base.modules():
        handles.append(module.register_forward_hook(record))
    try:
        with torch.inference_mode():
            loaded.base(**probe_batch(loaded).model_inputs(), output_attentions=True)
    finally:
        for handle in handles:
            handle.remove()
    modules = list(producers.values())  # in the order the weights were made: call order
    loaded.capture_state["hook_modules"] = modules
    return modules


@contextlib.contextmanager
def _hooks(loaded: LoadedModel, stream: Stream) -> Iterator[None]:
    from headscope.errors import AttentionUnavailableError

    modules = attention_modules(loaded)
    layers: dict[int, list[int]] = {}
    for layer, m in enumerate(modules):
        layers.setdefault(id(m), []).append(layer)
    calls: dict[int, int] = {}

    def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        # The i-th call of a module in this forward pass is its i-th layer (a shared module is several layers).
        mine = layers[id(module)]
        k = calls.get(id(module), 0)
        calls[id(module)] = k + 1
        if k >= len(mine):
            raise AttentionUnavailableError(f"{loaded.info.name}: {type(module).__name__} was called more often "
                                            f"than in the probe pass ({len(mine)})")
        emit_whole(stream, mine[k], output[1])
        return (output[0], None, *output[2:])  # the model keeps no layer's weights

    handles = [m.register_forward_hook(hook) for m in dict.fromkeys(modules)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def probe_batch(loaded: LoadedModel) -> Batch:
    """Two words through the tokenizer: the input of the probe passes made when a model is loaded."""
    from headscope.engine.batch import probe_batch as batch_of_ids

    enc = loaded.tokenizer("attention check", return_tensors="np")
    return batch_of_ids(enc["input_ids"][0], loaded.device)


def ensure_route(loaded: LoadedModel) -> Route:
    """``loaded.route``, chosen now by :func:`choose_route` from the route asked for (``loaded.capture``) when
    the loader left it open: the route is the engine's choice, made where a run opens its context or at the
    first capture."""
    if loaded.route is None:
        loaded.route = choose_route(loaded, loaded.capture)
    return loaded.route


def choose_route(loaded: LoadedModel, requested: Capture = "auto") -> Route:
    """The capture route for a loaded model: ``interface`` where it works, else ``hooks``, else an error.

    ``requested`` is ``auto`` or a route name; ``auto`` tries the attention interface first. A route is taken
    only when its probe pass gives every layer once, in order (a module called several times per forward pass is
    one layer per call), every head, and rows that are distributions over every key of the sequence; on a
    float32 model its weights must also equal the model's own eager ``output_attentions`` (the ``stacked``
    route) on the probe input. Never silently wrong: a model whose weights come through but fail these checks
    is refused (:class:`~headscope.errors.UnsupportedModelError`), one without weights by any route named
    (:class:`~headscope.errors.AttentionUnavailableError`).
    """
    from headscope.errors import AttentionUnavailableError, UnsupportedModelError
    from headscope.model.support import architecture, check_config

    check_config(loaded.model.config, loaded.info.name)  # models built in memory never met the loader's check
    n_layers = loaded.info.n_layers
    batch = probe_batch(loaded)
    tried: list[str] = []
    inexact: list[str] = []
    candidates = ["interface", "hooks"] if requested == "auto" else [requested]
    reference: dict[int, torch.Tensor] | None = None
    for route in candidates:
        if route == "interface":
            model = loaded.model
            if not model._can_set_attn_implementation():
                tried.append("interface: the model does not use transformers' attention interface")
                continue
            register()
            model.set_attn_implementation(IMPLEMENTATION)
        elif route == "hooks" and loaded.model.config._attn_implementation != "eager":
            loaded.model.set_attn_implementation("eager")
        loaded.route = route  # type: ignore[assignment]
        loaded.capture_state.clear()
        try:
            layers, maps = _probe_maps(loaded, batch, route)  # type: ignore[arg-type]
        except UnsupportedModelError as exc:
            tried.append(f"{route}: {exc}")
            inexact.append(f"{route}: {exc}")
            continue
        except AttentionUnavailableError as exc:
            tried.append(f"{route}: {exc}")
            continue
        heads = {int(w.shape[1]) for w in maps.values()}
        if layers != list(range(n_layers)) or heads != {loaded.info.n_heads}:
            tried.append(f"{route}: saw {len(layers)} layers x {sorted(heads)} heads, the config says "
                         f"{n_layers} x {loaded.info.n_heads}")
            continue
        problem = _not_a_map(maps, batch)
        if problem is None and route != "stacked" and next(loaded.model.parameters()).dtype == torch.float32:
            if reference is None:
                try:
                    reference = _probe_maps(loaded, batch, "stacked")[1]
                except AttentionUnavailableError:
                    reference = {}  # no eager weights to compare with: the matrix vouches for the families
            if reference:
                diff = max(float((maps[k] - reference[k]).abs().max()) if k in reference else float("inf")
                           for k in maps)
                if diff > 1e-4:
                    problem = f"differs from the model's own eager attention by {diff:.2g}"
        if problem is None:
            return route  # type: ignore[return-value]
        tried.append(f"{route}: {problem}")
        inexact.append(f"{route}: {problem}")
    if requested == "auto" and loaded.model.config._attn_implementation != "eager":
        loaded.model.set_attn_implementation("eager")
    if inexact:
        raise UnsupportedModelError(
            f"{loaded.info.name}: {architecture(loaded.model.config)}: headscope cannot capture this model's "
            f"attention exactly (--capture {requested}): " + "; ".join(inexact) + " (docs/models.md)")
    raise AttentionUnavailableError(
        f"{loaded.info.name}: headscope cannot get attention weights from this model by any route "
        f"(--capture {requested}): " + "; ".join(tried))


def _probe_maps(loaded: LoadedModel, batch: Batch, route: Route) -> tuple[list[int], dict[int, torch.Tensor]]:
    """The layers in the order their first block came (``is_first``) and each layer's whole map, by the index the
    blocks carry (so that two calls given one index, or a layer given none, show)."""
    layers: list[int] = []
    maps: dict[int, list[torch.Tensor]] = {}

    def keep(block: LayerAttention) -> None:
        if block.is_first:
            layers.append(block.layer)
        maps.setdefault(block.layer, []).append(block.weights.clone())

    capture(loaded, batch, keep, budget_bytes=1 << 30, route=route)
    return layers, {k: torch.cat(v, dim=2) for k, v in maps.items()}


def _not_a_map(maps: dict[int, torch.Tensor], batch: Batch) -> str | None:
    """Why the probe's weights are not [batch, head, query, key] distributions over the whole sequence, or None."""
    n = int(batch.input_ids.shape[1])
    for layer, w in sorted(maps.items()):
        if w.dim() != 4 or tuple(w.shape[2:]) != (n, n):
            return (f"layer {layer}'s weights have shape {tuple(w.shape)}, not a [query, key] map of the "
                    f"{n}-token sequence onto itself")
        if not bool(torch.isfinite(w).all()) or float((w.sum(-1) - 1).abs().max()) > 1e-3:
            return f"layer {layer}'s rows are not distributions over the keys (not a [query, key] map)"
    return None


def capture_stacked(loaded: LoadedModel, batch: Batch, route: Route | None = None,
                    padding_side: PaddingSide = "right", weights: WeightsKind = "attention") -> torch.Tensor:
    """Every layer of one (small) batch as one tensor, for the viewer and tests.

    Returns
    -------
    Tensor of shape [batch, layer, head, query, key]
        float32, right-aligned, padding exactly 0. Holds every layer: only for short inputs.
    """
    layers: list[list[torch.Tensor]] = []

    def keep(block: LayerAttention) -> None:
        if block.is_first:
            layers.append([])
        layers[-1].append(block.weights.clone())  # a block's memory is reused by the next one

    capture(loaded, batch, keep, budget_bytes=1 << 62, route=route, padding_side=padding_side, weights=weights)
    return torch.stack([torch.cat(blocks, dim=2) for blocks in layers], dim=1)
