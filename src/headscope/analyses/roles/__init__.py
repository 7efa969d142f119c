"""Functional roles of heads with statistical tests: the heads hypothesis (Pande et al. 2021).

For a head, a sequence and a role R, every query position i has a target set ``T_R(i)``; the *sieve bias
score* of the sequence is the attention on the targets relative to uniform attention::

    score = n * mean_{i with T_R(i) non-empty} [ mean_{j in T_R(i)} A[i, j] ]

(1 = uniform, 3 = three times uniform). A head holds role R when the mean score over the sequences is
significantly above ``tau``: a one-sided one-sample t-test, H0 ``mean <= tau``, H1 ``mean > tau``, per head
and role, optionally Benjamini-Hochberg corrected over every head x role test of the run. The plain rule
(mean score above ``tau``, no test) is reported beside it as ``above_tau``.

Roles and the choices made here:

- ``local``: ``T(i) = {i-2, ..., i+2}`` clipped to the sequence, **i included** (papers.md writes i-2..i+2);
  token level, every real position is a query, ``n`` = number of tokens.
- ``delimiter``: ``T(i)`` = the [CLS] and [SEP] tokens; sub-roles ``delimiter_cls`` (the [CLS] token only)
  and ``delimiter_sep`` (the [SEP] tokens only). Special tokens are found by role (``Batch.is_cls/is_sep``).
- ``block``: ``T(i)`` = the tokens of i's own segment (A or B); only sequences that hold a segment pair.
- ``syntactic_<rel>``: word level (the engine's shared word-level attention, :mod:`headscope.engine.wordlevel`,
  in the run's ``--word-attention`` mode); the queries are the dependents
  of relation ``rel`` and ``T(i)`` is the unit of i's head word, found through the tokenizer alignment
  (``Example.sentence_units``), never by the word's string; ``n`` = number of units (words and special
  tokens); only sequences that contain the relation.
  Defaults: nsubj, obj (UD ``obj`` and the older/spaCy ``dobj``), amod, advmod, and ``syntactic`` = their
  union. A relation matches a dependency label when the label equals it or its universal part does
  (``nsubj`` matches ``nsubj:pass``).

The observation unit of the tests (``roles_unit``) is by default the **sentence**, as in Pande et al.: each
source sentence of an input gives one score, from its own query rows (a word's pieces belong to its
sentence, a special token to the sentence before it, [CLS] to the first), over attention to the whole input
(``n`` stays the input's length or units). A treebank sentence is one input and one unit; raw text is packed
into segments of as many whole sentences as fit (:func:`headscope.model.segments.pack_segments`), and
each of their sentences is a unit of its own, so ten sentences in two packed segments are ten scores, not
two (they share their segment's context, so they are not independent either). ``roles_unit="input"`` scores
each model input once (segment, treebank sentence or coreference window), as ``--conventions pande`` always
does (the notebooks score a sentence pair once). The summary (``unit``, ``units``,
``unit_note``) and the report say which it was and how many sentences and inputs the run had.

A test needs at least ``roles_min_n`` units (default 30); below that the row is not tested (``tested`` False;
``t``, ``p``, ``p_adjusted`` NaN; ``significant`` and ``has_role`` False; left out of the multiple-testing
family), the run's manifest gets one warning naming every such role, and the summary (``not_tested``) and the report
count the rows. ``above_tau`` and the mean scores stay in ``roles.csv``, as descriptions; the per-head
``role_<role>`` columns of ``heads.csv`` (what the report's grid colours and ranks heads by) are empty for such
a role, so no head is shown as strongest at a role on too few scores.

Silver trees (``--parse spacy``) are disclosed: the summary counts ``silver_sentences`` and names the
``parser`` (spaCy's version, the model and its version), and the report says so.

Only the sufficient statistics of the per-unit scores are kept: count, sum and sum of squares per role and
head, so memory does not grow with the corpus and shards merge exactly (up to float64 summation order). A
score needs all of a unit's query rows, so the token-level roles add up each block's row sums and turn them
into scores after the layer's last block.

With ``--conventions pande`` the roles are scored as the heads-hypothesis notebooks (iitmnlp/heads-hypothesis)
score them:

- every role: each query's target mean is divided by the row's mean attention (``sum(A[i, :]) / n``);
- ``local``: the band i-2..i+2 clipped to the sequence, i included, but its size is counted as
  ``min(i + 2, n) + 1 - max(0, i - 2)``, one more than the keys summed for the last two tokens;
- ``delimiter``: [CLS] and the [SEP] tokens, as here;
- ``block``: the queries before the first [SEP] ([CLS] and A) target A's tokens without [CLS]; the first
  [SEP] and every later query target B's tokens without the [SEP]s; each query's term is multiplied by the
  entropy of its row (``scipy.stats.entropy``, nats);
- ``syntactic_<rel>``: piece level, not word level: the mean over the dependent's pieces and the head's
  pieces of ``A[piece, piece]``, over the dependent rows' mean attention; each piece is found as the first
  piece of the same id in its segment (their ``list.index``, so a repeated piece points at its first
  occurrence); ``n`` = pieces, not words; labels matched exactly (``nsubj`` does not match ``nsubj:pass``;
  ``obj`` and ``dobj`` are one relation);
- the test: ``t = (mean - tau) / (sd / sqrt(n))`` with the population standard deviation (``np.std``), the
  p-value ``1 - cdf`` of Student's t with n - 1 degrees of freedom, and no multiple-testing correction
  (``--correction`` is not used).
"""

from headscope.analyses.roles.accumulator import HeadRoles, one_sided_tests, units_summary, untested_summary
from headscope.analyses.roles.arcs import (
    DependentSlots,
    PieceSlots,
    dependent_slots,
    first_occurrences,
    piece_slots,
    relation_matches,
    syntactic_arcs,
)
from headscope.analyses.roles.options import (
    ABBREVIATIONS,
    ALIASES,
    CONVENTIONS,
    DEFAULT_RELATIONS,
    INPUT_KINDS,
    MAIN_ROLES,
    SURFACE_ROLES,
    WINDOW,
    RolesOptions,
)
from headscope.analyses.roles.scores import sieve_from_sums, sieve_norms, sieve_row_sums
from headscope.analyses.roles.tables import colocation, per_layer_counts
from headscope.analyses.roles.targets import (
    SurfaceTargets,
    sentence_of_piece,
    surface_row_sums,
    surface_scores,
    surface_targets,
    unit_membership,
)
from headscope.analyses.stats import Correction, adjust_pvalues

__all__ = [
    "ABBREVIATIONS", "ALIASES", "CONVENTIONS", "DEFAULT_RELATIONS", "INPUT_KINDS", "MAIN_ROLES", "SURFACE_ROLES",
    "WINDOW", "Correction", "DependentSlots", "HeadRoles", "PieceSlots", "RolesOptions", "SurfaceTargets",
    "adjust_pvalues", "colocation", "dependent_slots", "first_occurrences", "one_sided_tests",
    "per_layer_counts", "piece_slots", "relation_matches",
    "sentence_of_piece", "sieve_from_sums", "sieve_norms", "sieve_row_sums", "surface_row_sums",
    "surface_scores", "surface_targets", "syntactic_arcs", "unit_membership", "units_summary", "untested_summary",
]
