"""Clark et al.'s Figure 3 (attention to [SEP] and |dL/dA| at it): the batched sums against a plain
per-sequence loop (batch size and padding invariance), the attention against the model's own weights, the
decoder's causal pairs, the analysis end to end, and that a run without it computes no gradient."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import headscope
from headscope.analyses.sep_gradient import SepGradient, with_eos
from headscope.config import RunConfig
from headscope.engine.batch import collate
from headscope.engine.capture import eager_attention
from headscope.engine.forwards import loss_kind, separator_id
from headscope.engine.inputs import Corpus
from headscope.manifest import Manifest
from headscope.model.encode import Encoder
from headscope.model.load import load_model
from headscope.model.losses import lm_labels
from reference import sep_gradient_batch


def _setup(model_dir: Path, text_file: Path, n: int = 4):
    loaded = load_model(str(model_dir), device="cpu")
    loaded.model.double()
    config = RunConfig(model=str(model_dir), text=[str(text_file)], max_length=64)
    examples = list(Corpus(config, Encoder(loaded.tokenizer, 64), Manifest()).examples())[:n]
    return loaded, examples


def _pad(loaded) -> int:
    return int(loaded.tokenizer.pad_token_id)


def _reference(loaded, batch, kind: str, causal: bool) -> dict[str, np.ndarray]:
    """One sequence at a time, with autograd.grad on the weights of a plain eager forward."""
    assert batch.size == 1
    sep_id = separator_id(loaded.tokenizer)
    inputs, labels = lm_labels(loaded, batch, seed=0)
    loaded.model.requires_grad_(True)
    try:
        with eager_attention(loaded):
            out = loaded.model(**inputs, output_attentions=True)
        logits = out.logits
        if causal:
            logits, labels = logits[:, :-1], labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits[0], labels[0], ignore_index=-100)  # the sequence's mean
        grads = torch.autograd.grad(loss, out.attentions)
    finally:
        loaded.model.requires_grad_(False)
    ids = batch.input_ids[0].tolist()
    n = len(ids)
    sep = [j for j in range(n) if ids[j] == sep_id]
    n_layers, n_heads = len(grads), grads[0].shape[1]
    att, grad = np.zeros((n_layers, n_heads)), np.zeros((n_layers, n_heads))
    rows = pairs = 0
    for i in range(n):
        cols = [j for j in sep if j <= i or not causal]
        if not cols:
            continue
        rows += 1
        pairs += len(cols)
        for la in range(n_layers):
            for he in range(n_heads):
                att[la, he] += sum(float(out.attentions[la][0, he, i, j].detach()) for j in cols)
                grad[la, he] += sum(abs(float(grads[la][0, he, i, j])) for j in cols)
    return {"attention": att, "gradient": grad, "rows": rows, "pairs": pairs}


def _accumulate(loaded, examples, batch_size: int, kind: str) -> SepGradient:
    acc = SepGradient()
    info = loaded.info
    acc.attention_, acc.gradient_ = np.zeros((info.n_layers, info.n_heads)), np.zeros((info.n_layers, info.n_heads))
    for name in ("rows_", "pairs_", "sequences_", "skipped_", "examples_", "loss_", "terms_", "batches_"):
        setattr(acc, name, np.zeros(1))
    for k in range(0, len(examples), batch_size):
        stats, loss, terms = sep_gradient_batch(loaded, collate(examples[k:k + batch_size], _pad(loaded)), kind, 0)
        acc.add(stats, loss, terms)
    return acc


def test_batched_sums_equal_a_per_sequence_loop(tiny_bert_mlm: Path, text_file: Path) -> None:
    loaded, examples = _setup(tiny_bert_mlm, text_file)
    kind = loss_kind(loaded)
    assert kind == "mlm_loss"
    assert len({len(ex.input_ids) for ex in examples}) > 1  # the batch of 4 is padded
    one, four = _accumulate(loaded, examples, 1, kind), _accumulate(loaded, examples, 4, kind)
    refs = [_reference(loaded, collate([ex], _pad(loaded)), kind, causal=False) for ex in examples]
    ref_att = sum(r["attention"] for r in refs) / sum(r["rows"] for r in refs)
    ref_grad = sum(r["gradient"] for r in refs) / sum(r["pairs"] for r in refs)
    assert four.rows_[0] == sum(r["rows"] for r in refs) and four.pairs_[0] == sum(r["pairs"] for r in refs)
    for acc in (one, four):
        att, grad = acc.values()
        np.testing.assert_allclose(att, ref_att, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-12)
    assert ref_grad.min() > 0


def test_sep_attention_equals_the_models_weights(tiny_bert_mlm: Path, text_file: Path) -> None:
    loaded, examples = _setup(tiny_bert_mlm, text_file, n=1)
    batch = collate(examples, _pad(loaded))
    stats, _, _ = sep_gradient_batch(loaded, batch, "mlm_loss", seed=0)
    inputs, _ = lm_labels(loaded, batch, seed=0)
    with torch.no_grad(), eager_attention(loaded):
        atts = loaded.model(**inputs, output_attentions=True).attentions
    sep = batch.input_ids[0] == loaded.tokenizer.sep_token_id
    assert int(sep.sum()) >= 1
    direct = torch.stack([a[0][:, :, sep].sum(-1).mean(-1) for a in atts]).numpy()  # [layer, head]
    np.testing.assert_allclose(stats["attention"] / stats["rows"], direct, rtol=1e-10)
    assert stats["rows"] == batch.input_ids.shape[1] and stats["skipped"] == 0


def test_decoder_uses_earlier_separators_only(tiny_llama: Path, text_file: Path) -> None:
    loaded, examples = _setup(tiny_llama, text_file, n=3)
    assert len(examples) >= 2
    eos = int(loaded.tokenizer.eos_token_id)
    assert separator_id(loaded.tokenizer) == eos
    batch = collate(examples, _pad(loaded))
    assert not bool(((batch.input_ids == eos) & batch.mask).any())  # plain text has no EOS
    none, _, _ = sep_gradient_batch(loaded, batch, "lm_loss", seed=0)
    assert none["rows"] == 0 and none["skipped"] == batch.size
    # Put an EOS inside the first two sequences: only rows at or after it (and keys up to the row) count.
    for row, pos in ((0, 3), (1, 2)):
        batch.input_ids[row, pos] = eos
    stats, _, _ = sep_gradient_batch(loaded, batch, "lm_loss", seed=0)
    refs = []
    for row in (0, 1):
        single = collate([examples[row]], _pad(loaded))
        single.input_ids[0] = batch.input_ids[row, :single.input_ids.shape[1]]
        refs.append(_reference(loaded, single, "lm_loss", causal=True))
    assert stats["skipped"] == batch.size - 2 and stats["rows"] == sum(r["rows"] for r in refs)
    np.testing.assert_allclose(stats["attention"], sum(r["attention"] for r in refs), rtol=1e-6)
    np.testing.assert_allclose(stats["gradient"], sum(r["gradient"] for r in refs), rtol=1e-6, atol=1e-12)


def test_with_eos_inserts_a_document_end_at_the_start(tiny_llama: Path, text_file: Path) -> None:
    loaded, examples = _setup(tiny_llama, text_file, n=3)
    batch = collate(examples, _pad(loaded))
    eos, seq = int(loaded.tokenizer.eos_token_id), batch.input_ids.shape[1]
    lengths = batch.lengths.tolist()
    for bos in (None, int(batch.input_ids[0, 0])):
        at = 0 if bos is None or not bool((batch.input_ids[:, 0] == bos).all()) else 1
        longer = with_eos(batch, eos, limit=1000, bos_id=bos)
        assert longer.input_ids.shape[1] == seq + 1
        assert bool((longer.input_ids[:, at] == eos).all()) and bool(longer.is_sep[:, at].all())
        for r, n in enumerate(lengths):
            assert torch.equal(longer.input_ids[r, :at], batch.input_ids[r, :at])
            assert torch.equal(longer.input_ids[r, at + 1:n + 1], batch.input_ids[r, at:n])
            assert int(longer.attention_mask[r].sum()) == n + 1 == int(longer.lengths[r])
            assert int(longer.unit_of_piece[r, at]) == -1
    assert not bool(((batch.input_ids == eos) & batch.mask).any())  # the input batch is left as it was
    # At the model's limit the last column is dropped.
    full = with_eos(batch, eos, limit=seq)
    longest = lengths.index(seq)
    assert full.input_ids.shape == batch.input_ids.shape and int(full.lengths[longest]) == seq
    assert torch.equal(full.input_ids[longest, 1:], batch.input_ids[longest, :-1])


def test_inserted_eos_gets_a_gradient(tiny_llama: Path, text_file: Path) -> None:
    loaded, examples = _setup(tiny_llama, text_file, n=3)
    batch = collate(examples, _pad(loaded))
    stats, _, _ = sep_gradient_batch(loaded, batch, "lm_loss", seed=0, append_eos=True)
    bos = loaded.tokenizer.bos_token_id
    at = int(bos is not None and bool((batch.input_ids[:, 0] == bos).all()))
    # Every row from the EOS on attends to it: all but the BOS row.
    assert stats["skipped"] == 0 and stats["rows"] == int(batch.lengths.sum()) + batch.size - at * batch.size
    assert (stats["gradient"] > 0).all()
    # The same as putting the EOS in by hand and running without it.
    manual = with_eos(batch, int(loaded.tokenizer.eos_token_id), int(loaded.info.max_length),
                      loaded.tokenizer.bos_token_id)
    plain, _, _ = sep_gradient_batch(loaded, manual, "lm_loss", seed=0)
    np.testing.assert_allclose(stats["gradient"], plain["gradient"], rtol=1e-12)


@pytest.mark.parametrize("which", ["tiny_bert", "tiny_llama"])
def test_sep_gradient_run_end_to_end(which: str, request: pytest.FixtureRequest, text_file: Path,
                                     tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = headscope.run(model=str(request.getfixturevalue(which)), analyses=["sep_gradient"],
                           text=[str(text_file)], out=str(out), quiet=True, sep_gradient_sequences=4)
    table = pd.read_csv(out / "sep_gradient.csv")
    assert len(table) == 8 and {"sep_attention", "sep_gradient", "rows", "pairs", "loss"} <= set(table.columns)
    heads = pd.read_csv(out / "heads.csv")
    assert {"sep_attention", "sep_gradient"} <= set(heads.columns)
    for ext in ("png", "svg"):
        assert (out / "figures" / f"sep_gradient_layers.{ext}").is_file()
    run_json = json.loads((out / "run.json").read_text())
    summary = run_json["analyses"]["sep_gradient"]
    n = min(4, run_json["counts"]["examples"])
    assert summary["sequences"] == n >= 2
    if which == "tiny_bert":  # contrastive loss over [CLS] half [SEP]: every half has its separator
        assert summary["loss"] == "contrastive_loss" and summary["separator_token"] == "[SEP]"
        assert np.isfinite(table["sep_gradient"]).all() and (table["sep_gradient"] > 0).all()
        assert ((table["sep_attention"] > 0) & (table["sep_attention"] < 1)).all()
        assert summary["skipped_sequences"] == 0
    else:  # a decoder's packed text has no EOS: one is appended to each sequence (auto)
        assert summary["loss"] == "lm_loss" and summary["separator_token"] == "</s>"
        assert summary["appended_eos"] is True and summary["skipped_sequences"] == 0
        assert np.isfinite(table["sep_gradient"]).all() and (table["sep_gradient"] > 0).all()
        assert ((table["sep_attention"] > 0) & (table["sep_attention"] < 1)).all()
        off = headscope.run(model=str(request.getfixturevalue(which)), analyses=["sep_gradient"],
                            text=[str(text_file)], out=None, quiet=True, sep_gradient_sequences=4,
                            sep_gradient_append_eos="no")
        off_summary = off.run["analyses"]["sep_gradient"]
        assert off_summary["skipped_sequences"] == n and off.tables["sep_gradient"]["sep_gradient"].isna().all()
    assert "sep_gradient" in result.tables
    again = headscope.run(model=str(request.getfixturevalue(which)), analyses=["sep_gradient"],
                          text=[str(text_file)], out=None, quiet=True, sep_gradient_sequences=4)
    pd.testing.assert_frame_equal(again.tables["sep_gradient"].reset_index(drop=True),
                                  result.tables["sep_gradient"].reset_index(drop=True))  # seeded


def test_run_without_sep_gradient_computes_no_gradient(tiny_bert: Path, text_file: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a gradient was computed")

    monkeypatch.setattr(SepGradient, "start", refuse)
    monkeypatch.setattr(torch.Tensor, "backward", refuse)
    monkeypatch.setattr(torch.autograd, "backward", refuse)
    result = headscope.run(model=str(tiny_bert), analyses=["surface"], text=[str(text_file)], out=None,
                           quiet=True)
    assert "sep_gradient" not in result.tables
    assert "sep_gradient" not in result.heads.columns
