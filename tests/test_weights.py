"""--weights attention|norm|rollout: norm-based weights and attention rollout."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import headscope
from headscope.corpus.types import Sentence
from headscope.engine.batch import collate
from headscope.engine.capture import capture_stacked
from headscope.engine.rollout import Rollout
from headscope.manifest import Manifest
from headscope.model.encode import Encoder
from headscope.model.gates import find_output_projections
from headscope.model.load import load_model
from reference import rollout_reference

TEXTS = ["the dog saw the cat .", "a man and a woman saw the river , she said", "he ran"]


def _examples(loaded) -> list:
    types = (getattr(loaded.model.config, "type_vocab_size", 0) or 0) > 1
    encoder = Encoder(loaded.tokenizer, 64, use_token_types=types)
    return [encoder.encode(i, "sentence", [Sentence(t.split(), "t.txt", i + 1)], None, Manifest(), False)
            for i, t in enumerate(TEXTS)]


def _plain_norm(loaded, batch) -> list[torch.Tensor]:
    """Norm-based weights by a loop over heads, keys and queries, from hooked value states."""
    attention = capture_stacked(loaded, batch)
    projections = find_output_projections(loaded.base)
    values: list[torch.Tensor] = []
    cap = sys.modules["headscope.engine.capture.attention"]  # where the attention function looks it up
    original = cap.head_value_norms

    def spy(stream, layer, value):
        values.append(value.clone())
        return original(stream, layer, value)

    cap.head_value_norms = spy
    try:
        capture_stacked(loaded, batch, weights="norm")
    finally:
        cap.head_value_norms = original
    out = []
    for layer, (proj, v) in enumerate(zip(projections, values, strict=True)):
        a = attention[:, layer]
        b, h, n, _ = a.shape
        w = proj.weight.detach().float()  # [hidden, h*d]
        d = w.shape[1] // h
        res = torch.zeros_like(a)
        for bi in range(b):
            for hi in range(h):
                fx = v[bi, hi].float() @ w[:, hi * d:(hi + 1) * d].t()  # [k, hidden]
                for i in range(n):
                    vec = (a[bi, hi, i][:, None] * fx).norm(dim=-1)
                    total = vec.sum()
                    res[bi, hi, i] = vec / total if total > 0 else vec
        out.append(res)
    return out


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_llama"])
def test_norm_weights_equal_a_plain_loop(request: pytest.FixtureRequest, name: str) -> None:
    loaded = load_model(str(request.getfixturevalue(name)), device="cpu")
    batch = collate(_examples(loaded), int(loaded.tokenizer.pad_token_id or 0))
    got = capture_stacked(loaded, batch, weights="norm")
    want = _plain_norm(loaded, batch)
    for layer, w in enumerate(want):
        torch.testing.assert_close(got[:, layer], w, atol=1e-5, rtol=1e-4)
    plain = capture_stacked(loaded, batch)
    assert not torch.allclose(got, plain, atol=1e-3)
    rows = got.sum(-1)[batch.mask[:, None, None, :].expand(-1, got.shape[1], got.shape[2], -1)]
    torch.testing.assert_close(rows, torch.ones_like(rows))


def test_rollout_equals_the_formula_on_three_layers() -> None:
    torch.manual_seed(0)
    a = torch.softmax(torch.randn(3, 2, 4, 4), -1)  # [layer, head, q, k], one sequence of 4
    roll = Rollout(torch.ones(1, 4, dtype=torch.bool))
    per_head = [roll.step(a[layer][None])[0] for layer in range(3)]
    ref = rollout_reference(a)
    eye = torch.eye(4)
    for layer in range(3):
        # the mean over heads is Abnar & Zuidema's R_l
        torch.testing.assert_close(per_head[layer].mean(0), ref[layer], atol=1e-6, rtol=1e-5)
    # hand-written second layer, head 1
    r0 = 0.5 * a[0].mean(0) + 0.5 * eye
    torch.testing.assert_close(per_head[1][1], (0.5 * a[1, 1] + 0.5 * eye) @ r0, atol=1e-6, rtol=1e-5)


def test_rollout_keeps_padding_zero() -> None:
    a = torch.zeros(1, 1, 3, 3)
    a[0, 0, :2, :2] = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    out = Rollout(torch.tensor([[True, True, False]])).step(a)
    assert out[0, 0, 2].abs().sum() == 0 and out[0, 0, :, 2].abs().sum() == 0
    torch.testing.assert_close(out[0, 0, :2, :2], torch.tensor([[0.625, 0.375], [0.5, 0.5]]))


def test_run_with_norm_weights_differs_and_is_recorded(tiny_bert: Path, text_file: Path, tmp_path: Path) -> None:
    common = dict(model=str(tiny_bert), text=[str(text_file)], quiet=True, max_length=20, analyses="surface",
                  report=False)
    plain = headscope.run(out=None, **common).heads
    norm = headscope.run(out=str(tmp_path / "n"), weights="norm", **common).heads
    numeric = plain.select_dtypes("number").columns
    assert not plain[numeric].equals(norm[numeric])
    assert json.loads((tmp_path / "n" / "run.json").read_text())["config"]["weights"] == "norm"
    roll = headscope.run(out=None, weights="rollout", **common).heads
    assert not plain[numeric].equals(roll[numeric])


def test_bad_combinations_error_clearly(tiny_mpnet: Path, text_file: Path) -> None:
    with pytest.raises(ValueError, match="weights must be"):
        headscope.run(model="x", weights="nope")
    with pytest.raises(ValueError, match=r"rollout.*similarity"):
        headscope.run(model="x", weights="rollout", analyses="surface,similarity")
    with pytest.raises(ValueError, match="--capture hooks"):
        headscope.run(model=str(tiny_mpnet), text=[str(text_file)], weights="norm", out=None, quiet=True,
                      analyses="surface", report=False)
