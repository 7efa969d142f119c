"""Bring your own model (#37): a model object analysed in place, with the same results as the same model named,
and left exactly as it was (parameters, hooks, flags, config), after a run, an exception or Ctrl-C."""

from __future__ import annotations

import copy
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import headscope
from conftest import make_tiny_bert
from headscope.errors import AttentionUnavailableError, UnsupportedModelError, UsageError
from headscope.model.inmemory import weights_fingerprint
from headscope.runner.checkpoint import CheckpointError

TEXTS = ["The dog saw the cat.\nThe cat ran to the house.\nShe said it was red.",
         "A man and a woman saw the river.\nThe city was big and old.",
         "He ran, she ran.\nThe king ate a book."]


def assert_same_tables(a: headscope.RunResult, b: headscope.RunResult, atol: float = 1e-6) -> None:
    """Every numeric column of the heads table and of every other table equal within ``atol``."""
    pairs = [("heads", a.heads, b.heads), *((k, a.tables[k], b.tables[k]) for k in a.tables)]
    assert set(a.tables) == set(b.tables)
    for name, x, y in pairs:
        assert list(x.columns) == list(y.columns), name
        assert len(x) == len(y), name
        for column in x.columns:
            if pd.api.types.is_numeric_dtype(x[column]) and pd.api.types.is_numeric_dtype(y[column]):
                np.testing.assert_allclose(x[column].to_numpy(float), y[column].to_numpy(float), atol=atol,
                                           rtol=0, err_msg=f"{name}.{column}")
            else:
                def shown(c: pd.Series) -> list[str]:
                    return c.astype(object).where(c.notna(), "").astype(str).tolist()  # NaN as a CSV writes it

                assert shown(x[column]) == shown(y[column]), f"{name}.{column}"


def state_of(model: torch.nn.Module) -> dict[str, Any]:
    """Everything a run must leave as it was: parameter bits, grads, requires_grad, training flags, hooks and
    the config (its attention implementation included)."""
    hooks = {name: {attr: list(getattr(m, attr)) for attr in ("_forward_hooks", "_forward_pre_hooks",
                                                                "_backward_hooks", "_forward_hooks_with_kwargs",
                                                                "_forward_pre_hooks_with_kwargs")}
             for name, m in model.named_modules()}
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": hooks,
        "attn": model.config._attn_implementation,
        "config": model.config.to_dict(),
    }


def assert_state(model: torch.nn.Module, before: dict[str, Any]) -> None:
    after = state_of(model)
    assert after["params"].keys() == before["params"].keys()
    for name, value in before["params"].items():
        assert torch.equal(after["params"][name], value), name  # bit-equal
    for name, grad in before["grads"].items():
        assert (grad is None) == (after["grads"][name] is None), name
        if grad is not None:
            assert torch.equal(grad, after["grads"][name]), name
    for key in ("requires_grad", "training", "hooks", "attn", "config"):
        assert after[key] == before[key], key


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("byo") / "bert", lm_head=True)


def load(path: Path, cls: str = "AutoModelForMaskedLM") -> tuple[Any, Any]:
    import transformers

    model = getattr(transformers, cls).from_pretrained(path)
    return model, transformers.AutoTokenizer.from_pretrained(path)


def written(texts: list[str], path: Path) -> Path:
    path.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("maker", ["bert", "llama"])
def test_model_object_gives_the_tables_of_the_same_model_named(maker: str, bert_dir: Path, tiny_llama: Path,
                                                               tmp_path: Path) -> None:
    path, cls = (bert_dir, "AutoModelForMaskedLM") if maker == "bert" else (tiny_llama, "AutoModelForCausalLM")
    analyses = ["surface", "examples", "distance"] if maker == "bert" else ["surface", "decoder_heads"]
    named = headscope.run(model=str(path), text=[str(written(TEXTS, tmp_path / "t.txt"))], analyses=analyses,
                          out=None, quiet=True)
    model, tokenizer = load(path, cls)
    mine = headscope.run(model=model, tokenizer=tokenizer, texts=TEXTS, analyses=analyses, out=None, quiet=True)
    assert_same_tables(named, mine)
    memory = mine.run["model"]["memory"]
    assert memory["source"] == "memory" and mine.run["config"]["model"] == "<memory>"
    assert memory["class"].endswith(type(model).__name__) and memory["name_or_path"] == str(path)
    assert memory["dtype"] == "float32" and memory["devices"] == ["cpu"]
    assert memory["config"]["num_attention_heads"] == 4
    assert memory["weights_fingerprint"] == weights_fingerprint(model)
    assert mine.run["files"][0]["kind"] == "list" and mine.run["files"][0]["rows"] == len(TEXTS)


