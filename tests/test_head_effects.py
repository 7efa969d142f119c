"""Head effects (issue 30): exact zero and mean ablation against gates, hooks and losses computed by hand, the
means merged across batches and shards, per-row gates against one head at a time, attribution patching
against its formula and against finite differences, and the Spearman correlation against scipy's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import headscope
from headscope.analyses.head_effects import HeadEffects, HeadEffectsOptions
from headscope.config import RunConfig
from headscope.engine.batch import Batch, collate
from headscope.engine.forwards import Attribution, HeadSums, Loss, loss_kind, run_forward
from headscope.engine.results import RunResult
from headscope.model.gates import HeadGates, find_output_projections
from headscope.model.load import load_model
from headscope.runner.context import open_context
from headscope.runner.intervene import _Batches, run_passes

SENTENCES = ["The dog saw the cat.", "The cat ran to the house.", "She said it was red.", "The king ate a book.",
             "A man saw the river.", "The city was big and old.", "He ran, she ran.", "The house was red.",
             "The queen said the old man ate the red book.", "They saw a big house by the river."]


@pytest.fixture()
def documents(tmp_path: Path) -> Path:
    """One sentence per document: one sequence each (ten sequences)."""
    path = tmp_path / "documents.txt"
    path.write_text("\n\n".join(SENTENCES) + "\n", encoding="utf-8")
    return path


def _examples(loaded: Any, text: Path, indices: list[int] | None = None) -> list[Any]:
    from headscope.engine.inputs import Corpus
    from headscope.manifest import Manifest
    from headscope.model.encode import Encoder

    config = RunConfig(model="x", text=[str(text)], max_length=64)
    examples = list(Corpus(config, Encoder(loaded.tokenizer, 64), Manifest()).examples())
    return examples if indices is None else [examples[i] for i in indices]


def _batch(loaded: Any, examples: list[Any]) -> Batch:
    return collate(examples, int(loaded.tokenizer.pad_token_id))


def _next_token_losses(loaded: Any, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """Each sequence's summed next-token loss over its real tokens, and their count, by hand."""
    logits = loaded.model(**batch.model_inputs()).logits.double()
    labels = batch.input_ids.masked_fill(~batch.mask, -100)[:, 1:]
    per = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=-100,
                                            reduction="none")
    return per.sum(-1).detach().numpy(), (labels != -100).sum(-1).numpy()


def _run(model: Path, text: Path, **kwargs: Any) -> RunResult:
    options = {"head_effects_sequences": 4, "head_effects_mean_sequences": 4, "head_effects_bootstrap": 200,
               "batch_size": 4, **kwargs}
    return headscope.run(model=str(model), text=[str(text)], analyses=["head_effects"], out=None, quiet=True,
                         max_length=64, **options)


def _grid(table: Any, column: str) -> np.ndarray:
    return table.sort_values(["layer", "head"])[column].to_numpy(float)


# --- the engine's additions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["tiny_llama", "tiny_bert_mlm", "tiny_bert"])
def test_per_row_gates_give_the_losses_of_one_head_at_a_time(which: str, request: pytest.FixtureRequest,
                                                             documents: Path) -> None:
    loaded = load_model(str(request.getfixturevalue(which)), device="cpu")
    loaded.model.double()
    batch = _batch(loaded, _examples(loaded, documents, [0, 1, 2, 3]))
    rng = np.random.default_rng(0)
    replace = rng.standard_normal((2, 4, 8))
    closed = [(0, 1), (1, 3), (0, 0)]
    gates = np.ones((3, 2, 4))
    for j, (la, he) in enumerate(closed):
        gates[j, la, he] = 0.0
    for rep in (None, replace):
        together = run_forward(loaded, batch, Loss(per_sequence=True, gates=gates, replace=rep), seed=0)
        assert together.sequence_loss is not None and together.sequence_loss.shape == (3, 4)
        for j in range(3):
            alone = run_forward(loaded, batch, Loss(per_sequence=True, gates=gates[j], replace=rep), seed=0)
            np.testing.assert_allclose(together.sequence_loss[j], alone.sequence_loss, rtol=1e-9, atol=1e-10)
            np.testing.assert_array_equal(together.sequence_terms[j], alone.sequence_terms)
        # and closing a head changes something (the check is not vacuous)
        plain = run_forward(loaded, batch, Loss(per_sequence=True), seed=0)
        assert np.abs(together.sequence_loss - plain.sequence_loss).max() > 1e-6


def test_per_row_gates_must_match_the_rows(tiny_llama: Path, documents: Path) -> None:
    loaded = load_model(str(tiny_llama), device="cpu")
    batch = _batch(loaded, _examples(loaded, documents, [0, 1]))
    with HeadGates(loaded.model, 2, 4) as gates, torch.no_grad():
        gates.values = torch.ones(3, 2, 4)
        gates.values[:, 0, 0] = 0
        with pytest.raises(ValueError, match="per-row gates for 3 rows"):
            loaded.model(**batch.model_inputs())


