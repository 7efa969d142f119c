"""The capture's fast path (one buffer reused by every block and layer, the mask built once per forward pass and
added inside the matmul, softmax in place, the layer's output from the weights block by block) against a plain
reference: the textbook formula in float64 on synthetic inputs, and the model's own output on tiny models."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from headscope.engine.batch import collate
from headscope.manifest import Manifest
from headscope.model.encode import Encoder
from headscope.model.load import load_model

cap = importlib.import_module("headscope.engine.capture")  # the package (headscope.engine exports the function)
maths = importlib.import_module("headscope.engine.capture.blocks")  # the block maths, patched below


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float,
               real: torch.Tensor, softcap: float | None = None, bias: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scale [+ bias] [softcapped] + mask) in float64; padded rows and columns 0; and @ v."""
    s = q.double() @ k.double().transpose(-1, -2) * scale
    if bias is not None:
        s = s + bias.double()
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.double()
    s = s.masked_fill(~real[:, None, None, :], float("-inf"))
    w = torch.softmax(s, -1).nan_to_num(0.0) * real[:, None, :, None]
    return w, w @ v.double()


def _emit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float,
          real: torch.Tensor, budget: int, causal: bool = False, softcap: float | None = None,
          bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    blocks: list[torch.Tensor] = []
    stream = maths.Stream(lambda block: blocks.append(block.weights.clone()), {}, budget, None, real)
    out = maths.emit_blocks(stream, 0, q, k, mask, scale, softcap, bias, causal, v)
    return torch.cat(blocks, dim=2), out, len(blocks)


