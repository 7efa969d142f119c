"""AtP*'s QK fix (issue 39): the engine's estimates for every head's query and key nodes against a hand-written
computation on an explicit forward (queries and keys rebuilt from the layer's own projections and rotary
positions, each patched pattern a softmax of its own, dL/dA by autograd on the model's eager weights), its
first-order agreement with plain AtP for a small patch, and the fact that makes it vanish for head_effects' node:
replacing a head's output by r is replacing its values by r."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from headscope.engine.atp_star import qk_attribution, recorded_attention
from headscope.engine.forwards import Loss, loss_kind, run_forward, sequence_losses
from headscope.model.load import load_model
from test_head_effects import _batch, _examples, documents  # noqa: F401 (documents: a fixture)


def _noise(shape: torch.Size, layer: int, which: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(100 * layer + which)
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float64)


def _patch(size: float) -> Any:
    """A definite patch of every query and key: ``x + size * |x|_rms * noise`` (seeded by layer)."""
    def patch(layer: int, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (query + size * query.pow(2).mean().sqrt() * _noise(query.shape, layer, 0).to(query.dtype),
                key + size * key.pow(2).mean().sqrt() * _noise(key.shape, layer, 1).to(key.dtype))
    return patch


def _llama_qk(module: torch.nn.Module, kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, float]:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    h = kwargs["hidden_states"]
    b, t, _ = h.shape
    d = module.head_dim
    q = module.q_proj(h).view(b, t, -1, d).transpose(1, 2)
    k = module.k_proj(h).view(b, t, -1, d).transpose(1, 2)
    cos, sin = kwargs["position_embeddings"]
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return q, k.repeat_interleave(q.shape[1] // k.shape[1], dim=1), d ** -0.5


def _gpt2_qk(module: torch.nn.Module, kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, float]:
    h = kwargs["hidden_states"]
    b, t, width = h.shape
    q, k, _ = module.c_attn(h).split(width, dim=2)
    heads = module.num_heads
    d = width // heads
    return (q.view(b, t, heads, d).transpose(1, 2), k.view(b, t, heads, d).transpose(1, 2), d ** -0.5)


def _by_hand(loaded: Any, batch: Any, size: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The QK-fixed estimates with plain torch: each patched row (query node) and each patched column (key
    node, one key at a time) softmaxed on its own over the keys the row sees, times dL/dA of the eager weights."""
    model = loaded.model
    gpt2 = model.config.model_type == "gpt2"
    modules = ([layer.attn for layer in model.transformer.h] if gpt2
               else [layer.self_attn for layer in model.model.layers])
    seen: list[tuple[torch.Tensor, torch.Tensor, float]] = []

    def keep(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        if gpt2 and "hidden_states" not in kwargs:
            kwargs = {"hidden_states": args[0]}
        with torch.no_grad():
            seen.append((_gpt2_qk if gpt2 else _llama_qk)(module, kwargs))

    handles = [m.register_forward_pre_hook(keep, with_kwargs=True) for m in modules]
    current = model.config._attn_implementation
    model.set_attn_implementation("eager")
    model.requires_grad_(True)  # the weights in the graph (the loaded model's parameters are frozen)
    try:
        out = model(**batch.model_inputs(), output_attentions=True)
    finally:
        model.requires_grad_(False)
        model.set_attn_implementation(current)
        for handle in handles:
            handle.remove()
    labels = batch.input_ids.masked_fill(~batch.mask, -100)[:, 1:]
    loss = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]),
                                             labels.reshape(-1), ignore_index=-100, reduction="sum")
    grads = torch.autograd.grad(loss, out.attentions)
    patch = _patch(size)
    n_layers, b, heads = len(seen), batch.size, seen[0][0].shape[1]
    query_part, key_part = np.zeros((b, n_layers, heads)), np.zeros((b, n_layers, heads))
    for layer, ((q, k, scale), grad) in enumerate(zip(seen, grads, strict=True)):
        q2, k2 = patch(layer, q, k)
        for row in range(b):
            n = int(batch.lengths[row])
            visible = torch.tril(torch.ones(q.shape[2], q.shape[2], dtype=torch.bool))
            visible[:, n:] = False  # padding keys (right padding)
            for head in range(heads):
                s = (q[row, head] @ k[row, head].T) * scale
                a = torch.softmax(s.masked_fill(~visible, -torch.inf), -1)
                g = grad[row, head]
                s_q = (q2[row, head] @ k[row, head].T) * scale
                a_q = torch.softmax(s_q.masked_fill(~visible, -torch.inf), -1)
                query_part[row, layer, head] = float(((a_q - a) * g)[:n].sum())
                for key in range(n):
                    s_k = s.clone()
                    s_k[:, key] = (q[row, head] @ k2[row, head, key]) * scale
                    a_k = torch.softmax(s_k.masked_fill(~visible, -torch.inf), -1)
                    key_part[row, layer, head] += float(((a_k - a) * g)[:n].sum())
    return query_part, key_part, float(loss.detach())


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_qk_fix_equals_a_hand_written_estimate(which: str, request: pytest.FixtureRequest,
                                               documents: Path) -> None:  # noqa: F811
    loaded = load_model(str(request.getfixturevalue(which)), device="cpu")
    loaded.model.double()
    batch = _batch(loaded, _examples(loaded, documents, [0, 8, 2]))  # lengths differ: right padding
    assert len(set(batch.lengths.tolist())) > 1
    out = qk_attribution(loaded, batch, loss_kind(loaded), 0, _patch(1000.0))
    query_part, key_part, loss = _by_hand(loaded, batch, 1000.0)
    assert out.loss == pytest.approx(loss, rel=1e-7)  # the same loss (eager softmaxes in float32)
    assert out.query.shape == (3, 2, 4)
    # 1e-6 of the largest: Llama's eager attention takes its softmax in float32 (2e-7 relative per weight)
    np.testing.assert_allclose(out.query, query_part, rtol=1e-6, atol=1e-6 * np.abs(query_part).max())
    np.testing.assert_allclose(out.key, key_part, rtol=1e-6, atol=1e-6 * np.abs(key_part).max())
    # a patch this large is far from linear: the fix changes the estimates (otherwise the test says nothing)
    assert np.abs(out.query - out.query_linear).max() > 0.1 * np.abs(out.query).max()
    assert np.abs(out.key - out.key_linear).max() > 0.1 * np.abs(out.key).max()


