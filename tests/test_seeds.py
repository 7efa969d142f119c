"""The run's named random streams (headscope.seeds): one number each, drawn the way the modules drew them."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from headscope.seeds import PER_EXAMPLE, ROOT, STREAMS, Seeds

SRC = Path(__file__).resolve().parents[1] / "src" / "headscope"


def test_stream_numbers_are_unique() -> None:
    numbers = list(STREAMS.values())
    assert len(numbers) == len(set(numbers)), sorted(numbers)
    assert not set(ROOT) & set(STREAMS) and not set(PER_EXAMPLE) & set(STREAMS)


def test_a_stream_is_the_seed_sequence_it_names() -> None:
    # The numbers are part of the results: a stream must draw exactly what default_rng([seed, number, ...]) draws.
    seeds = Seeds(7)
    assert seeds.key("retrieval.depths") == [7, 24]
    assert seeds.key("decoder_heads.probe", 3) == [7, 15, 3]
    np.testing.assert_array_equal(seeds.rng("span.random_heads").random(5),
                                  np.random.default_rng([7, 33]).random(5))
    np.testing.assert_array_equal(seeds.root("ablation").random(3), np.random.default_rng(7).random(3))
    with pytest.raises(KeyError):
        seeds.rng("no.such.stream")
    with pytest.raises(KeyError):
        seeds.root("retrieval.depths")


def test_every_named_stream_is_drawn_and_no_module_numbers_its_own() -> None:
    # Every stream name appears in the source outside this registry, and no module passes a bare stream number
    # to default_rng ([seed, 24] and the like): a new stream is declared in headscope.seeds.
    sources = {p: p.read_text(encoding="utf-8") for p in SRC.rglob("*.py") if p.name != "seeds.py"}
    text = "\n".join(sources.values())
    assert [name for name in STREAMS if f'"{name}"' not in text] == []
    bare = []
    for path, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "default_rng" and node.args
                    and isinstance(node.args[0], ast.List)
                    and any(isinstance(e, ast.Constant) and isinstance(e.value, int) for e in node.args[0].elts)):
                bare.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert bare == []
