"""Michel et al.'s head importance: gate gradients against finite differences and against the chain rule
through the context slice, the normalisation, and the analysis end to end (MLM, decoder, contrastive)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import headscope
from headscope.analyses.importance import normalize_importance
from headscope.config import RunConfig
from headscope.engine.batch import collate
from headscope.engine.forwards import batch_loss, gate_gradient, loss_kind
from headscope.engine.inputs import Corpus
from headscope.manifest import Manifest
from headscope.model.encode import Encoder
from headscope.model.gates import HeadGates, find_output_projections
from headscope.model.load import load_model


def _setup(model_dir: Path, text_file: Path):
    loaded = load_model(str(model_dir), device="cpu")
    loaded.model.double()
    config = RunConfig(model=str(model_dir), text=[str(text_file)], max_length=64)
    examples = list(Corpus(config, Encoder(loaded.tokenizer, 64), Manifest()).examples())[:4]
    return loaded, collate(examples, int(loaded.tokenizer.pad_token_id))


def _mean_loss(loaded, batch, kind: str, values: torch.Tensor) -> float:
    info = loaded.info
    with HeadGates(loaded.model, info.n_layers, info.n_heads) as gates, torch.no_grad():
        gates.values = values.clone()
        loss, n = batch_loss(loaded, batch, kind, seed=0)
    return float(loss) / n


@pytest.mark.parametrize("which", ["tiny_bert_mlm", "tiny_llama", "tiny_bert"])
def test_gate_gradient_equals_finite_differences(which: str, request: pytest.FixtureRequest,
                                                 text_file: Path) -> None:
    loaded, batch = _setup(request.getfixturevalue(which), text_file)
    kind = loss_kind(loaded)
    assert kind == {"tiny_bert_mlm": "mlm_loss", "tiny_llama": "lm_loss", "tiny_bert": "contrastive_loss"}[which]
    grad, _, _ = gate_gradient(loaded, batch, kind, seed=0)
    info = loaded.info
    # Llama computes RMSNorm in float32 even in a float64 model: a wider step keeps that noise below the
    # step's O(eps^2) truncation error.
    eps = 1e-2 if which == "tiny_llama" else 1e-5
    fd = np.zeros_like(grad)
    for la in range(info.n_layers):
        for he in range(info.n_heads):
            up = torch.ones(info.n_layers, info.n_heads, dtype=torch.float64)
            down = up.clone()
            up[la, he] += eps
            down[la, he] -= eps
            fd[la, he] = (_mean_loss(loaded, batch, kind, up) - _mean_loss(loaded, batch, kind, down)) / (2 * eps)
    assert np.abs(grad).max() > 1e-6
    np.testing.assert_allclose(grad, fd, rtol=1e-3 if which == "tiny_llama" else 1e-5, atol=1e-9)


def test_gate_gradient_is_dot_of_context_gradient_with_head_output(tiny_bert_mlm: Path, text_file: Path) -> None:
    loaded, batch = _setup(tiny_bert_mlm, text_file)
    info = loaded.info
    grad, _, _ = gate_gradient(loaded, batch, "mlm_loss", seed=0)
    # At xi = 1 the gated input equals the context, so dL/dxi_h = <dL/dcontext_h, context_h>.
    seen: list[torch.Tensor] = []

    def keep(module, args):
        args[0].retain_grad()
        seen.append(args[0])

    loaded.model.requires_grad_(True)  # loaded frozen; the contexts must be in the graph to keep their grads
    handles = [p.register_forward_pre_hook(keep) for p in find_output_projections(loaded.model)]
    try:
        loss, n = batch_loss(loaded, batch, "mlm_loss", seed=0)
        (loss / n).backward()
    finally:
        for h in handles:
            h.remove()
    d = seen[0].shape[-1] // info.n_heads
    for la, x in enumerate(seen):
        heads = x.reshape(*x.shape[:-1], info.n_heads, d)
        g = x.grad.reshape(*x.shape[:-1], info.n_heads, d)
        dot = (heads * g).sum(dim=(0, 1, 3)).detach().numpy()
        np.testing.assert_allclose(grad[la], dot, rtol=1e-8, atol=1e-12)


def test_normalisation_as_bertology() -> None:
    raw = np.array([[3.0, 4.0], [1.0, 0.0]])
    layers = normalize_importance(raw, layers=True, overall=False)
    np.testing.assert_allclose(layers, [[0.6, 0.8], [1.0, 0.0]])
    both = normalize_importance(raw)
    np.testing.assert_allclose(both, [[0.6, 0.8], [1.0, 0.0]])  # already spans 0..1
    np.testing.assert_allclose(normalize_importance(raw, layers=False), [[0.75, 1.0], [0.25, 0.0]])


@pytest.mark.parametrize("which", ["tiny_bert_mlm", "tiny_llama"])
def test_importance_run_end_to_end(which: str, request: pytest.FixtureRequest, text_file: Path) -> None:
    result = headscope.run(model=str(request.getfixturevalue(which)), text=[str(text_file)],
                           analyses=["importance"], out=None, quiet=True, max_length=64)
    table = result.tables["importance"]
    assert len(table) == 8 and np.isfinite(table["importance_raw"]).all()
    assert table["importance"].min() == 0 and table["importance"].max() == pytest.approx(1.0)
    assert set(table["loss"]) == {"mlm_loss" if which == "tiny_bert_mlm" else "lm_loss"}
    assert "importance" in result.heads.columns


def test_importance_ranked_by_the_exact_effects(tiny_llama: Path, text_file: Path) -> None:
    """``--importance-ranking effects``: importance_raw is head_effects' exact effect, normalised as bertology;
    without head_effects in the run it stops before the model loads its passes."""
    result = headscope.run(model=str(tiny_llama), text=[str(text_file)], analyses=["importance", "head_effects"],
                           out=None, quiet=True, max_length=64, batch_size=4, importance_ranking="effects",
                           head_effects_sequences=2, head_effects_mean_sequences=2, head_effects_bootstrap=50)
    effects = result.tables["head_effects"].sort_values(["layer", "head"])["effect"].to_numpy(float).reshape(2, 4)
    table = result.tables["importance"].sort_values(["layer", "head"])
    np.testing.assert_array_equal(table["importance_raw"].to_numpy(float).reshape(2, 4), effects)
    np.testing.assert_allclose(table["importance"].to_numpy(float).reshape(2, 4), normalize_importance(effects))
    assert result.run["analyses"]["importance"]["ranking"] == "effects"
    with pytest.raises(ValueError, match="add head_effects"):
        headscope.run(model=str(tiny_llama), text=[str(text_file)], analyses=["importance"], out=None, quiet=True,
                      max_length=64, importance_ranking="effects")
