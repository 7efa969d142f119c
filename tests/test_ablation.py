"""Head gates that really switch a head off, the ablation conditions, seeded MLM masks, and the ablation
analysis end to end on tiny random BERTs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import headscope
from headscope.analyses.ablation import conditions_from_clusters
from headscope.engine.batch import collate
from headscope.model.gates import HeadGates, find_output_projections
from headscope.model.load import load_model
from headscope.model.losses import mask_for_mlm


def _inputs(loaded) -> dict[str, torch.Tensor]:
    enc = loaded.tokenizer(["the dog saw the cat", "a man ran"], padding=True, return_tensors="pt")
    return dict(enc)


def test_gate_of_one_changes_nothing_and_zero_switches_the_head_off(tiny_bert: Path) -> None:
    loaded = load_model(str(tiny_bert), device="cpu")
    model = loaded.model
    inputs = _inputs(loaded)
    with torch.no_grad():
        plain = model(**inputs).last_hidden_state
    seen: list[torch.Tensor] = []
    projections = find_output_projections(model)
    assert len(projections) == 2
    gates = HeadGates(model, 2, 4)
    with gates, torch.no_grad():
        # Registered after the gates, so it sees the gated input of layer 1's output projection.
        spy = projections[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
        open_gates = model(**inputs).last_hidden_state
        gates.set([(1, 2)])
        closed = model(**inputs).last_hidden_state
        spy.remove()
    assert torch.equal(open_gates, plain)
    assert not torch.allclose(closed, plain, atol=1e-4)
    open_ctx, closed_ctx = (s.reshape(*s.shape[:-1], 4, -1) for s in seen)
    assert torch.all(closed_ctx[..., 2, :] == 0)
    assert torch.any(open_ctx[..., 2, :] != 0)
    torch.testing.assert_close(closed_ctx[..., [0, 1, 3], :], open_ctx[..., [0, 1, 3], :])
    with torch.no_grad():
        after = model(**inputs).last_hidden_state
    assert torch.equal(after, plain)  # detached on exit


def test_gates_give_head_importance_gradients(tiny_bert_mlm: Path) -> None:
    loaded = load_model(str(tiny_bert_mlm), device="cpu")
    inputs = _inputs(loaded)
    gates = HeadGates(loaded.model, 2, 4)
    gates.values.requires_grad_(True)
    with gates:
        logits = loaded.model(**inputs).logits
        logits.logsumexp(-1).mean().backward()
    assert gates.values.grad is not None and gates.values.grad.shape == (2, 4)
    assert torch.count_nonzero(gates.values.grad) == 8


def test_conditions_from_clusters() -> None:
    heads = pd.DataFrame({"layer": [0, 0, 0, 1, 1, 1], "head": [0, 1, 2, 0, 1, 2],
                          "cluster": [0, 1, 0, 1, 0, 1], "pattern": ["broad", "previous"] * 3,
                          "cluster_distance": [0.5, 0.1, 0.2, 0.3, 0.9, 0.05]})
    conds = conditions_from_clusters(heads, top=2, seed=0)
    kinds = [(c.kind, c.cluster) for c in conds]
    assert kinds == [("cluster", 0), ("random", 0), ("head", 0), ("head", 0),
                     ("cluster", 1), ("random", 1), ("head", 1), ("head", 1)]
    assert conds[0].heads == [(0, 0), (0, 2), (1, 1)]
    assert conds[1].heads and not set(conds[1].heads) & set(conds[0].heads) and len(conds[1].heads) == 3
    assert [c.heads for c in conds[2:4]] == [[(0, 2)], [(0, 0)]]  # nearest the centroid first
    assert [c.heads for c in conds[6:8]] == [[(1, 2)], [(0, 1)]]
    assert conds[4].pattern == "previous"


def test_mlm_masks_are_seeded_per_example_and_skip_special_tokens(tiny_bert_mlm: Path, text_file: Path) -> None:
    from headscope.config import RunConfig
    from headscope.engine.inputs import Corpus
    from headscope.manifest import Manifest
    from headscope.model.encode import Encoder

    loaded = load_model(str(tiny_bert_mlm), device="cpu")
    config = RunConfig(model=str(tiny_bert_mlm), text=[str(text_file)], max_length=64)
    corpus = Corpus(config, Encoder(loaded.tokenizer, 64), Manifest())
    examples = list(corpus.examples())
    pad, mask_id = loaded.tokenizer.pad_token_id, loaded.tokenizer.mask_token_id
    together, labels = mask_for_mlm(collate(examples, pad), mask_id, seed=3)
    for k, ex in enumerate(examples):
        alone, alone_labels = mask_for_mlm(collate([ex], pad), mask_id, seed=3)
        n = ex.length
        assert torch.equal(together["input_ids"][k, :n], alone["input_ids"][0, :n])
        assert torch.equal(labels[k, :n], alone_labels[0, :n])
        masked = labels[k, :n] != -100
        assert masked.any()
        assert not masked[torch.as_tensor(ex.is_cls | ex.is_sep)].any()
        assert torch.all(together["input_ids"][k, :n][masked] == mask_id)
        assert torch.equal(labels[k, :n][masked], torch.as_tensor(ex.input_ids)[masked])
    other, _ = mask_for_mlm(collate(examples, pad), mask_id, seed=4)
    assert not torch.equal(other["input_ids"], together["input_ids"])


@pytest.mark.parametrize("lm_head", [True, False])
def test_ablation_run_end_to_end(tiny_bert_mlm: Path, tiny_bert: Path, text_file: Path, lm_head: bool) -> None:
    model = str(tiny_bert_mlm if lm_head else tiny_bert)
    tables = []
    for batch_size in (1, 8):
        result = headscope.run(model=model, text=[str(text_file)], analyses=["ablation"], out=None, quiet=True,
                               batch_size=batch_size, distance_clusters=2, ablation_top=1, max_length=64)
        tables.append(result.tables["ablation"])
    table = tables[0]
    summary = result.run["analyses"]["ablation"]
    assert summary["metric"] == ("mlm_loss" if lm_head else "hidden_drift")
    # Its own pass is driven by the runner and counted: no "found no usable input" for it.
    assert summary["examples_used"] == summary["sequences"] == result.run["counts"]["examples"]
    assert not any("ablation" in note for note in result.run["notes"].get("analyses_without_input", []))
    base = table[table["kind"] == "baseline"].iloc[0]
    assert base["drift"] == pytest.approx(0.0, abs=1e-6)
    clusters = table[table["kind"] == "cluster"]
    assert len(clusters) == 2 and clusters["n_heads"].sum() == 8
    assert (table[table["kind"] == "head"]["n_heads"] == 1).all()
    assert (clusters["drift"] > 100 * max(base["drift"], 1e-9)).all()  # a random tiny BERT drifts little
    if lm_head:
        assert base["loss_increase"] == 0 and np.isfinite(base["loss"])
        np.testing.assert_allclose(table["effect"], table["loss_increase"])
    else:
        assert table["loss"].isna().all()
        np.testing.assert_allclose(table["effect"], table["drift"])
    # Seeded per example: the same numbers whatever the batching.
    np.testing.assert_allclose(tables[0]["effect"], tables[1]["effect"], rtol=1e-4, atol=1e-6)
    heads = result.heads
    assert {"cluster", "pattern", "cluster_distance"} <= set(heads.columns)


@pytest.mark.integration
def test_minilm_similarity_distance_ablation(minilm: str, text_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = headscope.run(model=minilm, text=[str(text_file)], analyses=["similarity", "distance", "ablation"],
                           out=str(out), quiet=True, similarity_sample=0.5, ablation_sequences=4, ablation_top=1)
    heads = pd.read_csv(out / "heads.csv")
    assert len(heads) == 72 and {"cluster", "pattern", "head_pattern", "rel_m1", "special_share"} <= set(heads)
    pairs = pd.read_csv(out / "similarity.csv")
    js = pairs.pivot_table(index=["layer_a", "head_a"], columns=["layer_b", "head_b"], values="js").to_numpy()
    assert js.shape == (72, 72) and np.allclose(js, js.T) and np.all(np.diag(js) == 0) and js.max() > 0
    assert len(pd.read_csv(out / "mds.csv")) == 72
    summary = result.run["analyses"]
    assert 0 < summary["similarity"]["tokens_used"] < summary["similarity"]["tokens_seen"]
    assert summary["ablation"]["metric"] == "hidden_drift"  # minilm has no LM head
    ablation = pd.read_csv(out / "ablation.csv")
    assert (ablation.loc[ablation["kind"] == "cluster", "effect"] > 0).all()
    for name in ("similarity_mds_layer", "similarity_mds_pattern", "distance_profile", "ablation_clusters"):
        assert (out / "figures" / f"{name}.png").is_file() and (out / "figures" / f"{name}.svg").is_file()
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert "reconstructed from the paper's title and abstract" in page


def test_gates_on_a_decoder_lm() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with HeadGates(model, 2, 4) as gates:
            open_gates = model(input_ids=ids).logits
            gates.set([(0, 3)])
            closed = model(input_ids=ids).logits
    assert len(find_output_projections(model)) == 2  # self_attn.o_proj, grouped-query attention
    assert torch.equal(open_gates, plain)
    assert not torch.allclose(closed, plain, atol=1e-4)
