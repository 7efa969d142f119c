"""The run loop, above the analyses: :mod:`~headscope.runner.orchestrate` resolves the analyses, opens the run's
context and drives the passes (:mod:`~headscope.runner.passes`: local, :mod:`~headscope.runner.ray_engine`:
Ray), feeding each batch's attention to the analyses (:mod:`~headscope.runner.feed`), running their
interventions (:mod:`~headscope.runner.intervene`), checkpointing (:mod:`~headscope.runner.checkpoint`) and
checking dependencies before anything loads (:mod:`~headscope.runner.preflight`).

Every import runs downward: the analyses and the engine below never import this package
(``tests/test_layers.py``). Nothing is imported here, so importing one module of the loop imports only it.
"""
