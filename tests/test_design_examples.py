"""The two worked examples of docs/design.md ("Adding an analysis"), run as written: an observer and an
intervention, registered from the page's code blocks, each against a value computed here by hand."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import headscope
from headscope.analyses import registry
from headscope.analyses.base import Analysis, AnalysisResult, head_frame
from headscope.analyses.stats import mean_or_nan
from headscope.config import RunConfig
from headscope.engine.forwards import CorpusRows, LMLoss, Pass
from headscope.engine.inputs import Corpus
from headscope.manifest import Manifest
from headscope.model.encode import Encoder
from headscope.model.gates import HeadGates
from headscope.model.load import load_model
from headscope.seeds import STREAMS

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"


def _blocks() -> list[str]:
    part = DESIGN.read_text().split("## Adding an analysis", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", part, re.S)


@pytest.fixture()
def examples_registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(STREAMS, "layer_off.sample", 40)  # the line the page says to add to headscope/seeds.py
    before = dict(registry.REGISTRY)
    namespace = {"register": registry.register, "Analysis": Analysis, "AnalysisResult": AnalysisResult,
                 "head_frame": head_frame, "mean_or_nan": mean_or_nan, "torch": torch, "np": np, "pd": pd,
                 "LMLoss": LMLoss, "Pass": Pass, "CorpusRows": CorpusRows}
    blocks = _blocks()
    assert len(blocks) == 2, "design.md shows one observer and one intervention"
    for code in blocks:
        exec(compile(code, str(DESIGN), "exec"), namespace)  # our own documentation, run as written
    try:
        yield
    finally:
        registry.REGISTRY.clear()
        registry.REGISTRY.update(before)


def _examples(model: Path, text: Path, max_length: int) -> tuple[object, list]:
    loaded = load_model(str(model), device="cpu")
    config = RunConfig(model=str(model), text=[str(text)], max_length=max_length)
    return loaded, list(Corpus(config, Encoder(loaded.tokenizer, max_length), Manifest()).examples())


def test_the_observer_example_measures_attention_to_the_first_token(
        examples_registered: None, tiny_llama: Path, text_file: Path) -> None:
    result = headscope.run(model=str(tiny_llama), text=[str(text_file)], analyses=["first_token"], out=None,
                           quiet=True, max_length=24, batch_size=3)
    loaded, examples = _examples(tiny_llama, text_file, 24)
    sums, rows = None, 0
    for ex in examples:
        ids = torch.as_tensor(ex.input_ids)[None]
        with torch.no_grad():
            att = torch.stack(loaded.model(input_ids=ids, output_attentions=True).attentions)  # [layer, 1, h, q, k]
        first = att[:, 0, :, :, 0].double().sum(-1)  # [layer, head]
        sums = first if sums is None else sums + first
        rows += ids.shape[1]
    assert sums is not None
    expected = (sums / rows).numpy().reshape(-1)
    np.testing.assert_allclose(result.heads["first_token"].to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_the_intervention_example_switches_each_layer_off(
        examples_registered: None, tiny_llama: Path, text_file: Path) -> None:
    result = headscope.run(model=str(tiny_llama), text=[str(text_file)], analyses=["layer_off"], out=None,
                           quiet=True, max_length=24, batch_size=3)
    loaded, examples = _examples(tiny_llama, text_file, 24)
    info = loaded.info
    assert len(examples) < 64  # the example's sample is then the whole corpus

    def loss(gates: np.ndarray | None) -> float:
        total = terms = 0.0
        with HeadGates(loaded.model, info.n_layers, info.n_heads) as hg, torch.no_grad():
            if gates is not None:
                hg.values.copy_(torch.as_tensor(gates))
            for ex in examples:
                ids = torch.as_tensor(ex.input_ids)[None]
                logits = loaded.model(input_ids=ids).logits.float()
                total += float(torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum"))
                terms += ids.shape[1] - 1
        return total / terms

    base = loss(None)
    expected = []
    for layer in range(info.n_layers):
        gates = np.ones((info.n_layers, info.n_heads))
        gates[layer] = 0.0
        expected.append(loss(gates) - base)
    table = result.tables["layer_off"]
    np.testing.assert_allclose(table["loss_increase"].to_numpy(), expected, rtol=1e-4, atol=1e-5)
    assert result.run["analyses"]["layer_off"]["examples_used"] == len(examples)
