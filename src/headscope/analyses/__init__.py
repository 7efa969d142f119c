"""One module (or package: roles) per analysis; importing this package registers them all in :data:`REGISTRY`.

Adding an analysis: one new module, and its import line here.
"""

from headscope.analyses.ablation import PatternAblation
from headscope.analyses.base import Analysis, AnalysisResult, head_frame
from headscope.analyses.coref import CorefHeads
from headscope.analyses.decoder_heads import DecoderHeads
from headscope.analyses.distance import DistancePatterns
from headscope.analyses.examples import ExampleMaps
from headscope.analyses.head_effects import HeadEffects
from headscope.analyses.importance import HeadImportance
from headscope.analyses.probe import AttentionProbe
from headscope.analyses.pruning import HeadPruning
from headscope.analyses.registry import REGISTRY, register
from headscope.analyses.retrieval import RetrievalHeads
from headscope.analyses.roles import HeadRoles
from headscope.analyses.sep_gradient import SepGradient
from headscope.analyses.similarity import HeadSimilarity
from headscope.analyses.span import AttentionSpan
from headscope.analyses.surface import SurfaceStatistics
from headscope.analyses.syntax import SyntaxHeads

__all__ = [
    "REGISTRY",
    "Analysis",
    "AnalysisResult",
    "AttentionProbe",
    "AttentionSpan",
    "CorefHeads",
    "DecoderHeads",
    "DistancePatterns",
    "ExampleMaps",
    "HeadEffects",
    "HeadImportance",
    "HeadPruning",
    "HeadRoles",
    "HeadSimilarity",
    "PatternAblation",
    "RetrievalHeads",
    "SepGradient",
    "SurfaceStatistics",
    "SyntaxHeads",
    "head_frame",
    "register",
]
