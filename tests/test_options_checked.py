"""Analysis options: frozen, and refused before the model loads (one line, a usage error: exit 2 on the CLI)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import headscope
from headscope.analyses.registry import REGISTRY
from headscope.errors import UsageError


@pytest.mark.parametrize("name", sorted(n for n, cls in REGISTRY.items() if cls.Options is not None))
def test_options_are_frozen(name: str) -> None:
    options = REGISTRY[name].Options()
    field = dataclasses.fields(options)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(options, field, getattr(options, field))


@pytest.mark.parametrize(("options", "message"), [
    ({"analyses": ["span"], "span_resamples": 5}, "span_resamples must be at least 10"),
    ({"analyses": ["head_effects"], "head_effects_sequences": 0}, "head_effects_sequences must be at least 1"),
    ({"analyses": ["head_effects"], "head_effects_mean_sequences": 0}, "mean ablation needs"),
    ({"analyses": ["importance"], "importance_sequences": 0}, "importance_sequences must be at least 1"),
    ({"analyses": ["importance"], "importance_ranking": "effects"}, "add head_effects to --analyses"),
    ({"analyses": ["pruning"], "pruning_step": 1.5}, r"pruning_step must be in \(0, 1\]"),
    ({"analyses": ["decoder_heads"], "decoder_resamples": 3}, "decoder_resamples must be at least 10"),
    ({"analyses": ["retrieval"], "retrieval_needle": "a needle"}, "retrieval_needle and retrieval_question"),
    ({"analyses": ["similarity"], "similarity_sample": 0.0}, "similarity_sample must be in"),
    ({"analyses": ["probe"], "probe_variants": "nope"}, "unknown probe variant"),
])
def test_bad_options_are_refused_before_the_model_loads(tmp_path: Path, options: dict, message: str) -> None:
    # The model does not exist: an error about the option proves it came before any load.
    text = tmp_path / "t.txt"
    text.write_text("The cat sat on the mat.\n", encoding="utf-8")
    with pytest.raises(UsageError, match=message):
        headscope.run(model=str(tmp_path / "no-such-model"), text=[str(text)], quiet=True, out=None, **options)
