"""Every architecture of the matrix (arch_matrix.py), a tiny random model each: headscope's capture gives every head's
whole attention map of the model's own eager ``output_attentions`` on every route it claims (batches of 1 and 3,
padded on either side, sequences longer than any sliding window), ``--weights norm`` equals Kobayashi et al.'s norms
computed by hand from the model's own value and output projections, headscope's head gates equal zeroing the head's
slice of the output projection's input by a hook written here, a KV budget equals the eager weights renormalised
over the keys it leaves, and every refused family is refused before the pass with one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from arch_matrix import ARCHITECTURES, VOCAB, Arch

from headscope.engine.batch import Batch
from headscope.engine.capture import capture_stacked, choose_route, eager_attention, ensure_route
from headscope.engine.forwards import kv_budget
from headscope.errors import UnsupportedModelError
from headscope.model.gates import OUTPUT_PROJECTIONS, HeadGates
from headscope.model.load import LoadedModel, load_model

EXACT = [a for a in ARCHITECTURES if a.exact]
REFUSED = [a for a in ARCHITECTURES if not a.exact]
#: Three sequences, all longer than the sliding window (arch_matrix.WINDOW); the batch pads the shorter two.
LENGTHS = (17, 12, 8)
TOL = 1e-5


def _save(arch: Arch, directory: Path) -> Path:
    import transformers

    from conftest import _byte_bpe

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = getattr(transformers, arch.config)(**arch.kwargs)
    model = getattr(transformers, arch.model)(config)
    with torch.no_grad():  # visible attention: random weights of std 0.02 give near-uniform maps
        for name, p in model.named_parameters():
            if p.dim() == 2 and ("q" in name.split(".")[-2] or "k" in name.split(".")[-2] or "query" in name
                                 or "key" in name or "qkv" in name.lower() or "c_attn" in name):
                p.normal_(0, 0.3)
    model.save_pretrained(directory)
    if arch.kind != "vision":
        _byte_bpe(bos=False).save_pretrained(directory)
    return directory


_CACHE: dict[str, LoadedModel] = {}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Any:
    def get(arch: Arch) -> LoadedModel:
        if arch.name not in _CACHE:
            path = _save(arch, tmp_path_factory.mktemp(arch.name.replace(" ", "_")))
            _CACHE[arch.name] = load_model(str(path), device="cpu")
        return _CACHE[arch.name]

    yield get
    _CACHE.clear()


def _ids() -> list[list[int]]:
    rng = np.random.default_rng(7)
    return [rng.integers(3, 400, n).tolist() for n in LENGTHS]


def _batch(seqs: list[list[int]], pad: int) -> Batch:
    """A right-padded batch of bare ids (position 0 is each sequence's first id)."""
    b, n = len(seqs), max(len(s) for s in seqs)
    ids = torch.full((b, n), pad, dtype=torch.int64)
    mask = torch.zeros(b, n, dtype=torch.int64)
    for k, s in enumerate(seqs):
        ids[k, :len(s)] = torch.tensor(s)
        mask[k, :len(s)] = 1
    lengths = mask.sum(1)
    no = torch.zeros(b, n, dtype=torch.bool)
    units = torch.where(mask.bool(), torch.arange(n)[None, :].expand(b, n), torch.full((b, n), -1))
    return Batch(input_ids=ids, attention_mask=mask, token_type_ids=None, segment=torch.zeros(b, n, dtype=torch.int64),
                 is_cls=no, is_sep=no, is_punct=no, unit_of_piece=units, lengths=lengths, n_units=lengths.clone(),
                 examples=[None] * b)  # type: ignore[list-item]


def _eager(loaded: LoadedModel, ids: list[int]) -> torch.Tensor:
    """The model's own eager weights of one unpadded sequence: [layer, head, query, key]."""
    with torch.no_grad(), eager_attention(loaded):
        out = loaded.base(input_ids=torch.tensor([ids]), output_attentions=True)
    return torch.stack([a[0].float() for a in out.attentions])


def _use(loaded: LoadedModel, route: str) -> None:
    loaded.route = None
    loaded.route = choose_route(loaded, route)  # type: ignore[arg-type]


def _check(got: torch.Tensor, refs: list[torch.Tensor], what: str) -> None:
    """``got`` [batch, layer, head, n, n] right-aligned against each sequence's own reference; padding exactly 0."""
    for k, ref in enumerate(refs):
        n = ref.shape[-1]
        torch.testing.assert_close(got[k, :, :, :n, :n], ref, atol=TOL, rtol=0,
                                   msg=lambda m, k=k: f"{what}, row {k}: {m}")
        if got.shape[-1] > n:
            assert got[k, :, :, n:].abs().max() == 0 and got[k, :, :, :, n:].abs().max() == 0


@pytest.mark.parametrize("arch", EXACT, ids=lambda a: a.name)
def test_every_head_equals_the_eager_map_on_every_route(models: Any, arch: Arch) -> None:
    loaded = models(arch)
    assert ensure_route(loaded) == arch.route, f"{arch.name}: --capture auto chose {loaded.route}"
    seqs = _ids()
    refs = [_eager(loaded, s) for s in seqs]
    assert refs[0].shape[:2] == (loaded.info.n_layers, loaded.info.n_heads)
    assert all(r.shape[-1] > (arch.window or 0) for r in refs)
    if arch.causal:
        assert torch.triu(refs[0], 1).abs().max() == 0
    if arch.window:  # the reference itself masks beyond the window in some layer, so the check covers it
        n = refs[0].shape[-1]
        far = torch.tril(torch.ones(n, n, dtype=torch.bool), -arch.window) | torch.triu(
            torch.ones(n, n, dtype=torch.bool), arch.window) if not arch.causal else torch.tril(
            torch.ones(n, n, dtype=torch.bool), -arch.window)
        assert any(float(refs[0][layer][..., far].abs().max()) == 0 for layer in range(refs[0].shape[0]))
        assert any(float(refs[0][layer][..., far].abs().max()) > 0 for layer in range(refs[0].shape[0])) or \
            arch.name == "Mistral"
    pad = int(loaded.tokenizer.pad_token_id or 0)
    try:
        for route in arch.routes:
            _use(loaded, route)
            got1 = capture_stacked(loaded, _batch(seqs[:1], pad))
            _check(got1, refs[:1], f"{arch.name} {route} batch 1")
            for side in ("right", "left"):
                got = capture_stacked(loaded, _batch(seqs, pad), padding_side=side)  # type: ignore[arg-type]
                _check(got, refs, f"{arch.name} {route} batch 3 {side}-padded")
    finally:
        _use(loaded, "auto")


def _named(model: torch.nn.Module, suffixes: tuple[str, ...]) -> list[torch.nn.Module]:
    for suffix in suffixes:
        found = [m for name, m in model.named_modules() if name.endswith("." + suffix) or name == suffix]
        if found:
            return found
    raise AssertionError(f"none of {suffixes}")


def _calls(modules: list[torch.nn.Module], run: Any, pre: bool) -> list[tuple[torch.nn.Module, torch.Tensor]]:
    """(module, its input or output) of every call in call order while ``run()`` runs."""
    seen: list[tuple[torch.nn.Module, torch.Tensor]] = []
    if pre:
        handles = [m.register_forward_pre_hook(lambda mod, args: seen.append((mod, args[0].detach())))
                   for m in modules]
    else:
        handles = [m.register_forward_hook(lambda mod, args, out: seen.append((mod, out.detach()))) for m in modules]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return seen


def _norm_by_hand(loaded: LoadedModel, arch: Arch, ids: list[int]) -> torch.Tensor:
    """Kobayashi et al.: A[i, j] ||v_j W_O^h|| / sum_j (...), from the value and output projections' own weights."""
    assert arch.value is not None
    heads = loaded.info.n_heads
    values = _named(loaded.base, (arch.value,))
    outs = _named(loaded.base, OUTPUT_PROJECTIONS)
    ref = _eager(loaded, ids)
    with eager_attention(loaded):
        v_calls = _calls(values, lambda: _eager(loaded, ids), pre=False)
        o_calls = _calls(outs, lambda: _eager(loaded, ids), pre=True)
    assert len(v_calls) == len(o_calls) == ref.shape[0]
    layers = []
    for layer, ((_, v), (proj, _)) in enumerate(zip(v_calls, o_calls, strict=True)):
        w = proj.weight.detach().float()
        w = w if type(proj).__name__ == "Conv1D" else w.t()  # [heads * d, hidden]
        d = w.shape[0] // heads
        v = v[0].float()  # [key, kv_heads * d], or the fused projection's output
        if arch.fused == "qkv":  # [query heads * d | kv * d | kv * d]
            kv = (v.shape[-1] - heads * d) // (2 * d)
            v = v[:, -kv * d:]
        elif arch.fused == "per_head":  # [head, (query, key, value), d]
            v = v.reshape(v.shape[0], heads, 3, d)[:, :, 2].reshape(v.shape[0], heads * d)
        elif arch.fused == "three":  # [(query, key, value), head, d]
            v = v.reshape(v.shape[0], 3, heads * d)[:, 2]
        kv = v.shape[-1] // d
        v = v.reshape(v.shape[0], kv, d).repeat_interleave(heads // kv, dim=1)  # [key, head, d]
        f = torch.einsum("khd,hde->hke", v, w.reshape(heads, d, -1))  # [head, key, hidden]
        weighted = ref[layer] * f.norm(dim=-1)[:, None, :]
        layers.append(weighted / weighted.sum(-1, keepdim=True))
    return torch.stack(layers)


@pytest.mark.parametrize("arch", [a for a in EXACT if a.value and a.route == "interface"], ids=lambda a: a.name)
def test_norm_weights_equal_kobayashi_by_hand(models: Any, arch: Arch) -> None:
    loaded = models(arch)
    ensure_route(loaded)
    seqs = _ids()
    refs = [_norm_by_hand(loaded, arch, s) for s in seqs]
    pad = int(loaded.tokenizer.pad_token_id or 0)
    plain = capture_stacked(loaded, _batch(seqs[:1], pad))
    assert (plain[0] - refs[0]).abs().max() > 1e-3  # the norms change the weights: the check can fail
    _check(capture_stacked(loaded, _batch(seqs[:1], pad), weights="norm"), refs[:1], f"{arch.name} norm batch 1")
    for side in ("right", "left"):
        got = capture_stacked(loaded, _batch(seqs, pad), padding_side=side, weights="norm")  # type: ignore[arg-type]
        _check(got, refs, f"{arch.name} norm batch 3 {side}-padded")


def _output(loaded: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = loaded.model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).float()


@pytest.mark.parametrize("arch", EXACT, ids=lambda a: a.name)
def test_head_gates_equal_zeroing_the_head_by_hand(models: Any, arch: Arch) -> None:
    loaded = models(arch)
    ensure_route(loaded)
    n_layers, heads = loaded.info.n_layers, loaded.info.n_heads
    ids = torch.tensor([_ids()[0]])
    whole = _output(loaded, ids)
    projections = _named(loaded.base, OUTPUT_PROJECTIONS)
    for layer, head in ((0, 1), (n_layers - 1, heads - 1)):
        count = [0]

        def zero(module: torch.nn.Module, args: tuple[Any, ...], layer: int = layer, head: int = head,
                 count: list[int] = count) -> Any:
            call, count[0] = count[0], count[0] + 1  # the call's place in the forward pass is its layer
            if call != layer:
                return None
            x = args[0].clone()
            d = x.shape[-1] // heads
            x[..., head * d:(head + 1) * d] = 0
            return (x, *args[1:])

        handles = [p.register_forward_pre_hook(zero) for p in projections]
        try:
            by_hand = _output(loaded, ids)
        finally:
            for h in handles:
                h.remove()
        assert count[0] == n_layers
        assert (by_hand - whole).abs().max() > 1e-4, f"{arch.name}: closing L{layer}H{head} changes nothing"
        with HeadGates(loaded.model, n_layers, heads) as gates:
            gates.set([(layer, head)])
            gated = _output(loaded, ids)
        torch.testing.assert_close(gated, by_hand, atol=TOL, rtol=0)
    torch.testing.assert_close(_output(loaded, ids), whole, atol=0, rtol=0)  # the gates are gone


@pytest.mark.parametrize("arch", [a for a in EXACT if a.causal and a.route == "interface"], ids=lambda a: a.name)
def test_kv_budget_is_the_eager_map_renormalised_over_the_keys_it_leaves(models: Any, arch: Arch) -> None:
    loaded = models(arch)
    ensure_route(loaded)
    n_layers, heads = loaded.info.n_layers, loaded.info.n_heads
    ids = _ids()[0]
    ref = _eager(loaded, ids)
    last, head, window = n_layers - 1, 1, 3
    windows = np.zeros((n_layers, heads), dtype=np.int64)
    windows[last, head] = window
    pad = int(loaded.tokenizer.pad_token_id or 0)
    with kv_budget(loaded, windows):
        got = capture_stacked(loaded, _batch([ids], pad))[0]
    n = len(ids)
    pos = torch.arange(n)
    keep = (pos[None, :] == 0) | ((pos[:, None] - pos[None, :]) < window)
    expected = ref.clone()
    kept = ref[last, head] * keep
    expected[last, head] = kept / kept.sum(-1, keepdim=True)
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)
    assert (expected[last, head] - ref[last, head]).abs().max() > 1e-3


@pytest.mark.parametrize("arch", REFUSED, ids=lambda a: a.name)
def test_refused_before_the_pass_with_one_line(tmp_path: Path, arch: Arch) -> None:
    path = _save(arch, tmp_path / "m")
    with pytest.raises(UnsupportedModelError) as info:
        ensure_route(load_model(str(path), device="cpu"))
    message = str(info.value)
    assert "\n" not in message and arch.refused in message, message
    assert str(path) in message or arch.config.removesuffix("Config").lower() in message.lower(), message


def test_the_cli_refuses_an_encoder_decoder_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from headscope.cli import main

    path = _save(next(a for a in REFUSED if a.name == "T5"), tmp_path / "t5")
    text = tmp_path / "t.txt"
    text.write_text("the dog saw the cat .\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["run", "--model", str(path), "--text", str(text), "--analyses", "surface", "--out", "",
                 "--quiet"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "encoder-decoder" in lines[0] and "T5ForConditionalGeneration" in lines[0], lines


def test_vocab_fits() -> None:
    from conftest import _byte_bpe

    assert len(_byte_bpe(bos=False)) <= VOCAB