def test_the_fingerprint_tells_two_models_apart_and_ignores_where_they_live(bert_dir: Path) -> None:
    model, _ = load(bert_dir)
    same, _ = load(bert_dir)
    assert weights_fingerprint(model) == weights_fingerprint(same)
    with torch.no_grad():  # one fine-tuning step moves every element the fingerprint reads
        for p in same.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    assert weights_fingerprint(model) != weights_fingerprint(same)
    other = copy.deepcopy(model)
    other.to(torch.float64)
    assert weights_fingerprint(other) != weights_fingerprint(model)  # dtype is part of what is hashed


def test_the_model_is_left_exactly_as_it_was(bert_dir: Path) -> None:
    model, tokenizer = load(bert_dir)
    model.train()  # a model in the middle of fine-tuning: training mode, some layers frozen, a grad held
    model.bert.embeddings.requires_grad_(False)
    first = next(model.bert.encoder.parameters())
    first.grad = torch.ones_like(first)
    model.config.output_hidden_states = False
    before = state_of(model)
    assert before["attn"] == "sdpa"
    # importance takes gradients through the model: none may reach the model's own .grad
    result = headscope.run(model=model, tokenizer=tokenizer, texts=TEXTS, analyses=["surface", "importance"],
                           out=None, quiet=True)
    assert result.run["notes"]["capture"]["route"] == "interface"
    assert_state(model, before)
    assert model.training and not model.bert.embeddings.word_embeddings.weight.requires_grad


def test_the_tokenizer_is_not_changed(tiny_llama: Path) -> None:
    model, tokenizer = load(tiny_llama, "AutoModelForCausalLM")
    tokenizer.pad_token = None
    headscope.run(model=model, tokenizer=tokenizer, texts=TEXTS, analyses=["surface"], out=None, quiet=True)
    assert tokenizer.pad_token is None  # the run padded with a copy


class BoomError(RuntimeError):
    pass


def test_the_model_is_restored_after_an_exception_in_the_middle_of_a_pass(bert_dir: Path) -> None:
    model, tokenizer = load(bert_dir)
    calls = []

    def fail(module: Any, args: Any, output: Any) -> None:
        calls.append(1)
        if len(calls) == 3:  # after the probe pass and a batch: in the middle of the main pass
            raise BoomError("in the middle")

    handle = model.bert.encoder.layer[1].register_forward_hook(fail)
    before = state_of(model)
    with pytest.raises(BoomError):
        headscope.run(model=model, tokenizer=tokenizer, texts=TEXTS * 3, analyses=["surface"], batch_size=1,
                      out=None, quiet=True)
    assert_state(model, before)
    handle.remove()
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("how", ["signal", "raise"])
def test_the_model_is_restored_after_ctrl_c(how: str, bert_dir: Path, tmp_path: Path) -> None:
    """Ctrl-C as a signal (the run stops after the batch in hand and checkpoints) and as a KeyboardInterrupt
    raised inside the forward pass (a second Ctrl-C)."""
    model, tokenizer = load(bert_dir)
    calls = []

    def interrupt(module: Any, args: Any, output: Any) -> None:
        calls.append(1)
        if len(calls) == 3:
            if how == "signal":
                signal.raise_signal(signal.SIGINT)
            else:
                raise KeyboardInterrupt

    handle = model.bert.encoder.layer[0].register_forward_hook(interrupt)
    before = state_of(model)
    with pytest.raises(KeyboardInterrupt):
        headscope.run(model=model, tokenizer=tokenizer, texts=TEXTS * 3, analyses=["surface"], batch_size=1,
                      out=str(tmp_path / "run"), quiet=True, report=False)
    assert_state(model, before)
    handle.remove()


def interrupt_at(n: int) -> Any:
    """A forward hook that sends SIGINT (Ctrl-C) to this process on its ``n``-th call."""
    calls = []

    def interrupt(module: Any, args: Any, output: Any) -> None:
        calls.append(1)
        if len(calls) == n:
            signal.raise_signal(signal.SIGINT)

    return interrupt


