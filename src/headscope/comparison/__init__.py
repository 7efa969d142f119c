"""Two finished runs side by side: ``headscope compare RUN_A RUN_B --out DIR`` and ``headscope.compare``.

Works from the run directories alone (no model). For every head:

- every numeric statistic both runs have, in ``heads.csv`` and in any per-head table (a table with
  ``layer`` and ``head`` columns; its text columns such as ``relation`` become keys): ``a``, ``b`` and
  ``delta = b - a``;
- every role of ``roles.csv`` both runs have: the change of the mean sieve-bias score with a test of it.
  ``roles.csv`` keeps each role's per-sentence sufficient statistics (``n``, ``score_sum``,
  ``score_sumsq``, hence ``score_mean`` and ``score_var``), so the change is tested with Welch's two-sided
  t-test from count, mean and variance, then Benjamini-Hochberg corrected (or not) over all head x role
  tests. With both runs on the same sentences the scores are paired; a paired test would need per-sentence
  differences, which no run keeps, so Welch's test is the conservative choice (it ignores the positive
  correlation between the two models' scores on one sentence). A change is tested only when both runs
  have at least ``min_n`` scores of the role (default 30, as ``roles_min_n``); otherwise ``tested`` is
  False, ``t`` and ``p`` are NaN and it is not significant. A role is *gained* (*lost*) only when the runs'
  own ``has_role`` flips to True (False) **and** the change of the mean score is significant by that test
  (``p_adjusted < alpha``) in the same direction; a flip without a significant change is listed apart as
  ``crossed_up`` / ``crossed_down`` ("crossed the threshold, change not significant"): one run's test
  passing and the other's failing is no evidence that the two differ.

Runs made under different ``--conventions`` are refused (the same column would hold two definitions, so its
change would mix the models' difference with the definitions'), unless ``--allow-mixed-conventions``; the
conventions of each run are recorded in ``compare.json`` and on the page.

Outputs in ``DIR``: ``compare_heads.csv``, ``compare_roles.csv``, ``compare_layers.csv``,
``compare_{table}.csv`` for other per-head tables, ``compare.json``, ``figures/*.png|svg`` and the page
``report/index.html``, laid out as a run's report (what changed first; details folded at the end). A change
map is drawn only where something changed; otherwise a sentence says so.

The package, one job a module: :mod:`~headscope.comparison.result` (the :class:`Comparison` and
:func:`compare`, which loads and checks the runs), :mod:`~headscope.comparison.stats` (the per-head deltas and
the role-change tests), :mod:`~headscope.comparison.figures` (matplotlib), :mod:`~headscope.comparison.page`
(the sentences and the HTML page), :mod:`~headscope.comparison.save` (the files) and
:mod:`~headscope.comparison.command` (``headscope compare``).
"""

from __future__ import annotations

from headscope.comparison.result import Comparison, MixedConventionsError, compare, conventions_check, run_conventions
from headscope.comparison.stats import CROSSED, MIN_N, layer_summary, long_deltas, role_changes, without_labels

__all__ = ["CROSSED", "MIN_N", "Comparison", "MixedConventionsError", "compare", "conventions_check", "layer_summary",
           "long_deltas", "role_changes", "run_conventions", "without_labels"]
