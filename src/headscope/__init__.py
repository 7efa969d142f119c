"""headscope: what every attention head of a Transformer does, over a whole corpus.

>>> import headscope
>>> result = headscope.run(model="minilm", analyses=["surface", "roles"], out=None)  # doctest: +SKIP
>>> result.heads.sort_values("sep", ascending=False).head()  # doctest: +SKIP
>>> headscope.compare("runs/minilm", "runs/minilm-finetuned").heads  # doctest: +SKIP

Importing the package is cheap: each name below is imported on first use (PEP 562), so ``headscope --version``
and ``headscope list`` never load torch. ``help(headscope.run)`` lists every keyword (run settings by group and
each analysis's options), and ``inspect.signature(headscope.run)`` has them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headscope.lazy import lazy_exports
from headscope.version import __version__

if TYPE_CHECKING:
    from headscope.analyses import REGISTRY, Analysis, AnalysisResult, register
    from headscope.comparison import Comparison, compare
    from headscope.config import RunConfig
    from headscope.engine import RunResult, word_attention
    from headscope.manifest import Manifest
    from headscope.model import Encoder, Example, load_model
    from headscope.report import build_report
    from headscope.runner.orchestrate import document_run, run  # noqa: F401 (document_run: not in __all__)
    from headscope.session import Session
    from headscope.viewer import view

#: Public name -> the module it is imported from, on first use.
_EXPORTS = {
    "REGISTRY": "headscope.analyses", "Analysis": "headscope.analyses", "AnalysisResult": "headscope.analyses",
    "register": "headscope.analyses", "Comparison": "headscope.comparison", "compare": "headscope.comparison",
    "RunConfig": "headscope.config", "RunResult": "headscope.engine", "word_attention": "headscope.engine",
    "Manifest": "headscope.manifest", "Encoder": "headscope.model", "Example": "headscope.model",
    "load_model": "headscope.model", "run": "headscope.runner.orchestrate",
    "document_run": "headscope.runner.orchestrate",
    "build_report": "headscope.report", "view": "headscope.viewer", "Session": "headscope.session",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


__all__ = ["REGISTRY", "Analysis", "AnalysisResult", "Comparison", "Encoder", "Example", "Manifest",
           "RunConfig", "RunResult", "Session", "__version__", "build_report", "compare", "load_model", "register",
           "run", "view", "word_attention"]