def test_resume_needs_the_same_weights(bert_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = load(bert_dir)
    texts = TEXTS * 3
    whole = headscope.run(model=model, tokenizer=tokenizer, texts=texts, analyses=["surface"], batch_size=1,
                          out=None, quiet=True)
    out = tmp_path / "run"
    handle = model.bert.encoder.layer[0].register_forward_hook(interrupt_at(4))
    with pytest.raises(KeyboardInterrupt):
        headscope.run(model=model, tokenizer=tokenizer, texts=texts, analyses=["surface"], batch_size=1,
                      out=str(out), quiet=True, report=False)
    handle.remove()
    assert (out / "checkpoint" / "checkpoint.json").is_file()
    # By name (the command line): there is no name to load; the message says how to resume.
    with pytest.raises(CheckpointError, match="held in memory"):
        headscope.run(resume=str(out), quiet=True)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.bert.encoder.layer[1].attention.self.query.weight.mul_(1.5)
    with pytest.raises(CheckpointError, match="weights_fingerprint"):
        headscope.run(model=changed, tokenizer=tokenizer, texts=texts, resume=str(out), quiet=True)
    with pytest.raises(CheckpointError, match="sha256"):  # other texts: refused too
        headscope.run(model=model, tokenizer=tokenizer, texts=texts[:-1], resume=str(out), quiet=True)
    resumed = headscope.run(model=model, tokenizer=tokenizer, texts=texts, resume=str(out), quiet=True)
    assert_same_tables(whole, resumed)


def test_a_dispatched_model_with_offloaded_layers_gives_the_tables_of_the_plain_one(bert_dir: Path,
                                                                                  tmp_path: Path) -> None:
    pytest.importorskip("accelerate")
    import transformers

    plain, tokenizer = load(bert_dir)
    size = sum(p.numel() * p.element_size() for p in plain.parameters())
    dispatched = transformers.AutoModelForMaskedLM.from_pretrained(
        bert_dir, device_map="auto", max_memory={"cpu": int(size * 0.7)}, offload_folder=str(tmp_path / "off"))
    placed = set(dispatched.hf_device_map.values())
    assert "disk" in placed and "cpu" in placed, dispatched.hf_device_map  # some layers offloaded, some not
    assert any(p.device.type == "meta" for p in dispatched.parameters())
    assert weights_fingerprint(dispatched) == weights_fingerprint(plain)  # offloaded weights read from disk
    before = state_of(dispatched)
    expected = headscope.run(model=plain, tokenizer=tokenizer, texts=TEXTS, analyses=["surface", "examples"],
                             out=None, quiet=True)
    got = headscope.run(model=dispatched, tokenizer=tokenizer, texts=TEXTS, analyses=["surface", "examples"],
                        out=None, quiet=True)
    assert_same_tables(expected, got)
    assert got.run["model"]["memory"]["device_map"] == {k: str(v) for k, v in dispatched.hf_device_map.items()}
    assert "meta" in got.run["model"]["memory"]["devices"]
    after = state_of(dispatched)
    assert after["hooks"] == before["hooks"] and after["attn"] == before["attn"]
    assert after["training"] == before["training"] and after["config"] == before["config"]
    assert all(hasattr(m, "_hf_hook") for m in dispatched.modules() if hasattr(m, "_hf_hook"))


def test_a_peft_model_is_analysed_with_its_adapter_active(bert_dir: Path) -> None:
    peft = pytest.importorskip("peft")
    model, tokenizer = load(bert_dir)
    base = headscope.run(model=model, tokenizer=tokenizer, texts=TEXTS, analyses=["surface"], out=None,
                         quiet=True)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "key"], init_lora_weights=False)
    torch.manual_seed(1)
    adapted = peft.get_peft_model(model, config)
    before = state_of(adapted)
    got = headscope.run(model=adapted, tokenizer=tokenizer, texts=TEXTS, analyses=["surface"], out=None,
                        quiet=True)
    assert_state(adapted, before)
    # The reference: the adapter merged into the weights of a copy, run as a plain model.
    merged = copy.deepcopy(adapted).merge_and_unload()
    expected = headscope.run(model=merged, tokenizer=tokenizer, texts=TEXTS, analyses=["surface"], out=None,
                             quiet=True)
    assert_same_tables(expected, got, atol=1e-5)
    assert not np.allclose(base.heads["entropy"], got.heads["entropy"], atol=1e-4)  # the adapter was active
    assert got.run["model"]["memory"]["peft"]["active_adapters"] == ["default"]


def test_bad_models_and_tokenizers_are_refused_before_any_pass(bert_dir: Path, tiny_llama: Path) -> None:
    import transformers

    model, tokenizer = load(bert_dir)
    passes = []
    handle = model.register_forward_pre_hook(lambda *a: passes.append(1))
    llama_tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llama)  # ~360 tokens; bert has ~140 rows
    with pytest.raises(ValueError, match=r"does not match .* has \d+ tokens, the model.s embedding only \d+ rows"):
        headscope.run(model=model, tokenizer=llama_tokenizer, texts=TEXTS, out=None, quiet=True)
    with pytest.raises(UsageError, match="needs its tokenizer"):
        headscope.run(model=model, texts=TEXTS, out=None, quiet=True)
    with pytest.raises(UsageError, match="dtype"):
        headscope.run(model=model, tokenizer=tokenizer, texts=TEXTS, dtype="bfloat16", out=None, quiet=True)
    with pytest.raises(TypeError, match="PreTrainedModel"):
        headscope.run(model=torch.nn.Linear(2, 2), tokenizer=tokenizer, texts=TEXTS, out=None, quiet=True)
    assert not passes
    handle.remove()
    # A text model without attention (a state-space model): no heads to analyse.
    mamba = transformers.MambaModel(transformers.MambaConfig(vocab_size=200, hidden_size=16, num_hidden_layers=1,
                                                             state_size=4))
    with pytest.raises(AttentionUnavailableError, match="no attention heads"):
        headscope.run(model=mamba, tokenizer=tokenizer, texts=TEXTS, out=None, quiet=True)
    # What a named model is refused for, a model object is too (here: no text vocabulary).
    vision = transformers.ResNetModel(transformers.ResNetConfig(hidden_sizes=[8], depths=[1], embedding_size=8))
    with pytest.raises(UnsupportedModelError, match="no text vocabulary"):
        headscope.run(model=vision, tokenizer=tokenizer, texts=TEXTS, out=None, quiet=True)


