"""Replay of the head ablations from the cached layer inputs (issue 39): the same per-sequence losses as full
forwards (every layer run) on Llama, GPT-2, a BERT masked LM, a Mistral and a Gemma-2 whose sliding windows are
shorter than the sequences; the layers below the ablated one really skipped; and refused, with the reason,
where it cannot be exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from headscope.engine import chunked_loss
from headscope.engine.forwards import Ablate, Attribution, HeadSums, run_forward
from headscope.engine.replay import ReplayRefusedError, residual_layers
from headscope.model.load import load_model
from test_head_effects import _batch, _examples, documents  # noqa: F401 (documents: a fixture)

BUDGET = 2**28


def make_tiny_gemma2(directory: Path, llama: Path) -> Path:
    """A 2-layer Gemma-2 (alternating sliding-window and global layers, window 3; final logit soft-capping) with
    the tiny Llama's tokenizer."""
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(llama)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=8, intermediate_size=64, max_position_embeddings=128,
                          sliding_window=3, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    Gemma2ForCausalLM(config).save_pretrained(directory)
    return directory


def _ablations(loaded: Any, batch: Any, replay: bool, rows: int = 8, replace: np.ndarray | None = None,
               budget: int = BUDGET) -> Any:
    return run_forward(loaded, batch, Ablate(rows=rows, replace=replace, replay=replay), seed=0, budget_bytes=budget)


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2", "tiny_bert_mlm", "tiny_mistral", "gemma2"])
def test_replay_equals_full_forwards(which: str, request: pytest.FixtureRequest, documents: Path,  # noqa: F811
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The tiny vocabularies fit one block of the LM head's loss: blocks of 5 tokens x 7 entries make it many.
    monkeypatch.setattr(chunked_loss, "TOKENS", 5)
    monkeypatch.setattr(chunked_loss, "VOCAB", 7)
    path = make_tiny_gemma2(tmp_path / "gemma2", request.getfixturevalue("tiny_llama")) if which == "gemma2" \
        else request.getfixturevalue(which)
    loaded = load_model(str(path), device="cpu")
    batch = _batch(loaded, _examples(loaded, documents, [0, 1, 2, 8]))
    if which in ("tiny_mistral", "gemma2"):  # the window is shorter than the sequences: it matters
        assert int(batch.lengths.max()) > 4
    n_layers, n_heads = loaded.info.n_layers, loaded.info.n_heads
    sums = run_forward(loaded, batch, HeadSums(loss="objective"), seed=0)
    replace = sums.head_sums / sums.head_tokens  # mean ablation over these sequences
    for rep in (None, replace):
        for rows in (4, 8, 12):  # one head per forward, two, three (the last group of a layer shorter)
            fast = _ablations(loaded, batch, True, rows, rep)
            slow = _ablations(loaded, batch, False, rows, rep)
            assert fast.replay["mode"] == "replay" and slow.replay["mode"] == "full forwards"
            np.testing.assert_allclose(fast.sequence_loss, slow.sequence_loss, rtol=1e-6, atol=1e-6)
            np.testing.assert_array_equal(fast.sequence_terms, slow.sequence_terms)
            assert fast.ablated.shape == (n_layers * n_heads, 4)
            np.testing.assert_allclose(fast.ablated, slow.ablated, rtol=1e-6, atol=1e-6)
            # and each head's ablation changes the loss (the comparison is not of two baselines)
            assert np.abs(slow.ablated - slow.sequence_loss).max() > 5e-5
    expected = "model" if which == "gemma2" else "chunked"  # Gemma-2 soft-caps its logits after the head
    assert fast.replay["lm_head"] == expected


def test_the_layers_below_are_skipped(tiny_llama: Path, documents: Path) -> None:  # noqa: F811
    loaded = load_model(str(tiny_llama), device="cpu")
    batch = _batch(loaded, _examples(loaded, documents, [0, 1]))
    _ablations(loaded, batch, True, rows=2)  # the first batch of a model also runs its checks
    layers = residual_layers(loaded.model, 2)
    calls = [0, 0]
    handles = [layer.mlp.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, layer in enumerate(layers)]
    try:
        _ablations(loaded, batch, True, rows=2)  # 4 heads per layer, one per forward
    finally:
        for handle in handles:
            handle.remove()
    # the baseline, layer 0's 4 forwards; layer 1 also runs for layer 1's 4
    assert calls == [1 + 4, 1 + 4 + 4]


def test_replay_is_refused_with_the_reason(tiny_llama: Path, tiny_bert: Path, documents: Path) -> None:  # noqa: F811
    loaded = load_model(str(tiny_llama), device="cpu")
    batch = _batch(loaded, _examples(loaded, documents, [0, 1]))
    small = _ablations(loaded, batch, True, budget=1024)
    assert small.replay["mode"] == "full forwards" and "memory budget" in small.replay["why"]
    full = _ablations(loaded, batch, False)
    np.testing.assert_allclose(small.ablated, full.ablated, rtol=1e-6)
    # a budget for one sequence's cache but not two: the batch is replayed in two parts, the same losses
    one = 2 * batch.input_ids.shape[1] * 32 * 4  # layers x seq x hidden x float32
    parts = _ablations(loaded, batch, True, budget=one + 1)
    assert parts.replay["mode"] == "replay" and parts.replay["parts"] == 2
    np.testing.assert_allclose(parts.ablated, full.ablated, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(parts.sequence_loss, full.sequence_loss, rtol=1e-6, atol=1e-6)
    encoder = load_model(str(tiny_bert), device="cpu")  # no LM head: the contrastive loss
    out = _ablations(encoder, _batch(encoder, _examples(encoder, documents, [0, 1, 2])), True)
    assert out.replay["mode"] == "full forwards" and "contrastive" in out.replay["why"]
    with pytest.raises(ReplayRefusedError, match="2 attention output projections for 3 layers"):
        residual_layers(loaded.model, 3)

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.self_attn = torch.nn.Module()
            self.self_attn.o_proj = torch.nn.Linear(4, 4)

    loose = torch.nn.Module()  # two layers, but not in one list
    loose.first, loose.second = Block(), Block()
    with pytest.raises(ReplayRefusedError, match="no list of 2 layers"):
        residual_layers(loose, 2)


def test_a_model_passing_more_than_hidden_states_is_caught(tiny_llama: Path, documents: Path) -> None:  # noqa: F811
    """Layer 1 reads something layer 0 computes besides its output (a side channel, as a position bias would
    be): the first-batch check of a replay of the last layer finds the loss changed, and full forwards run."""
    loaded = load_model(str(tiny_llama), device="cpu")
    batch = _batch(loaded, _examples(loaded, documents, [0, 1]))
    layers = residual_layers(loaded.model, 2)
    side = {"x": 0.0}

    def reset(module: torch.nn.Module, args: Any, kwargs: Any) -> None:
        side["x"] = 0.0

    def mark(module: torch.nn.Module, args: Any, output: Any) -> None:
        side["x"] = 0.5

    def read(module: torch.nn.Module, args: Any, kwargs: Any) -> Any:
        if args:
            return (args[0] + side["x"], *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + side["x"]}

    loaded.base.register_forward_pre_hook(reset, with_kwargs=True)
    layers[0].mlp.register_forward_hook(mark)
    layers[1].register_forward_pre_hook(read, with_kwargs=True)
    out = _ablations(loaded, batch, True)
    assert out.replay["mode"] == "full forwards" and "did not give the baseline loss" in out.replay["why"]
    np.testing.assert_allclose(out.ablated, _ablations(loaded, batch, False).ablated, rtol=1e-6)


# --- AtP*: GradDrop -----------------------------------------------------------------------------------------

def _grad_drop_by_hand(loaded: Any, batch: Any, replace: np.ndarray, drop: int) -> np.ndarray:
    """AtP with layer ``drop``'s residual contribution cut out of the backward, written plainly: a forward whose
    layer ``drop`` outputs ``input + (output - input).detach()`` (the same value; the gradient reaches the
    input through the skip connection only), the next-token loss summed, ``-dL/dxi`` of per-row gates."""
    from headscope.model.gates import HeadGates

    layers = residual_layers(loaded.model, loaded.info.n_layers)

    def cut(module: torch.nn.Module, args: Any, kwargs: Any, output: Any) -> Any:
        x = args[0] if args else kwargs["hidden_states"]
        h = output if isinstance(output, torch.Tensor) else output[0]
        h = x + (h - x).detach()
        return h if isinstance(output, torch.Tensor) else (h, *output[1:])

    handle = layers[drop].register_forward_hook(cut, with_kwargs=True)
    try:
        with HeadGates(loaded.model, 2, 4) as gates:
            gates.values = torch.ones(batch.size, 2, 4, dtype=torch.float64, requires_grad=True)
            gates.replacement = torch.as_tensor(replace)
            logits = loaded.model(**batch.model_inputs()).logits
            labels = batch.input_ids.masked_fill(~batch.mask, -100)[:, 1:]
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                     ignore_index=-100, reduction="sum")
            loss.backward()
            return -gates.values.grad.numpy()
    finally:
        handle.remove()


def test_grad_drop_equals_a_backward_with_the_layer_cut_by_hand(tiny_llama: Path, documents: Path) -> None:  # noqa: F811
    """AtP*'s estimate for a head output (the QK fix does not apply to this node: its patch does not move its
    own attention scores) is AtP with GradDrop: checked against the backward with each layer cut by hand."""
    from headscope.analyses.head_effects import grad_drop_estimate

    loaded = load_model(str(tiny_llama), device="cpu")
    loaded.model.double()
    batch = _batch(loaded, _examples(loaded, documents, [0, 1, 2]))
    replace = np.random.default_rng(2).standard_normal((2, 4, 8))
    out = run_forward(loaded, batch, Attribution(grad_drop=True, replace=replace), seed=0)
    assert out.atp_dropped is not None and out.atp_dropped.shape == (3, 2, 2, 4)
    for drop in (0, 1):
        np.testing.assert_allclose(out.atp_dropped[:, drop], _grad_drop_by_hand(loaded, batch, replace, drop),
                                   rtol=1e-7, atol=1e-10)
    assert np.abs(out.atp_dropped[:, 1, 0] - out.atp[:, 0]).max() > 1e-6  # dropping layer 1 moves layer 0's
    np.testing.assert_array_equal(out.atp_dropped[:, 0, 1], out.atp[:, 1])  # and not layer 1's
    # the estimate: (|AtP_{-0}| + |AtP_{-1}|) / (L - 1) per head, each summed over sequences and normalised
    dropped = out.atp_dropped.reshape(3, 2, 8)
    by_hand = (np.abs(dropped[:, 0].sum(0)) + np.abs(dropped[:, 1].sum(0))) / 10.0 / 1
    np.testing.assert_allclose(grad_drop_estimate(dropped, 10.0), by_hand)


def test_the_analysis_gives_the_same_effects_replayed_and_reports_atp_star(tiny_llama: Path,
                                                                          documents: Path) -> None:  # noqa: F811
    from scipy.stats import spearmanr

    from test_head_effects import _run

    fast = _run(tiny_llama, documents, head_effects_atp_star=True)
    slow = _run(tiny_llama, documents, head_effects_replay="off")
    a, b = fast.tables["head_effects"], slow.tables["head_effects"]
    for column in ("effect", "effect_low", "effect_high", "effect_atp"):
        np.testing.assert_allclose(a[column].to_numpy(float), b[column].to_numpy(float), rtol=1e-6, atol=1e-6)
    summary = fast.run["analyses"]["head_effects"]
    assert summary["replay"]["mode"] == "replay" and summary["replay"]["lm_head"] == "chunked"
    assert slow.run["analyses"]["head_effects"]["replay"]["mode"] == "full forwards"
    star = summary["atp_star"]
    expected = spearmanr(a["effect_atp_star"].to_numpy(float), np.abs(a["effect"].to_numpy(float))).statistic
    assert star["spearman"] == pytest.approx(expected)
    assert (a["effect_atp_star"] >= 0).all() and "effect_atp_star" not in b


def test_verify_top_measures_atp_stars_top_and_a_random_control(tiny_llama: Path, documents: Path) -> None:  # noqa: F811
    from test_head_effects import _run

    every = _run(tiny_llama, documents, head_effects_atp_star=True).tables["head_effects"]
    every = every.sort_values(["layer", "head"]).reset_index(drop=True)
    result = _run(tiny_llama, documents, head_effects_verify_top=2)
    table = result.tables["head_effects"].sort_values(["layer", "head"]).reset_index(drop=True)
    verify = result.run["analyses"]["head_effects"]["verify_top"]
    star = every["effect_atp_star"].to_numpy(float)
    np.testing.assert_allclose(table["effect_atp_star"].to_numpy(float), star, rtol=1e-9)
    assert verify["top"] == [int(i) for i in np.argsort(-star, kind="stable")[:2]]
    assert len(verify["control"]) == 2 and not set(verify["control"]) & set(verify["top"])
    measured = np.isfinite(table["effect"].to_numpy(float))
    assert sorted(np.flatnonzero(measured).tolist()) == sorted(verify["top"] + verify["control"])
    # the verified heads' exact effects are those of the run that measured every head
    np.testing.assert_allclose(table["effect"].to_numpy(float)[measured], every["effect"].to_numpy(float)[measured],
                               rtol=1e-6, atol=1e-6)
    magnitude = np.abs(every["effect"].to_numpy(float))
    threshold = np.sort(magnitude[measured])[::-1][1]
    assert verify["threshold"] == pytest.approx(threshold)
    assert verify["picked_above"] == int((magnitude[verify["top"]] >= threshold).sum())
    assert verify["control_above"] == int((magnitude[verify["control"]] >= threshold).sum())
    with pytest.raises(ValueError, match="more than the model's 8 heads"):
        _run(tiny_llama, documents, head_effects_verify_top=5)
