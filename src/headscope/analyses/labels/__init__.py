"""The head atlas's rules, one module per analysis that labels heads: each holds its analysis's
:class:`~headscope.analyses.findings.AtlasLabels` (``LABELS``: groups, thresholds, the rule), which the
analysis declares as ``atlas_labels`` and ``headscope.atlas`` runs. The rules, their sources and the samples
they need are in ``docs/atlas.md``.
"""
