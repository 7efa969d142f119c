"""One module per analysis; importing this package registers them all in :data:`REGISTRY`."""

from headscope.analyses.base import REGISTRY, Analysis, AnalysisResult, head_frame, register
from headscope.analyses.surface import SurfaceStatistics

__all__ = ["REGISTRY", "Analysis", "AnalysisResult", "SurfaceStatistics", "head_frame", "register"]