def test_qk_fix_agrees_with_plain_atp_to_first_order(tiny_llama: Path, documents: Path) -> None:  # noqa: F811
    """For a patch of size e the QK-fixed and the linear estimate differ by O(e^2): relative error O(e)."""
    loaded = load_model(str(tiny_llama), device="cpu")
    loaded.model.double()
    batch = _batch(loaded, _examples(loaded, documents, [0, 8, 2]))
    errors = []
    for size in (1e-2, 1e-3):
        out = qk_attribution(loaded, batch, loss_kind(loaded), 0, _patch(size))
        for fixed, linear in ((out.query, out.query_linear), (out.key, out.key_linear)):
            assert np.abs(linear).max() > 0
            errors.append(np.abs(fixed - linear).max() / np.abs(linear).max())
    assert max(errors[2:]) < 1e-2
    assert errors[2] < 0.2 * errors[0] and errors[3] < 0.2 * errors[1]  # ten times smaller patch: ~100x


def test_a_head_output_replaced_is_its_values_replaced(tiny_llama: Path, documents: Path) -> None:  # noqa: F811
    """head_effects' node: a head's output replaced by r at every token gives the same losses as its values
    replaced by r at every key (rows of A sum to 1), queries and keys untouched, so AtP*'s QK fix has nothing
    to act on for this node."""
    loaded = load_model(str(tiny_llama), device="cpu")
    loaded.model.double()
    batch = _batch(loaded, _examples(loaded, documents, [0, 8, 2]))
    kind = loss_kind(loaded)
    replace = np.random.default_rng(3).standard_normal((2, 4, 8))
    for layer, head in ((0, 1), (1, 3)):
        gates = np.ones((2, 4))
        gates[layer, head] = 0.0
        gated = run_forward(loaded, batch, Loss(per_sequence=True, gates=gates, replace=replace), seed=0)

        def values(at: int, value: torch.Tensor, layer: int = layer, head: int = head) -> torch.Tensor:
            if at != layer:
                return value
            value = value.clone()
            value[:, head] = torch.as_tensor(replace[layer, head], dtype=value.dtype)
            return value

        with recorded_attention(loaded, value_patch=values), torch.no_grad():
            patched, _ = sequence_losses(loaded, batch, kind, 0)
        with torch.no_grad():
            plain, _ = sequence_losses(loaded, batch, kind, 0)
        assert np.abs(patched - plain).max() > 1e-3  # the patch matters
        np.testing.assert_allclose(patched, gated.sequence_loss, rtol=1e-6)  # the losses in float32 (sequence_losses)


def test_the_recorded_attention_is_the_models_own_on_a_batch_without_padding(tiny_llama: Path,
                                                                              documents: Path) -> None:  # noqa: F811
    """One sequence (no padding: a mask SDPA would skip for ``is_causal``): the recording still gets the causal
    mask written out, and its forward gives the model's own eager losses."""
    loaded = load_model(str(tiny_llama), device="cpu")
    batch = _batch(loaded, _examples(loaded, documents, [8]))
    assert bool(batch.mask.all())
    kind = loss_kind(loaded)
    with recorded_attention(loaded) as records, torch.no_grad():
        mine, _ = sequence_losses(loaded, batch, kind, 0)
    current = loaded.model.config._attn_implementation
    loaded.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            own, _ = sequence_losses(loaded, batch, kind, 0)
    finally:
        loaded.model.set_attn_implementation(current)
    assert records and all(r.mask is not None for r in records)
    np.testing.assert_allclose(mine, own, rtol=1e-6)