def test_head_sums_equal_a_hook_by_hand(tiny_bert_mlm: Path, documents: Path) -> None:
    loaded = load_model(str(tiny_bert_mlm), device="cpu")
    loaded.model.double()
    batch = _batch(loaded, _examples(loaded, documents, [0, 4, 8]))
    out = run_forward(loaded, batch, HeadSums(loss="none"), seed=0)
    seen: list[torch.Tensor] = []
    handles = [p.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
               for p in find_output_projections(loaded.model)]
    try:
        with torch.no_grad():
            loaded.base(**batch.model_inputs())
    finally:
        for h in handles:
            h.remove()
    mask = batch.mask.numpy()
    assert out.head_tokens == int(mask.sum())
    for la, x in enumerate(seen):
        heads = x.numpy().reshape(*x.shape[:2], 4, -1)
        np.testing.assert_allclose(out.head_sums[la], heads[mask].sum(0), rtol=1e-12, atol=1e-12)


def test_atp_is_the_replacement_times_the_gradient(tiny_llama: Path, documents: Path) -> None:
    loaded = load_model(str(tiny_llama), device="cpu")
    loaded.model.double()
    batch = _batch(loaded, _examples(loaded, documents, [0, 1, 2]))
    replace = np.random.default_rng(1).standard_normal((2, 4, 8))
    out = run_forward(loaded, batch, Attribution(replace=replace), seed=0)
    assert out.atp is not None and out.atp.shape == (3, 2, 4)
    # By hand: dL/dx at each projection's input, then sum over tokens of (r - x) . dL/dx per sequence and head.
    seen: list[torch.Tensor] = []

    def keep(module: Any, args: tuple[Any, ...]) -> None:
        args[0].retain_grad()
        seen.append(args[0])

    loaded.model.requires_grad_(True)
    handles = [p.register_forward_pre_hook(keep) for p in find_output_projections(loaded.model)]
    try:
        logits = loaded.model(**batch.model_inputs()).logits.double()
        labels = batch.input_ids.masked_fill(~batch.mask, -100)[:, 1:]
        torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=-100,
                                          reduction="sum").backward()
    finally:
        for h in handles:
            h.remove()
        loaded.model.requires_grad_(False)
    hand = np.zeros((3, 2, 4))
    for la, x in enumerate(seen):
        heads = x.detach().numpy().reshape(*x.shape[:2], 4, -1)
        grad = x.grad.numpy().reshape(heads.shape)
        hand[:, la] = ((replace[la][None, None] - heads) * grad).sum(axis=(1, 3))
    assert np.abs(hand).max() > 1e-4
    np.testing.assert_allclose(out.atp, hand, rtol=1e-6, atol=1e-9)


def test_atp_matches_finite_differences_towards_the_replacement(tiny_bert_mlm: Path, documents: Path) -> None:
    loaded = load_model(str(tiny_bert_mlm), device="cpu")
    loaded.model.double()
    batch = _batch(loaded, _examples(loaded, documents, [0, 1, 2, 3]))
    replace = np.random.default_rng(2).standard_normal((2, 4, 8))
    atp = run_forward(loaded, batch, Attribution(replace=replace), seed=0).atp
    assert atp is not None
    eps = 1e-5
    for la, he in [(0, 0), (0, 3), (1, 1), (1, 2)]:
        # L(xi) with the head's output xi * x + (1 - xi) * r: the estimate is L(0) - L(1) ~ -dL/dxi at 1.
        up, down = np.ones((2, 4)), np.ones((2, 4))
        up[la, he], down[la, he] = 1 + eps, 1 - eps
        lu = run_forward(loaded, batch, Loss(gates=up, replace=replace), seed=0).loss
        ld = run_forward(loaded, batch, Loss(gates=down, replace=replace), seed=0).loss
        assert atp[:, la, he].sum() == pytest.approx(-(lu - ld) / (2 * eps), rel=1e-5, abs=1e-8)


# --- the analysis ---------------------------------------------------------------------------------------------