CASES = ["causal", "causal-none", "padding", "float-mask", "softcap", "bias", "bidirectional"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("rows", [64, 5])  # one block; blocks of 5 rows (the last one shorter)
def test_blocks_and_output_equal_the_formula(case: str, rows: int) -> None:
    torch.manual_seed(0)
    b, h, n, d = 3, 4, 23, 8
    q, k, v = (torch.randn(b, h, n, d) for _ in range(3))
    lengths = torch.tensor([23, 17, 9]) if case in ("padding", "float-mask", "bidirectional") else torch.full((b,), n)
    real = torch.arange(n)[None, :] < lengths[:, None]
    causal = case in ("causal", "causal-none", "padding", "softcap", "bias")
    tril = torch.ones(n, n, dtype=torch.bool).tril()
    mask: torch.Tensor | None = None
    if case in ("causal", "softcap", "bias"):
        mask = tril[None, None]  # shared by the batch, as transformers' mask for unpadded inputs
    elif case == "padding":
        mask = (tril[None] & real[:, None, :])[:, None]  # [batch, 1, query, key]
    elif case == "float-mask":
        mask = torch.zeros(b, 1, 1, n).masked_fill(~real[:, None, None, :], torch.finfo(torch.float32).min)
    softcap = 3.0 if case == "softcap" else None
    bias = torch.randn(1, h, n, n) if case == "bias" else None
    budget = rows * b * h * n * maths.BYTES_PER_WEIGHT
    weights, out, n_blocks = _emit(q, k, v, mask, 0.3, real, budget, causal, softcap, bias)
    assert n_blocks == -(-n // min(rows, n))
    ref_mask = tril[None, None] if causal and mask is None else mask
    ref_w, ref_out = _reference(q, k, v, ref_mask, 0.3, real, softcap, bias)
    torch.testing.assert_close(weights.double(), ref_w, atol=1e-6, rtol=0)
    assert out is not None
    torch.testing.assert_close(out.double(), (ref_out * real[:, None, :, None]).transpose(1, 2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("rows", [64, 7, 3])
@pytest.mark.parametrize("case", ["causal", "causal-none", "sliding", "bidirectional"])
def test_causal_layers_in_chunks_equal_the_formula(monkeypatch: pytest.MonkeyPatch, rows: int, case: str) -> None:
    """Long causal layers are computed chunk by chunk against the keys up to each chunk's last row."""
    monkeypatch.setattr(maths, "CAUSAL_CHUNK", 4)
    torch.manual_seed(1)
    b, h, n, d = 1, 3, 22, 8
    q, k, v = (torch.randn(b, h, n, d) for _ in range(3))
    real = torch.ones(b, n, dtype=torch.bool)
    tril = torch.ones(n, n, dtype=torch.bool).tril()
    mask = {"causal": tril, "causal-none": None, "sliding": tril & ~tril.tril(-5), "bidirectional": None}[case]
    mask = None if mask is None else mask[None, None]
    causal = case != "bidirectional"
    budget = rows * b * h * n * maths.BYTES_PER_WEIGHT
    weights, out, _ = _emit(q, k, v, mask, 0.25, real, budget, causal)
    ref_w, ref_out = _reference(q, k, v, mask if mask is not None or not causal else tril[None, None], 0.25, real)
    torch.testing.assert_close(weights.double(), ref_w, atol=1e-6, rtol=0)
    assert out is not None
    torch.testing.assert_close(out.double(), ref_out.transpose(1, 2), atol=1e-5, rtol=0)
    stream = maths.Stream(lambda block: None, {}, budget, None, real)
    add, _ = stream.additive_mask(mask, causal, n, n)
    assert (add is not None and stream.lower_triangular(add)) == causal


def test_the_mask_is_built_once_per_forward_pass() -> None:
    n = 16
    real = torch.ones(1, n, dtype=torch.bool)
    stream = maths.Stream(lambda block: None, {}, 1 << 30, None, real)
    mask = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
    first, exact = stream.additive_mask(mask, True, n, n)
    again, _ = stream.additive_mask(mask, True, n, n)
    assert exact and first is again and first is not None
    assert torch.equal(first[0, 0] == 0, mask[0, 0]) and torch.isinf(first[0, 0][~mask[0, 0]]).all()
    other, _ = stream.additive_mask(mask.clone(), True, n, n)
    assert other is not first  # another mask object (a sliding-window layer, say) gets its own


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2", "tiny_bert", "tiny_mistral"])
@pytest.mark.parametrize("budget", [1 << 30, 2000])  # whole layers; blocks of a few rows
def test_the_model_output_is_unchanged_by_the_capture(request: pytest.FixtureRequest, name: str,
                                                      budget: int) -> None:
    from headscope.corpus.types import Sentence

    loaded = load_model(str(request.getfixturevalue(name)), device="cpu")
    cap.ensure_route(loaded)
    assert loaded.route == "interface"
    encoder = Encoder(loaded.tokenizer, 64)
    texts = ["the dog saw the cat .", "a man and a woman saw the river , she said", "he ran"]
    examples = [encoder.encode(i, "sentence", [Sentence(t.split(), "t.txt", i + 1)], None, Manifest(), False)
                for i, t in enumerate(texts)]
    batch = collate(examples, int(loaded.tokenizer.pad_token_id))
    inputs = batch.model_inputs()
    with torch.inference_mode():
        plain = loaded.base(**inputs).last_hidden_state  # no capture: SDPA
    hidden: list[torch.Tensor] = []
    handle = loaded.base.register_forward_hook(lambda m, a, out: hidden.append(out.last_hidden_state.clone()))
    seen: list[int] = []
    try:
        cap.capture(loaded, batch, lambda block: seen.append(block.layer), budget)
    finally:
        handle.remove()
    real = batch.mask[:, :, None]
    torch.testing.assert_close(hidden[0] * real, plain * real, atol=1e-5, rtol=1e-5)
    assert sorted(set(seen)) == list(range(loaded.info.n_layers))


def test_blocks_share_one_buffer_so_a_kept_block_must_be_copied(tiny_llama: Path) -> None:
    """The documented contract: a block is valid during the call only (capture_stacked copies)."""
    from headscope.corpus.types import Sentence

    loaded = load_model(str(tiny_llama), device="cpu")
    cap.ensure_route(loaded)
    encoder = Encoder(loaded.tokenizer, 64)
    words = ["the", "dog", "saw", "the", "cat", "."]
    ex = encoder.encode(0, "sentence", [Sentence(words, "t.txt", 1)], None, Manifest(), False)
    batch = collate([ex], int(loaded.tokenizer.pad_token_id))
    pointers: set[int] = set()
    cap.capture(loaded, batch, lambda block: pointers.add(block.weights.data_ptr()), 1 << 30)
    assert len(pointers) == 1  # every layer in the same memory: no allocation per layer
    stacked = cap.capture_stacked(loaded, batch)
    assert not torch.equal(stacked[:, 0], stacked[:, 1])  # each layer kept its own weights


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2", "tiny_bert", "tiny_mistral", "gemma2"])
def test_outside_a_capture_the_model_runs_sdpas_own_mask_and_equals_its_eager_attention(
        request: pytest.FixtureRequest, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a capture (the ablations of head_effects, the losses) the mask is SDPA's own choice: skipped for
    ``is_causal`` on a batch without padding; the output is still the model's eager attention's, with padding
    and without, for a soft-capping Gemma-2 too (whose eager branch then builds the causal mask itself)."""
    import transformers.masking_utils as masking

    from headscope.corpus.types import Sentence
    from headscope.engine.capture.attention import IMPLEMENTATION
    from test_replay import make_tiny_gemma2

    path = make_tiny_gemma2(tmp_path / "gemma2", request.getfixturevalue("tiny_llama")) if name == "gemma2" \
        else request.getfixturevalue(name)
    loaded = load_model(str(path), device="cpu")
    cap.ensure_route(loaded)
    assert loaded.model.config._attn_implementation == IMPLEMENTATION
    masks: list[torch.Tensor | None] = []
    own = masking.sdpa_mask
    monkeypatch.setattr(masking, "sdpa_mask", lambda *a, **k: masks.append(own(*a, **k)) or masks[-1])
    encoder = Encoder(loaded.tokenizer, 64)
    texts = ["a man and a woman saw the river , she said", "the dog saw the cat and ran .", "he ran"]
    examples = [encoder.encode(i, "sentence", [Sentence(t.split(), "t.txt", i + 1)], None, Manifest(), False)
                for i, t in enumerate(texts)]
    for chosen in ([0], [0, 1, 2]):  # one sequence (no padding: the mask skipped), then padded rows
        batch = collate([examples[i] for i in chosen], int(loaded.tokenizer.pad_token_id))
        masks.clear()
        with torch.inference_mode():
            mine = loaded.base(**batch.model_inputs()).last_hidden_state
            loaded.model.set_attn_implementation("eager")
            try:
                eager = loaded.base(**batch.model_inputs()).last_hidden_state
            finally:
                loaded.model.set_attn_implementation(IMPLEMENTATION)
        real = batch.mask[:, :, None]
        torch.testing.assert_close(mine * real, eager * real, atol=1e-5, rtol=1e-5)
        if len(chosen) == 1 and name not in ("tiny_bert", "tiny_mistral"):  # (Mistral: every layer's window is
            assert masks and any(m is None for m in masks)  # shorter) SDPA's causal path, in a global layer at least