def test_a_session_loads_once_and_runs_many_times(bert_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    import headscope.model.load as load_module
    import headscope.session as session_module

    loads = []
    real = load_module.load_model

    def counting(*args: Any, **kwargs: Any) -> Any:
        loads.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(session_module, "load_model", counting)
    monkeypatch.setattr("headscope.runner.context.load_model", counting)
    session = headscope.Session(model=str(bert_dir))
    first = session.run(texts=TEXTS, analyses=["surface"], out=None, quiet=True)
    second = session.run(texts=TEXTS[:2], analyses=["surface", "examples"], out=None, quiet=True)
    assert len(loads) == 1
    assert_same_tables(first, headscope.run(model=str(bert_dir), texts=TEXTS, analyses=["surface"], out=None,
                                            quiet=True))
    assert second.run["counts"]["examples"] < first.run["counts"]["examples"]
    assert first.run["config"]["model"] == str(bert_dir)
    with pytest.raises(UsageError, match="dtype"):
        session.run(texts=TEXTS, dtype="bfloat16", out=None)
    page = session.view("The dog saw the cat.", out=tmp_path / "view.html")
    assert Path(page).is_file() and "The dog saw the cat." in Path(page).read_text(encoding="utf-8")


def test_a_session_on_a_model_object_follows_its_training(bert_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = load(bert_dir)
    before = state_of(model)
    session = headscope.Session(model=model, tokenizer=tokenizer)
    first = session.run(texts=TEXTS, analyses=["surface"], out=None, quiet=True)
    session.view("The dog saw the cat.", out=tmp_path / "view.html")
    assert_state(model, before)
    again = session.run(texts=TEXTS, analyses=["surface"], out=None, quiet=True)
    assert_same_tables(first, again)
    with torch.no_grad():  # "fine-tuned a minute ago": the next run sees, and records, other weights
        model.bert.encoder.layer[0].attention.self.query.weight.mul_(2.0)
    trained = session.run(texts=TEXTS, analyses=["surface"], out=None, quiet=True)
    assert trained.run["model"]["memory"]["weights_fingerprint"] != first.run["model"]["memory"][
        "weights_fingerprint"]
    assert not np.allclose(first.heads["entropy"], trained.heads["entropy"], atol=1e-4)
    assert "in memory" in repr(session)


def test_a_model_object_writes_a_full_run_with_its_report(bert_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = load(bert_dir)
    out = tmp_path / "run"
    headscope.run(model=model, tokenizer=tokenizer, texts=TEXTS, analyses=["surface", "examples"], out=str(out),
                  quiet=True)
    saved = headscope.RunResult.load(out)
    assert saved.run["model"]["memory"]["source"] == "memory"
    assert saved.run["model"]["name"] == str(bert_dir)
    assert (out / "report" / "index.html").is_file() and not (out / "checkpoint").exists()


def test_ray_is_refused_for_a_model_object(bert_dir: Path) -> None:
    model, tokenizer = load(bert_dir)
    with pytest.raises(UsageError, match="engine ray"):
        headscope.run(model=model, tokenizer=tokenizer, texts=TEXTS, engine="ray", out=None, quiet=True)


def test_a_session_on_a_named_model_resumes_its_checkpoint(bert_dir: Path, tmp_path: Path) -> None:
    session = headscope.Session(model=str(bert_dir))
    texts = TEXTS * 3
    whole = session.run(texts=texts, analyses=["surface"], batch_size=1, out=None, quiet=True)
    out = tmp_path / "run"
    handle = session.loaded.base.encoder.layer[0].register_forward_hook(interrupt_at(3))
    with pytest.raises(KeyboardInterrupt):
        session.run(texts=texts, analyses=["surface"], batch_size=1, out=str(out), quiet=True, report=False)
    handle.remove()
    resumed = session.run(texts=texts, resume=str(out), quiet=True)
    assert_same_tables(whole, resumed)
    assert resumed.run["segments"][0]["batches"] == 3 and len(resumed.run["segments"]) == 2