def test_zero_ablation_equals_gates_closed_by_hand(tiny_llama: Path, documents: Path) -> None:
    result = _run(tiny_llama, documents, head_effects_ablation="zero")
    summary = result.run["analyses"]["head_effects"]
    held = summary["held_out_examples"]
    assert len(held) == 4 and summary["mean_sequences"] == 0 and summary["samples_disjoint"] is None
    loaded = load_model(str(tiny_llama), device="cpu")
    batch = _batch(loaded, _examples(loaded, documents, held))
    with torch.no_grad():
        base, terms = _next_token_losses(loaded, batch)
    expected = np.zeros(8)
    for i in range(8):
        with HeadGates(loaded.model, 2, 4) as gates, torch.no_grad():
            gates.values[i // 4, i % 4] = 0.0
            closed, _ = _next_token_losses(loaded, batch)
        expected[i] = (closed.sum() - base.sum()) / terms.sum()
    table = result.tables["head_effects"]
    assert np.abs(expected).max() > 1e-4
    np.testing.assert_allclose(_grid(table, "effect"), expected, rtol=1e-4, atol=2e-6)
    assert summary["baseline_loss"] == pytest.approx(base.sum() / terms.sum(), rel=1e-6)
    assert set(table["ablation"]) == {"zero"} and set(table["loss"]) == {"lm_loss"}
    assert set(table["sequences"]) == {4}
    assert {"effect", "effect_low", "effect_high", "effect_atp"} <= set(result.heads.columns)


def test_mean_ablation_replaces_by_the_mean_over_the_mean_sample(tiny_llama: Path, documents: Path) -> None:
    result = _run(tiny_llama, documents)
    summary = result.run["analyses"]["head_effects"]
    held, mean = summary["held_out_examples"], summary["mean_examples"]
    assert len(held) == 4 and len(mean) == 4 and not set(held) & set(mean) and summary["samples_disjoint"]
    loaded = load_model(str(tiny_llama), device="cpu")
    projections = find_output_projections(loaded.model)
    # The mean of each head's output over the real tokens of the mean sample, from a hook by hand.
    sample = _batch(loaded, _examples(loaded, documents, mean))
    seen: list[torch.Tensor] = []
    handles = [p.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone())) for p in projections]
    try:
        with torch.no_grad():
            loaded.model(**sample.model_inputs())
    finally:
        for h in handles:
            h.remove()
    mask = sample.mask.numpy()
    means = np.stack([x.double().numpy().reshape(*x.shape[:2], 4, -1)[mask].mean(0) for x in seen])
    assert summary["mean_tokens"] == int(mask.sum())
    batch = _batch(loaded, _examples(loaded, documents, held))
    with torch.no_grad():
        base, terms = _next_token_losses(loaded, batch)
    expected = np.zeros(8)
    for i in range(8):
        la, he = divmod(i, 4)

        def replace(module: Any, args: tuple[Any, ...], he: int = he, la: int = la) -> tuple[Any, ...]:
            x = args[0].clone()
            heads = x.view(*x.shape[:2], 4, -1)
            heads[:, :, he] = torch.as_tensor(means[la, he], dtype=x.dtype)
            return (x, *args[1:])

        handle = projections[la].register_forward_pre_hook(replace)
        try:
            with torch.no_grad():
                ablated, _ = _next_token_losses(loaded, batch)
        finally:
            handle.remove()
        expected[i] = (ablated.sum() - base.sum()) / terms.sum()
    assert np.abs(expected).max() > 1e-4
    np.testing.assert_allclose(_grid(result.tables["head_effects"], "effect"), expected, rtol=1e-4, atol=2e-6)
    # Zero ablation differs from mean ablation: the mean is really used.
    zero = _run(tiny_llama, documents, head_effects_ablation="zero")
    assert np.abs(_grid(zero.tables["head_effects"], "effect") - expected).max() > 1e-4


def test_batch_size_changes_nothing(tiny_llama: Path, documents: Path) -> None:
    one = _run(tiny_llama, documents, batch_size=1)
    four = _run(tiny_llama, documents, batch_size=4, head_effects_rows=16)
    s1, s4 = (r.run["analyses"]["head_effects"] for r in (one, four))
    assert s1["mean_tokens"] == s4["mean_tokens"] and s1["held_out_examples"] == s4["held_out_examples"]
    for column in ("effect", "effect_low", "effect_high", "effect_atp"):
        np.testing.assert_allclose(_grid(one.tables["head_effects"], column),
                                   _grid(four.tables["head_effects"], column), rtol=1e-4, atol=1e-6)


def _drive(ctx: Any, analysis: HeadEffects, spec: Any, batches: list[Batch]) -> None:
    """Run ``spec``'s forwards of ``batches`` into ``analysis``, as the engine does."""
    for batch in batches:
        forwards = spec.forwards(batch) if callable(spec.forwards) else spec.forwards
        for forward in forwards:
            analysis.update_pass(batch, forward, run_forward(ctx.loaded, batch, forward, int(ctx.config.seed),
                                                             budget_bytes=ctx.config.attention_bytes()))


