"""headscope: what every attention head of a Transformer does, over a whole corpus.

>>> import headscope
>>> result = headscope.run(model="minilm", analyses=["surface", "roles"], out=None)  # doctest: +SKIP
>>> result.heads.sort_values("sep", ascending=False).head()  # doctest: +SKIP
>>> headscope.compare("runs/minilm", "runs/minilm-finetuned").heads  # doctest: +SKIP
"""

from headscope.analyses import REGISTRY, Analysis, AnalysisResult, register
from headscope.compare import Comparison, compare
from headscope.config import RunConfig
from headscope.engine import RunResult, run, word_attention
from headscope.manifest import Manifest
from headscope.model import Encoder, Example, load_model
from headscope.report import build_report
from headscope.version import __version__
from headscope.viewer import view

__all__ = ["REGISTRY", "Analysis", "AnalysisResult", "Comparison", "Encoder", "Example", "Manifest",
           "RunConfig", "RunResult", "__version__", "build_report", "compare", "load_model", "register", "run",
           "view", "word_attention"]
