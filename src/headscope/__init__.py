"""headscope: what every attention head of a Transformer does, over a whole corpus.

>>> import headscope
>>> result = headscope.run(model="minilm", analyses=["surface"], out=None)  # doctest: +SKIP
>>> result.heads.sort_values("sep", ascending=False).head()  # doctest: +SKIP
"""

__version__ = "0.1.0"

from headscope.analyses import REGISTRY, Analysis, AnalysisResult, register
from headscope.config import RunConfig
from headscope.engine import RunResult, run, word_attention
from headscope.manifest import Manifest
from headscope.model import Encoder, Example, load_model

__all__ = ["REGISTRY", "Analysis", "AnalysisResult", "Encoder", "Example", "Manifest", "RunConfig",
           "RunResult", "__version__", "load_model", "register", "run", "word_attention"]