def test_means_and_effects_merge_across_shards(tiny_llama: Path, documents: Path) -> None:
    config = RunConfig(model=str(tiny_llama), text=[str(documents)], max_length=64, batch_size=2, quiet=True,
                       out=None, analyses=["head_effects"])
    ctx = open_context(config)
    actx = ctx.for_analyses(examples=sum(1 for _ in ctx.corpus.examples()))
    options = HeadEffectsOptions(head_effects_sequences=4, head_effects_mean_sequences=4, head_effects_bootstrap=200)
    whole = HeadEffects(options)
    whole.start(actx)
    run_passes(ctx, whole, actx, {})
    one, two, three = HeadEffects(options), HeadEffects(options), HeadEffects(options)
    for a in (one, two, three):
        a.start(actx)
    passes = one.passes(actx, {})
    means = next(passes)
    batches = _Batches(ctx).of(means.rows)
    assert len(batches) >= 2
    _drive(ctx, one, means, batches[:1])
    _drive(ctx, two, means, batches[1:])
    one.merge(two)
    assert one.head_tokens_ == whole.head_tokens_
    np.testing.assert_allclose(one.head_sum_["sum"] / one.head_tokens_, whole.head_sum_["sum"] / whole.head_tokens_,
                               rtol=1e-12, atol=1e-15)
    ablations = next(passes)  # built from the merged means
    batches = _Batches(ctx).of(ablations.rows)
    _drive(ctx, one, ablations, batches[:1])
    _drive(ctx, three, ablations, batches[1:])
    assert set(one._replay) == set(three._replay) == set(whole._replay) == {"replay"}  # each as the run ran it
    one.merge(three)
    got, want = one.finalize(actx, {}), whole.finalize(actx, {})
    for column in ("effect", "effect_low", "effect_high", "effect_atp"):
        np.testing.assert_allclose(got.tables["head_effects"][column], want.tables["head_effects"][column],
                                   rtol=1e-9, atol=1e-12)
    assert got.summary["held_out_examples"] == want.summary["held_out_examples"]


def test_spearman_and_blind_spot_from_the_table(tiny_llama: Path, documents: Path) -> None:
    from scipy.stats import spearmanr

    result = _run(tiny_llama, documents, head_effects_top=3)
    table = result.tables["head_effects"]
    atp = result.run["analyses"]["head_effects"]["atp"]
    assert atp["spearman"] == pytest.approx(spearmanr(table["effect_atp"], table["effect"]).statistic, abs=1e-12)
    # The blind spot: top 3 by exact effect, in the bottom half (4 of 8) by the estimate.
    top = set(table.nlargest(3, "effect")["head_name"])
    bottom = set(table.nsmallest(4, "effect_atp")["head_name"])
    assert {d["head"] for d in atp["blind_spot"]} == top & bottom
    assert set(table.loc[table["atp_blind_spot"], "head_name"]) == top & bottom
    boot = result.run["analyses"]["head_effects"]["bootstrap"]
    assert boot["sequences"] == 4 and boot["resamples"] == 200 and boot["confidence"] == 0.95
    assert "4 held-out sequences" in boot["rests_on"] and "fewer than 10" in boot["note"]


def test_contrastive_and_masked_lm_losses(tiny_bert: Path, tiny_bert_mlm: Path, documents: Path) -> None:
    for model, kind in ((tiny_bert, "contrastive_loss"), (tiny_bert_mlm, "mlm_loss")):
        result = _run(model, documents)
        table = result.tables["head_effects"]
        assert set(table["loss"]) == {kind} and len(table) == 8
        assert np.isfinite(table[["effect", "effect_low", "effect_high", "effect_atp"]].to_numpy()).all()
        assert loss_kind(load_model(str(model), device="cpu")) == kind


def test_pruning_takes_the_effects_as_an_order(tiny_bert_mlm: Path, documents: Path) -> None:
    result = headscope.run(model=str(tiny_bert_mlm), text=[str(documents)], analyses=["pruning", "head_effects"],
                           out=None, quiet=True, max_length=64, pruning_step=0.5, pruning_seeds=0,
                           pruning_sequences=2, pruning_bootstrap=50, head_effects_sequences=3,
                           head_effects_mean_sequences=3, head_effects_bootstrap=50)
    pruning = result.tables["pruning"]
    ranked = pruning[pruning["order"] == "head_effects"]
    assert list(ranked["n_pruned"]) == [0, 4, 8]
    summary = result.run["analyses"]["pruning"]
    assert "head_effects" in summary["rankings"]["used"] and "head_effects" not in summary["rankings"]["absent"]


def test_report_section(tiny_llama: Path, documents: Path, tmp_path: Path) -> None:
    from headscope.report.sections import SECTIONS, meaning

    result = _run(tiny_llama, documents)
    section = SECTIONS["head_effects"](result, tmp_path)
    assert section is not None and section.figures == ["head_effects_heads"]
    assert "Spearman" in section.html and "held-out sequences" in section.html
    assert meaning("effect_atp")


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="head_effects_ablation"):
        HeadEffectsOptions(head_effects_ablation="median")  # type: ignore[arg-type]
