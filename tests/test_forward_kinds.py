"""The kinds of forward (a tagged union): each refuses what it cannot use when it is built, the executor runs
each by its type, the contrastive forward written once gives one loss on every path, and the attention
function's one thread-local channel stays on its thread and is restored."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from headscope.config import RunConfig
from headscope.engine.batch import Batch, collate
from headscope.engine.capture import ensure_route
from headscope.engine.capture.attention import active_key_mask, masking_keys
from headscope.engine.forwards import (
    CONTRASTIVE_TEMPERATURE,
    FORWARD_KINDS,
    Ablate,
    Attribution,
    Forward,
    GateGradient,
    Generate,
    HeadSums,
    LMLoss,
    Loss,
    Observe,
    attention_gradients,
    batch_loss,
    run_forward,
    sequence_losses,
    split_halves,
)
from headscope.engine.forwards.executor import RUNNERS
from headscope.model.load import load_model

SENTENCES = ["The dog saw the cat and the cat ran.", "She said it was red.", "The king ate a big old book.",
             "A man saw the river by the house."]


def _batch(loaded: Any, tmp_path: Path) -> Batch:
    from headscope.engine.inputs import Corpus
    from headscope.manifest import Manifest
    from headscope.model.encode import Encoder

    text = tmp_path / "documents.txt"
    text.write_text("\n\n".join(SENTENCES) + "\n", encoding="utf-8")
    config = RunConfig(model="x", text=[str(text)], max_length=64)
    examples = list(Corpus(config, Encoder(loaded.tokenizer, 64), Manifest()).examples())
    return collate(examples, int(loaded.tokenizer.pad_token_id))


@pytest.mark.parametrize(("build", "error", "words"), [
    (lambda: Forward(), TypeError, "union of its kinds"),
    (lambda: Loss(atp=True), TypeError, "atp"),  # the old flags are gone
    (lambda: Loss(gates=np.ones((3, 2, 4))), ValueError, "per_sequence"),
    (lambda: Loss(gates=np.ones(8)), ValueError, "gates of shape"),
    (lambda: Loss(replace=np.zeros((2, 4, 8))), ValueError, "needs gates"),
    (lambda: Loss(kv_budget=np.full((2, 4), -1)), ValueError, "non-negative"),
    (lambda: Loss(kv_budget=np.ones(4, dtype=np.int64)), ValueError, "shape"),
    (lambda: LMLoss(gates=np.ones((3, 2, 4))), ValueError, r"\(n_layers, n_heads\)"),
    (lambda: GateGradient(gates=np.ones((3, 2, 4))), ValueError, "gates of shape"),
    (lambda: Attribution(replace=np.zeros((2, 4))), ValueError, "replace of shape"),
    (lambda: Ablate(rows=-1), ValueError, "rows"),
    (lambda: Ablate(heads=(3, -1)), ValueError, "non-negative"),
    (lambda: HeadSums(loss="lm"), ValueError, "'none' or 'objective'"),  # type: ignore[arg-type]
])
def test_each_kind_refuses_what_it_cannot_use(build: Any, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        build()


def test_the_kinds_that_make_sense_are_built() -> None:
    gates = np.ones((2, 4))
    assert Loss(gates=np.ones((3, 2, 4)), per_sequence=True).per_sequence
    assert Loss(gates=gates, replace=np.zeros((2, 4, 8)), kv_budget=np.zeros((2, 4), dtype=np.int64)).tag is None
    assert LMLoss(tag=3, gates=gates).tag == 3
    assert Ablate(rows=8, heads=(0, 5)).heads == (0, 5)


def test_the_executor_runs_each_kind_by_its_type() -> None:
    assert set(RUNNERS) == {*FORWARD_KINDS, Generate}

    class Unknown(Forward):
        pass

    with pytest.raises(TypeError, match="got Unknown"):
        run_forward(None, None, Unknown(), seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs on_block"):
        run_forward(None, None, Observe(), seed=0)  # type: ignore[arg-type]


def test_the_contrastive_loss_is_one_on_every_path(tiny_bert: Path, tmp_path: Path) -> None:
    """The summed loss (for gradients), per sequence (ablations) and with the attentions (sep_gradient) all
    come from one forward; each equals InfoNCE computed by hand from the two halves' mean-pooled states."""
    loaded = load_model(str(tiny_bert), device="cpu")
    loaded.model.double()
    batch = _batch(loaded, tmp_path)
    tok = loaded.tokenizer
    pooled = []
    with torch.no_grad():
        for x in split_halves(batch, tok.cls_token_id, tok.sep_token_id, tok.pad_token_id):
            h = loaded.base(**x).last_hidden_state.double()
            m = x["attention_mask"].double()[..., None]
            pooled.append((h * m).sum(1) / m.sum(1))
    a, b = (p / p.norm(dim=-1, keepdim=True) for p in pooled)
    sim = (a @ b.T / CONTRASTIVE_TEMPERATURE).numpy()
    by_hand = np.array([np.log(np.exp(sim[i]).sum()) - sim[i, i] for i in range(batch.size)])
    with torch.no_grad():
        summed, terms = batch_loss(loaded, batch, "contrastive_loss", seed=0)
        per, per_terms = sequence_losses(loaded, batch, "contrastive_loss", seed=0)
    seen, with_attention, attention_terms = attention_gradients(loaded, batch, "contrastive_loss", seed=0)
    np.testing.assert_allclose(per, by_hand, rtol=1e-5)  # float32 cross-entropy in sequence_losses
    assert float(summed) == pytest.approx(by_hand.sum(), rel=1e-12)
    assert with_attention == pytest.approx(by_hand.sum(), rel=1e-12)
    assert terms == attention_terms == batch.size and per_terms.tolist() == [1] * batch.size
    assert len(seen) == 2 and all(len(atts) == len(grads) == loaded.info.n_layers for atts, grads, _, _ in seen)


class _Recorder:
    """A key mask that changes nothing and counts the layers it was asked about."""

    refusal = "recorder: right padding only"

    def __init__(self) -> None:
        self.calls = 0

    def mask(self, module: torch.nn.Module, mask: torch.Tensor | None, query: torch.Tensor, keys: int
             ) -> torch.Tensor | None:
        self.calls += 1
        return mask


def test_the_key_mask_stays_on_its_thread_and_is_restored(tiny_llama: Path, tmp_path: Path) -> None:
    loaded = load_model(str(tiny_llama), device="cpu")
    assert ensure_route(loaded) == "interface"
    batch = _batch(loaded, tmp_path)
    outer, inner = _Recorder(), _Recorder()
    elsewhere: list[int] = []

    def other_thread() -> None:
        with torch.no_grad():
            loaded.model(**batch.model_inputs())
        elsewhere.append(outer.calls + inner.calls)

    with masking_keys(outer):
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert elsewhere == [0]  # the other thread's forward never saw this thread's mask
        with masking_keys(inner), torch.no_grad():
            loaded.model(**batch.model_inputs())
        assert (outer.calls, inner.calls) == (0, loaded.info.n_layers)
        assert active_key_mask() is outer  # the inner one restored the outer one
        with torch.no_grad():
            loaded.model(**batch.model_inputs())
        assert outer.calls == loaded.info.n_layers
    assert active_key_mask() is None
