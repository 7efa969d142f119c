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
family), the run's manifest gets one warning per such role, and the summary (``not_tested``) and the report
count the rows. ``above_tau`` and the mean scores stay, as descriptions.

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

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from scipy import stats

from headscope.analyses.base import Analysis, AnalysisResult
from headscope.analyses.registry import register
from headscope.analyses.surface import conventions_html, effective_conventions
from headscope.config import check_choices, option
from headscope.corpus.conllu import collapse_relation

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.engine.capture import LayerAttention
    from headscope.engine.context import RunContext
    from headscope.engine.results import RunResult
    from headscope.model.encode import Example
    from headscope.report.section import ReportSection

#: The roles computed on token-level attention, in table order.
SURFACE_ROLES = ("local", "delimiter", "delimiter_cls", "delimiter_sep", "block")
#: The roles counted when asking which heads hold several roles (sub-roles would count a head twice).
MAIN_ROLES = ("local", "delimiter", "block", "syntactic")
#: Pande et al.'s syntactic relations; their union is the role ``syntactic``.
DEFAULT_RELATIONS = ("nsubj", "obj", "amod", "advmod")
#: Dependency labels a relation name also matches (spaCy's English model labels objects ``dobj``).
ALIASES = {"obj": ("obj", "dobj"), "dobj": ("obj", "dobj")}
#: Local window: positions i-WINDOW..i+WINDOW, i included.
WINDOW = 2
#: What each ``--conventions`` value means here (``run.json`` and the report).
CONVENTIONS = {
    "headscope": "headscope's definitions (docs/conventions.md)",
    "pande": "as the heads-hypothesis notebooks: scores over the row's mean attention, their local band size, "
             "block on segment words times row entropy, syntactic on pieces (first occurrence, n = pieces, exact "
             "labels), t from the population sd, no correction, one score per model input",
}
#: The kinds of model input (``Example.kind``), each one observation of the t-tests, and what they are.
INPUT_KINDS = {"segment": "packed raw-text segment", "sentence": "treebank sentence",
               "window": "coreference window"}
#: Short labels of roles in the layer x head grid.
ABBREVIATIONS = {"local": "L", "delimiter": "D", "delimiter_cls": "C", "delimiter_sep": "S", "block": "B",
                 "syntactic": "Y"}


#: Multiple-testing corrections: none, or Benjamini-Hochberg.
Correction = Literal["none", "bh"]


@dataclass
class RolesOptions:
    """Options of the ``roles`` analysis."""

    tau: float = option(3.0, help="Sieve-bias threshold: a head holds a role when its mean score is above "
                        "tau (roles).")
    alpha: float = option(0.05, help="Significance level of the one-sided t-tests (roles).")
    correction: Correction = option(
        "bh", help="Multiple-testing correction over all head x role tests: none (as "
        "Pande et al.) or bh (Benjamini-Hochberg) (roles).")
    relations: list[str] = option(help="Extra dependency relations to test as syntactic roles, e.g. det or "
                                  "nmod:poss (roles; comma-separated or repeated).", default_factory=list)
    role_rule: Literal["ttest", "mean"] = option(
        "ttest", help="What `has_role` means in roles.csv and the report: ttest "
        "(significant) or mean (the plain mean-above-tau rule) (roles).")
    roles_unit: Literal["sentence", "input"] = option(
        "sentence", help="What one score of the t-tests is: sentence (each source "
        "sentence of an input, as Pande et al.; a packed raw-text segment gives one score "
        "per sentence, from its own query rows) or input (one per model input: segment, "
        "treebank sentence, coreference window) (roles).")
    roles_min_n: int = option(30, help="Fewest units (sentences, segments, windows) a role's t-test needs: "
                              "below it the role is not tested (tested False, p NaN, has_role False) and the "
                              "run warns (roles).")

    def __post_init__(self) -> None:
        check_choices(self)
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be between 0 and 1, got {self.alpha}")
        # A t-test needs two scores for a variance; fewer would test nothing while claiming to.
        if self.roles_min_n < 2:
            raise ValueError(f"roles_min_n must be at least 2, got {self.roles_min_n}")
        if isinstance(self.relations, str):
            self.relations = [self.relations]
        self.relations = [r.strip() for item in self.relations for r in item.split(",") if r.strip()]


def sieve_row_sums(on_targets: torch.Tensor, size: torch.Tensor, queries: torch.Tensor,
                   units: torch.Tensor | None = None) -> torch.Tensor:
    """The sum over counted queries of each query's mean attention on its targets, for some query rows.

    Sums of blocks of query rows add up to the sum of the whole sequence; :func:`sieve_norms` turns it into
    the score.

    Parameters
    ----------
    on_targets : Tensor of shape [batch, layer, head, query]
        ``sum_{j in T(i)} A[i, j]``.
    size : Tensor of shape [batch, query]
        ``|T(i)|``; queries with no target are left out.
    queries : Tensor of shape [batch, query], bool
        The query positions that count (real positions).
    units : Tensor of shape [batch, query, unit], optional
        1 where the query belongs to the unit of observation (a sentence of the sequence); the sums are
        then taken per unit.

    Returns
    -------
    Tensor of shape [batch, layer, head], or [batch, layer, head, unit] with ``units``, float64
        ``sum_i on_targets[i] / size[i]`` over counted queries (of each unit).
    """
    rows = queries & (size > 0)
    row_mean = on_targets.double() / size.clamp_min(1).double()[:, None, None, :]
    if units is None:
        return (row_mean * rows[:, None, None, :]).sum(-1)
    return torch.einsum("blhq,bqu->blhu", row_mean * rows[:, None, None, :], units.double())


def sieve_norms(size: torch.Tensor, queries: torch.Tensor, n: torch.Tensor, units: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """What turns a sequence's :func:`sieve_row_sums` into its score: ``n`` over the counted queries.

    Parameters
    ----------
    size, queries : Tensor of shape [batch, query]
        As in :func:`sieve_row_sums`, for every query of the sequence.
    n : Tensor of shape [batch]
        Size of the uniform baseline (real positions or units).
    units : Tensor of shape [batch, query, unit], optional
        As in :func:`sieve_row_sums`: the queries are counted per unit.

    Returns
    -------
    factor : Tensor of shape [batch] (or [batch, unit]), float64
        ``n / (number of counted queries)``.
    valid : Tensor of shape [batch] (or [batch, unit]), bool
        True when the sequence (unit) has at least one query with a target.
    """
    rows = queries & (size > 0)
    if units is None:
        n_rows = rows.sum(-1)
        return n.double() / n_rows.clamp_min(1).double(), n_rows > 0
    # The baseline stays the whole sequence's n: a unit's queries attend over every position of the input.
    n_rows = torch.einsum("bq,bqu->bu", rows.double(), units.double())
    return n.double()[:, None] / n_rows.clamp_min(1), n_rows > 0


def sieve_from_sums(on_targets: torch.Tensor, size: torch.Tensor, queries: torch.Tensor, n: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sieve bias scores from each query's attention on its targets.

    Parameters
    ----------
    on_targets : Tensor of shape [batch, layer, head, query]
        ``sum_{j in T(i)} A[i, j]``.
    size : Tensor of shape [batch, query]
        ``|T(i)|``; queries with no target are left out.
    queries : Tensor of shape [batch, query], bool
        The query positions that count (real positions).
    n : Tensor of shape [batch]
        Size of the uniform baseline (real positions or units).

    Returns
    -------
    scores : Tensor of shape [batch, layer, head], float64
        ``n * mean_i (on_targets[i] / size[i])`` over counted queries; 0 where ``valid`` is False.
    valid : Tensor of shape [batch], bool
        True when the sequence has at least one query with a target.
    """
    factor, valid = sieve_norms(size, queries, n)
    return sieve_row_sums(on_targets, size, queries) * factor[:, None, None], valid


def sieve_scores(attn: torch.Tensor, targets: torch.Tensor, queries: torch.Tensor, n: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sieve bias score of every sequence and head for one role given as a dense target mask.

    The general form (any target sets); :func:`surface_scores` computes the token-level roles without the
    dense mask.

    Parameters
    ----------
    attn : Tensor of shape [batch, layer, head, query, key]
        Rows of real queries sum to 1; padding is 0.
    targets : Tensor of shape [batch, query, key]
        1 where key j is in the target set of query i (float or bool).
    queries, n
        As in :func:`sieve_from_sums`.

    Returns
    -------
    scores : Tensor of shape [batch, layer, head], float64
    valid : Tensor of shape [batch], bool
    """
    targets = targets.to(attn.dtype)
    on_targets = torch.einsum("blhqk,bqk->blhq", attn, targets)
    return sieve_from_sums(on_targets, targets.sum(-1), queries, n)


@dataclass
class SurfaceTargets:
    """The target sets of the token-level roles for one batch, which do not depend on attention."""

    size: dict[str, torch.Tensor]
    """Per role, ``|T(i)|`` of shape [batch, seq]."""
    queries: torch.Tensor
    """bool [batch, seq]: real positions."""
    columns: torch.Tensor
    """[batch, seq, 4]: keys that are [CLS], [SEP], in segment A, in segment B."""
    in_b: torch.Tensor
    """bool [batch, seq]: positions of segment B."""
    units: torch.Tensor
    """float [batch, seq, unit]: the unit of observation of each position (:func:`unit_membership`)."""
    factor: dict[str, torch.Tensor]
    """Per role, float64 [batch, unit]: ``n`` over the unit's counted queries (:func:`sieve_norms`)."""
    valid: dict[str, torch.Tensor]
    """Per role, bool [batch, unit]: False where the role is not defined for the unit."""
    pande: bool = False
    """Pande et al.'s definitions (module docstring): rows normalised by their sum, block times row entropy."""


def sentence_of_piece(ex: Example) -> np.ndarray:
    """The source sentence (index into ``ex.sentences``) each position of ``ex`` belongs to.

    A word's pieces belong to its sentence; a special token to the sentence before it, [CLS] to the first,
    so the sentences of an input split all of its query rows between them.

    Returns
    -------
    ndarray of shape (ex.length,), int64
    """
    of_unit = np.full(ex.n_units, -1, dtype=np.int64)
    for k in range(len(ex.sentences)):
        units = ex.sentence_units(k)
        of_unit[units[units >= 0]] = k
    of_piece = of_unit[ex.unit_of_piece]
    known = np.flatnonzero(of_piece >= 0)
    if not len(known):
        return np.zeros(ex.length, dtype=np.int64)
    last = np.maximum.accumulate(np.where(of_piece >= 0, np.arange(ex.length), -1))
    return np.where(last >= 0, of_piece[np.maximum(last, 0)], of_piece[known[0]])


def unit_membership(batch: Batch, unit: str = "input") -> torch.Tensor:
    """The unit of observation of each position of ``batch``, one-hot.

    Parameters
    ----------
    unit : {"input", "sentence"}
        ``input``: the whole sequence is one unit; ``sentence``: each source sentence is one
        (:func:`sentence_of_piece`).

    Returns
    -------
    Tensor of shape [batch, seq, unit], float32
        Padding positions belong to no unit.
    """
    mask = batch.mask
    if unit == "input":
        return mask[..., None].to(torch.float32)
    units = np.zeros((*mask.shape, max(len(ex.sentences) for ex in batch.examples)), dtype=np.float32)
    for row, ex in enumerate(batch.examples):
        units[row, np.arange(ex.length), sentence_of_piece(ex)] = 1.0
    return torch.from_numpy(units).to(mask.device) * mask[..., None]


def surface_targets(batch: Batch, dtype: torch.dtype = torch.float32, conventions: str = "headscope",
                    unit: str = "input") -> SurfaceTargets:
    """The token-level roles' target sets of ``batch``: sizes, key columns, score factors and validity.

    ``conventions="pande"``: the local band's size and the block targets of Pande et al.'s notebooks.
    ``unit``: what one score is (:func:`unit_membership`).
    """
    mask = batch.mask
    b, s = mask.shape
    mask_f = mask.to(dtype)
    pande = conventions == "pande"
    seg = batch.segment
    if pande:
        pos = torch.arange(s, device=mask.device)[None, :]
        n = batch.lengths[:, None]
        # Their band_size: (min(i + 2, n) + 1) - max(0, i - 2), clipped at n rather than n - 1.
        size_local = ((torch.minimum(pos + WINDOW, n) + 1 - (pos - WINDOW).clamp_min(0)) * mask).to(dtype)
        first_sep = torch.where(batch.is_sep, pos, s).amin(-1, keepdim=True)
        words_a = mask & (pos >= 1) & (pos < first_sep)  # 1 .. sep1 - 1
        words_b = mask & (pos > first_sep) & (pos < n - 1)  # sep1 + 1 .. sep2 - 1, sep2 the last position
        in_b = pos >= first_sep
        paired = (mask & (seg == 1)).any(-1)
    else:
        size_local = torch.zeros(b, s, dtype=dtype, device=mask.device)
        for o in range(-WINDOW, WINDOW + 1):
            if abs(o) >= s:
                continue
            if o >= 0:
                size_local[:, : s - o] += mask_f[:, o:]
            else:
                size_local[:, -o:] += mask_f[:, : s + o]
        words_a, words_b = mask & (seg == 0), mask & (seg == 1)
        in_b = seg == 1
        paired = torch.ones(b, dtype=torch.bool, device=mask.device)
    columns = torch.stack([batch.is_cls, batch.is_sep, words_a, words_b], -1).to(dtype)
    n_cls, n_sep, n_a, n_b = columns.sum(1).unbind(-1)  # [batch] each
    size = {
        "local": size_local * mask_f,
        "delimiter": (n_cls + n_sep)[:, None].expand(b, s),
        "delimiter_cls": n_cls[:, None].expand(b, s),
        "delimiter_sep": n_sep[:, None].expand(b, s),
        "block": torch.where(in_b, n_b[:, None], n_a[:, None]),
    }
    units = unit_membership(batch, unit)
    factor, valid = {}, {}
    for role, role_size in size.items():
        factor[role], valid[role] = sieve_norms(role_size, mask, batch.lengths, units)
    valid["block"] = valid["block"] & ((n_a > 0) & (n_b > 0) & paired)[:, None]
    return SurfaceTargets(size, mask, columns, in_b, units, factor, valid, pande=pande)


def surface_row_sums(attn: torch.Tensor, targets: SurfaceTargets, query_start: int = 0) -> dict[str, torch.Tensor]:
    """:func:`sieve_row_sums` of the token-level roles for a block of query rows.

    The target sets are a band (local) or a set of keys per sequence or per segment (delimiter, block),
    so their sums come from diagonals and one matrix product instead of a [query, key] mask per role.

    Parameters
    ----------
    attn : Tensor of shape [batch, layer, head, query, key]
        Rows ``query_start ...`` (padding 0); ``key`` is the whole sequence.
    targets : SurfaceTargets
        Of the same batch.
    query_start : int
        Position of ``attn``'s first query row.

    Returns
    -------
    dict of role to Tensor of shape [batch, layer, head, unit], float64
        The blocks of a layer add up to the whole layer's sums.
    """
    q0, q1 = query_start, query_start + attn.shape[-2]
    queries = targets.queries[:, q0:q1]
    out: dict[str, torch.Tensor] = {}
    # local: A[i, i+o] for |o| <= WINDOW. Row r is position q0 + r, so that is diagonal q0 + o of the block;
    # it starts at row max(0, -(q0 + o)). Padding is 0, so whole diagonals can be summed.
    on_local = torch.zeros(attn.shape[:-1], dtype=attn.dtype, device=attn.device)
    for o in range(-WINDOW, WINDOW + 1):
        diag = torch.diagonal(attn, q0 + o, dim1=-2, dim2=-1)
        start = max(0, -(q0 + o))
        on_local[..., start:start + diag.shape[-1]] += diag

    sums = torch.matmul(attn, targets.columns[:, None, None].to(attn.dtype))  # [batch, layer, head, query, 4]
    on_cls, on_sep, on_a, on_b = sums.unbind(-1)
    on_block = torch.where(targets.in_b[:, None, None, q0:q1], on_b, on_a)
    if targets.pande:
        # Each query's term over the row's mean attention sum(A[i, :]) / n (the n is in the score's factor),
        # and block's times the row's entropy (scipy.stats.entropy normalises the row).
        total = attn.sum(-1)
        norm = total.clamp_min(torch.finfo(attn.dtype).tiny)
        entropy = torch.log(norm) - torch.special.xlogy(attn, attn).sum(-1) / norm
        on_local, on_cls, on_sep = on_local / norm, on_cls / norm, on_sep / norm
        on_block = on_block / norm * entropy
    on = {"local": on_local, "delimiter": on_cls + on_sep, "delimiter_cls": on_cls, "delimiter_sep": on_sep,
          "block": on_block}
    for role, on_role in on.items():
        out[role] = sieve_row_sums(on_role, targets.size[role][:, q0:q1], queries, targets.units[:, q0:q1])
    return out


def surface_scores(batch: Batch, attn: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Scores of the token-level roles for one batch, from whole maps.

    Parameters
    ----------
    attn : Tensor of shape [batch, layer, head, query, key]

    Returns
    -------
    dict of role to (scores, valid)
        ``scores`` of shape [batch, layer, head], float64; ``valid`` of shape [batch], False where the role
        is not defined (no [SEP] for ``delimiter_sep``, no segment pair for ``block``).
    """
    targets = surface_targets(batch, attn.dtype)
    return {role: (total[..., 0] * targets.factor[role][:, None, None, 0], targets.valid[role][:, 0])
            for role, total in surface_row_sums(attn, targets).items()}


def relation_matches(relation: str, deprel: str, exact: bool = False) -> bool:
    """Whether dependency label ``deprel`` counts as ``relation`` (exact, alias, or universal part).

    ``exact``: the label or an alias only (Pande et al. compare spaCy's labels with ``==``).
    """
    names = ALIASES.get(relation, (relation,))
    return deprel in names or (not exact and collapse_relation(deprel) in names)


def syntactic_arcs(examples: list[Any], relations: list[str], exact: bool = False
                   ) -> list[tuple[int, int, int, int, int]]:
    """Dependent -> head arcs of the given relations, as unit indices.

    Parameters
    ----------
    examples : list of Example
    relations : list of str
        Relation ``r`` gets role index ``r``'s position in this list.
    exact : bool
        Match labels exactly (:func:`relation_matches`).

    Returns
    -------
    list of (example row, relation index, dependent unit, head unit, sentence index in the example)
        Arcs whose dependent or head word got no piece (or was cut) are left out; the root is never a head.
    """
    arcs = []
    for row, ex in enumerate(examples):
        for k, sentence in enumerate(ex.sentences):
            if not sentence.has_tree:
                continue
            units = ex.sentence_units(k)
            for d, (h, deprel) in enumerate(zip(sentence.heads, sentence.deprels, strict=True)):
                # An arc inside one unit (a multiword token read from its text) has no attention to score.
                if h == 0 or units[d] < 0 or units[h - 1] < 0 or units[d] == units[h - 1]:
                    continue
                for r, relation in enumerate(relations):
                    if relation_matches(relation, deprel, exact):
                        arcs.append((row, r, int(units[d]), int(units[h - 1]), k))
    return arcs


@dataclass
class DependentSlots:
    """The syntactic roles' dependents of one batch: the queries of word-level attention they read.

    Each batch row with an arc gets one slot per distinct dependent unit (a word can be the dependent of
    one arc only, but of several matching relations).
    """

    roles: list[str]
    """``syntactic`` (the union of the default relations), then ``syntactic_<rel>`` per relation."""
    index: torch.Tensor
    """int64 [rows]: the batch rows with at least one arc."""
    dependent: torch.Tensor
    """int64 [rows, slot]: unit of the slot's dependent (0 in unused slots)."""
    head_word: torch.Tensor
    """int64 [rows, slot]: unit of its head word."""
    in_relation: torch.Tensor
    """float32 [rows, role, slot]: 1 where the slot's arc has the role's relation (``|T(i)|`` of the query)."""
    queries: torch.Tensor
    """bool [rows, slot]: every slot may count (``in_relation`` leaves out the others)."""
    units: torch.Tensor
    """float32 [rows, slot, unit]: the unit of observation of each slot (its dependent's sentence, or the row)."""
    factor: list[torch.Tensor]
    """Per role, float64 [rows, unit]: ``n`` (units) over the role's dependents (:func:`sieve_norms`)."""
    valid: list[torch.Tensor]
    """Per role, bool [rows, unit]: True when the row's unit holds the relation."""


def dependent_slots(batch: Batch, relations: list[str], exact: bool = False, unit: str = "input"
                    ) -> DependentSlots | None:
    """The :class:`DependentSlots` of ``batch`` for ``relations``; None when it has no arc of them.

    ``unit``: ``input`` scores each row once, ``sentence`` each sentence of a row (:func:`unit_membership`).
    """
    arcs = syntactic_arcs(batch.examples, relations, exact)
    if not arcs:
        return None
    roles = ["syntactic", *(f"syntactic_{r}" for r in relations)]
    rows = sorted({row for row, *_ in arcs})
    local = {row: k for k, row in enumerate(rows)}
    slots: list[dict[int, int]] = [{} for _ in rows]
    for row, _, d, _, _ in arcs:
        slots[local[row]].setdefault(d, len(slots[local[row]]))
    m = max(len(s) for s in slots)
    dev = batch.input_ids.device
    dependent = torch.zeros(len(rows), m, dtype=torch.int64, device=dev)
    head_word = torch.zeros(len(rows), m, dtype=torch.int64, device=dev)
    in_relation = torch.zeros(len(rows), len(roles), m, dtype=torch.float32, device=dev)
    n_units = max(len(batch.examples[row].sentences) for row in rows) if unit == "sentence" else 1
    units = torch.zeros(len(rows), m, n_units, dtype=torch.float32, device=dev)
    for row, r, d, h, sentence in arcs:
        k, slot = local[row], slots[local[row]][d]
        dependent[k, slot], head_word[k, slot] = d, h
        units[k, slot, sentence if unit == "sentence" else 0] = 1.0
        in_relation[k, r + 1, slot] = 1.0
        # Role 0 is the union: every arc of a default relation counts for it as well.
        if relations[r] in DEFAULT_RELATIONS:
            in_relation[k, 0, slot] = 1.0
    index = torch.tensor(rows, dtype=torch.int64, device=dev)
    queries = torch.ones(len(rows), m, dtype=torch.bool, device=dev)
    norms = [sieve_norms(in_relation[:, r], queries, batch.n_units[index], units) for r in range(len(roles))]
    return DependentSlots(roles, index, dependent, head_word, in_relation, queries, units,
                          [f for f, _ in norms], [v for _, v in norms])


@dataclass
class PieceSlots:
    """The dependents' and head words' pieces of :class:`DependentSlots`, as Pande et al. find them.

    Each word's pieces are looked up by id in the word's segment, first occurrence first (their
    ``final_sent.index(piece)``), so a piece that occurs earlier in the segment points there.
    """

    from_weight: torch.Tensor
    """float32 [rows, slot, seq]: weight of each position in the mean over the dependent's pieces."""
    to_weight: torch.Tensor
    """float32 [rows, slot, seq]: weight of each position in the mean over the head word's pieces."""
    n: torch.Tensor
    """float64 [rows]: pieces of the sequence (Pande et al.'s ``sent_len``)."""


def first_occurrences(unit_of_piece: np.ndarray, ids: np.ndarray, segment: np.ndarray, unit: int) -> list[int]:
    """Where Pande et al. look a word's pieces up: for each piece, the first position of its id in the segment.

    Parameters
    ----------
    unit_of_piece, ids, segment : ndarray of shape (seq,)
        One sequence's alignment, token ids and segments.
    unit : int
        The word's unit.
    """
    pieces = np.flatnonzero(unit_of_piece == unit)
    in_b = np.flatnonzero(segment == 1)
    start = int(in_b[0]) if len(in_b) and len(pieces) and pieces[0] >= in_b[0] else 0
    return [start + int(np.flatnonzero(ids[start:] == ids[p])[0]) for p in pieces]


def piece_slots(batch: Batch, dep: DependentSlots) -> PieceSlots:
    """The :class:`PieceSlots` of ``dep``'s slots in ``batch``."""
    rows, slots = dep.dependent.shape
    seq = batch.input_ids.shape[1]
    from_w = np.zeros((rows, slots, seq), dtype=np.float32)
    to_w = np.zeros((rows, slots, seq), dtype=np.float32)
    unit_of_piece = batch.unit_of_piece.cpu().numpy()
    ids = batch.input_ids.cpu().numpy()
    segment = batch.segment.cpu().numpy()
    used = dep.in_relation.sum(1).cpu().numpy() > 0  # [rows, slot]
    for k, row in enumerate(dep.index.tolist()):
        for slot in range(slots):
            if not used[k, slot]:
                continue
            for weights, unit in ((from_w, dep.dependent[k, slot]), (to_w, dep.head_word[k, slot])):
                found = first_occurrences(unit_of_piece[row], ids[row], segment[row], int(unit))
                for position in found:
                    weights[k, slot, position] += 1.0 / len(found)
    dev = batch.input_ids.device
    return PieceSlots(torch.from_numpy(from_w).to(dev), torch.from_numpy(to_w).to(dev),
                      batch.lengths.index_select(0, dep.index).to(torch.float64))


def one_sided_tests(n: np.ndarray, total: np.ndarray, total_sq: np.ndarray, tau: float,
                    conventions: str = "headscope") -> dict[str, np.ndarray]:
    """One-sample t-tests of H0 mean <= tau against H1 mean > tau from sufficient statistics.

    Parameters
    ----------
    n, total, total_sq : ndarray of the same shape
        Count, sum and sum of squares of the scores of each test.
    tau : float
    conventions : {"headscope", "pande"}
        ``pande``: Pande et al.'s ``ztest_own``: the population standard deviation in ``t`` and ``p = 1 -
        cdf(t)``. ``var`` is the unbiased variance either way.

    Returns
    -------
    dict with ``mean``, ``var`` (unbiased), ``t`` and ``p``, each of the input shape
        ``t`` and ``p`` are NaN with fewer than two scores. Zero variance gives t = +-inf (p 0 or 1), or
        t NaN when the mean equals tau.
    """
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = total / n
        # Clamp: rounding can make the difference of two nearly equal sums slightly negative.
        var = np.maximum(total_sq - n * mean**2, 0.0) / (n - 1)
        var = np.where(var <= 1e-12 * np.maximum(mean**2, 1e-300), 0.0, var)
        if conventions == "pande":
            t = (mean - tau) / np.sqrt(var * (n - 1) / n / n)
            p = 1 - stats.t.cdf(t, np.maximum(n - 1, 1))
        else:
            t = (mean - tau) / np.sqrt(var / n)
            p = stats.t.sf(t, np.maximum(n - 1, 1))
    few = n < 2
    t = np.where(few, np.nan, t)
    p = np.where(few | np.isnan(t), np.nan, p)
    return {"mean": np.where(n > 0, mean, np.nan), "var": np.where(n > 1, var, np.nan), "t": t, "p": p}


def adjust_pvalues(p: np.ndarray, correction: Correction) -> np.ndarray:
    """p-values adjusted over the whole family (NaN entries stay NaN and are not counted)."""
    p = np.asarray(p, dtype=np.float64)
    if correction == "none":
        return p.copy()
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out


def untested_reason(role: str, n: int, min_n: int) -> str:
    """The manifest warning for a role whose t-tests were not run: how many units it had and what it needs."""
    need = ""
    if n == 0 and role.startswith("syntactic"):
        need = " (syntactic roles need dependency trees: --treebank, or --parse spacy on raw text)"
    elif n == 0 and role == "block":
        need = " (block needs segment pairs [CLS] A [SEP] B [SEP])"
    return (f"roles: {role} not tested in any head: it has {n} unit{'s' if n != 1 else ''} (scores), fewer "
            f"than roles_min_n = {min_n}{need}; its rows have tested False, p NaN, has_role False")


def units_summary(inputs: np.ndarray, sentences: np.ndarray, unit: str = "sentence") -> dict[str, Any]:
    """What one observation of the t-tests was in a run, for its summary.

    Parameters
    ----------
    inputs, sentences : ndarray of shape (len(INPUT_KINDS),)
        Model inputs of each kind of :data:`INPUT_KINDS` and the source sentences they hold.
    unit : {"sentence", "input"}
        The ``roles_unit`` option.

    Returns
    -------
    dict
        ``unit`` (what one score is, in words), ``units`` (inputs and sentences per kind) and ``unit_note``
        (whether that is the sentence, as in Pande et al.).
    """
    units = {kind: {"inputs": int(n), "sentences": int(k)}
             for kind, n, k in zip(INPUT_KINDS, inputs, sentences, strict=True) if n > 0}
    segments = units.get("segment")
    if unit == "sentence":
        text = "sentence"
        note = "one score per source sentence, as in Pande et al."
        if segments:
            note += (f"; raw text: {segments['sentences']} sentences from {segments['inputs']} packed segments, "
                     "each scored on its own query rows (attention over the whole segment, n = the segment's "
                     "length), so sentences of one segment share their context")
    else:
        text = " + ".join(INPUT_KINDS[kind] for kind in units) or "none"
        note = "one score per model input"
        if segments:
            note += (f"; raw text: each packed segment is one observation ({segments['inputs']} segments holding "
                     f"{segments['sentences']} sentences), not each sentence as in Pande et al. "
                     "(roles_unit sentence)")
    return {"unit": text, "units": units, "unit_note": note}


def colocation(roles: pd.DataFrame, column: str = "has_role") -> pd.DataFrame:
    """How many heads hold each pair of roles (the diagonal: how many hold the role).

    Parameters
    ----------
    roles : DataFrame
        ``roles.csv`` (``layer, head, role`` and ``column``).

    Returns
    -------
    DataFrame of shape (n_roles, n_roles), index and columns the roles in table order
    """
    order = list(dict.fromkeys(roles["role"]))
    held = roles.pivot_table(index=["layer", "head"], columns="role", values=column, aggfunc="max",
                             fill_value=False).reindex(columns=order, fill_value=False).astype(int)
    matrix = held.T.to_numpy() @ held.to_numpy()
    return pd.DataFrame(matrix, index=pd.Index(order, name="role"), columns=order)


def per_layer_counts(roles: pd.DataFrame, column: str = "has_role") -> pd.DataFrame:
    """Number of heads per layer that hold each role: index layer, one column per role."""
    order = list(dict.fromkeys(roles["role"]))
    counts = roles.assign(_held=roles[column].astype(bool)).pivot_table(
        index="layer", columns="role", values="_held", aggfunc="sum", fill_value=0)
    return counts.reindex(columns=order, fill_value=0).astype(int)


@register
class HeadRoles(Analysis):
    """Per head and role: sieve-bias scores, one-sided t-tests against tau, and the roles each head holds."""

    name = "roles"
    report_order = 60
    description = "heads hypothesis: local/delimiter/block/syntactic roles with t-tests (Pande et al. 2021)"
    Options = RolesOptions

    uses_words = True

    def wants_words(self, example: Example) -> bool:
        # Syntactic roles only (raw text without parses needs no word map); Pande et al.'s are piece level.
        return example.has_tree and self.conventions_ != "pande"

    def start(self, ctx: RunContext) -> None:
        opts: RolesOptions = self.options
        self.conventions_ = effective_conventions(ctx, tuple(CONVENTIONS))
        self.correction_ = "none" if self.conventions_ == "pande" else opts.correction
        # The notebooks score each model input once (a sentence pair is one observation).
        self.unit_ = "input" if self.conventions_ == "pande" else opts.roles_unit
        self.relations_ = list(dict.fromkeys([*DEFAULT_RELATIONS, *opts.relations]))
        self.roles_ = [*SURFACE_ROLES, "syntactic", *(f"syntactic_{r}" for r in self.relations_)]
        shape = (len(self.roles_), ctx.info.n_layers, ctx.info.n_heads)
        self.count_ = torch.zeros(len(self.roles_), dtype=torch.float64, device=ctx.device)
        self.sum_ = torch.zeros(shape, dtype=torch.float64, device=ctx.device)
        self.sumsq_ = torch.zeros(shape, dtype=torch.float64, device=ctx.device)
        # Which units the tests ran over: inputs of each kind, and the source sentences they hold.
        self.inputs_ = torch.zeros(len(INPUT_KINDS), dtype=torch.float64, device=ctx.device)
        self.input_sentences_ = torch.zeros(len(INPUT_KINDS), dtype=torch.float64, device=ctx.device)
        self._targets: SurfaceTargets | None = None
        self._rows: dict[str, torch.Tensor] = {}
        self._dependents: DependentSlots | None = None
        self._pieces: PieceSlots | None = None
        self._on_head: tuple[torch.Tensor, torch.Tensor] | None = None

    def _add(self, role: str, layer: int, scores: torch.Tensor, valid: torch.Tensor) -> None:
        """Add one layer's scores [batch, head, unit] of the units where ``valid`` [batch, unit] holds."""
        r = self.roles_.index(role)
        kept = scores * valid[:, None, :]
        self.sum_[r, layer] += kept.sum((0, 2))
        self.sumsq_[r, layer] += (kept * kept).sum((0, 2))

    def begin_batch(self, batch: Batch) -> None:
        pande = self.conventions_ == "pande"
        unit = self.unit_
        self._targets = surface_targets(batch, conventions=self.conventions_, unit=unit)
        self._dependents = dependent_slots(batch, self.relations_, exact=pande, unit=unit)
        self._pieces = piece_slots(batch, self._dependents) if pande and self._dependents is not None else None
        # Which sequences a role is defined for does not depend on attention: count them once per batch.
        for role, valid in self._targets.valid.items():
            self.count_[self.roles_.index(role)] += valid.sum()
        if self._dependents is not None:
            for role, valid in zip(self._dependents.roles, self._dependents.valid, strict=True):
                self.count_[self.roles_.index(role)] += valid.sum()
        kinds = list(INPUT_KINDS)
        for ex in batch.examples:
            if ex.kind in INPUT_KINDS:
                self.inputs_[kinds.index(ex.kind)] += 1
                self.input_sentences_[kinds.index(ex.kind)] += len(ex.sentences)

    def update(self, batch: Batch, block: LayerAttention) -> None:
        assert self._targets is not None
        totals = surface_row_sums(block.weights[:, None], self._targets, block.query_start)
        for role, total in totals.items():
            self._rows[role] = total[:, 0] if block.is_first else self._rows[role] + total[:, 0]
        # The score is squared into sumsq, so it must be whole: finish it after the layer's last block.
        if block.is_last:
            for role, total in self._rows.items():
                self._add(role, block.layer, total * self._targets.factor[role][:, None, :],
                          self._targets.valid[role])
            self._rows = {}
        if self._pieces is not None:
            self._update_pieces(block)

    def _update_pieces(self, block: LayerAttention) -> None:
        """Pande et al.'s syntactic scores: piece-level attention from the dependents' to the heads' pieces."""
        dep, pieces = self._dependents, self._pieces
        assert dep is not None and pieces is not None
        q0, q1 = block.query_start, block.query_stop
        attn = block.weights.index_select(0, dep.index)  # [rows, head, query, key]
        from_w = pieces.from_weight[:, :, q0:q1]
        to_heads = torch.einsum("rhqk,rsk->rhqs", attn, pieces.to_weight)
        on = torch.einsum("rhqs,rsq->rhs", to_heads, from_w).double()  # mean over both words' pieces
        row_mass = torch.einsum("rhq,rsq->rhs", attn.sum(-1), from_w).double()  # mean row sum of the dependent
        if not block.is_first and self._on_head is not None:
            on, row_mass = on + self._on_head[0], row_mass + self._on_head[1]
        self._on_head = (on, row_mass)
        if not block.is_last:
            return
        # Their token_score: (mean attention to the head's pieces) / (mean row sum / sent_len), per arc.
        score = on * pieces.n[:, None, None] / row_mass.clamp_min(torch.finfo(torch.float64).tiny)
        units = dep.units.double()  # [rows, slot, unit]
        for r, role in enumerate(dep.roles):
            arcs = dep.in_relation[:, r].double()  # [rows, slot]
            mean = (torch.einsum("rhs,rsu->rhu", score * arcs[:, None, :], units)
                    / torch.einsum("rs,rsu->ru", arcs, units).clamp_min(1)[:, None, :])
            self._add(role, block.layer, mean, dep.valid[r])
        self._on_head = None

    def update_words(self, batch: Batch, layer: int, words: torch.Tensor) -> None:
        dep = self._dependents
        if dep is None:
            return
        # A dependent has one head word, so T(i) is one unit: W[dependent, head word] is all that is needed.
        on_head = words[dep.index[:, None], :, dep.dependent, dep.head_word].transpose(1, 2)  # [rows, head, slot]
        for r, role in enumerate(dep.roles):
            total = sieve_row_sums(on_head[:, None], dep.in_relation[:, r], dep.queries, dep.units)[:, 0]
            self._add(role, layer, total * dep.factor[r][:, None, :], dep.valid[r])

    def end_batch(self, batch: Batch) -> None:
        self._targets, self._rows, self._dependents = None, {}, None
        self._pieces, self._on_head = None, None

    def merge(self, other: Analysis) -> HeadRoles:
        assert isinstance(other, HeadRoles) and other.roles_ == self.roles_
        self.count_ += other.count_.to(self.count_.device)
        self.sum_ += other.sum_.to(self.sum_.device)
        self.sumsq_ += other.sumsq_.to(self.sumsq_.device)
        self.inputs_ += other.inputs_.to(self.inputs_.device)
        self.input_sentences_ += other.input_sentences_.to(self.input_sentences_.device)
        return self

    def table(self) -> pd.DataFrame:
        """``roles.csv``: one row per head and role, roles in the order of ``roles_``.

        Rows with fewer than ``roles_min_n`` scores have ``tested`` False: no ``t``, ``p`` or ``p_adjusted``
        (so they are not in the correction's family), ``significant`` and ``has_role`` False.
        """
        opts: RolesOptions = self.options
        n_roles, n_layers, n_heads = self.sum_.shape
        count = self.count_.cpu().numpy()[:, None, None].repeat(n_layers, 1).repeat(n_heads, 2)
        tests = one_sided_tests(count, self.sum_.cpu().numpy(), self.sumsq_.cpu().numpy(), opts.tau,
                                self.conventions_)
        role, layer, head = np.meshgrid(np.arange(n_roles), np.arange(n_layers), np.arange(n_heads),
                                        indexing="ij")
        frame = pd.DataFrame({
            "layer": layer.ravel(), "head": head.ravel(), "role": np.asarray(self.roles_)[role.ravel()],
            "n": count.ravel().astype(np.int64), "score_mean": tests["mean"].ravel(),
            "score_var": tests["var"].ravel(), "score_sum": self.sum_.cpu().numpy().ravel(),
            "score_sumsq": self.sumsq_.cpu().numpy().ravel(), "t": tests["t"].ravel(), "p": tests["p"].ravel(),
        })
        tested = (frame["n"] >= opts.roles_min_n).to_numpy()
        # A t of +-380,000 from two scores is no evidence: untested rows get no statistic at all.
        frame.loc[~tested, ["t", "p"]] = np.nan
        frame["tested"] = tested
        frame["p_adjusted"] = adjust_pvalues(frame["p"].to_numpy(), self.correction_)
        frame["significant"] = (frame["p_adjusted"] < opts.alpha).to_numpy()
        frame["above_tau"] = (frame["score_mean"] > opts.tau).to_numpy()
        frame["has_role"] = frame["significant" if opts.role_rule == "ttest" else "above_tau"] & tested
        return frame.sort_values(["layer", "head"], kind="stable").reset_index(drop=True)

    def finalize(self, ctx: RunContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        opts: RolesOptions = self.options
        frame = self.table()
        sentences = dict(zip(self.roles_, self.count_.cpu().numpy().astype(int).tolist(), strict=True))
        untested = {role: n for role, n in sentences.items() if n < opts.roles_min_n}
        # A context built by hand (API use, tests) may have no manifest; the summary still says it.
        manifest = getattr(ctx, "manifest", None)
        for role, n in untested.items():
            if manifest is not None:
                manifest.warn_run(untested_reason(role, n, opts.roles_min_n))
        unit = units_summary(self.inputs_.cpu().numpy(), self.input_sentences_.cpu().numpy(), self.unit_)
        held = frame[frame["has_role"]]
        main = held[held["role"].isin(MAIN_ROLES)]
        n_heads = frame[["layer", "head"]].drop_duplicates().shape[0]
        p = frame["p"].dropna()
        # The grid and the head profiles colour by any per-head column: one sieve-bias score per role.
        heads = frame.pivot(index=["layer", "head"], columns="role", values="score_mean")
        heads = heads[list(self.roles_)].add_prefix("role_").reset_index()
        heads.columns.name = None
        return AnalysisResult(
            name=self.name,
            heads=heads,
            tables={"roles": frame},
            summary={
                "conventions": self.conventions_, "definitions": CONVENTIONS[self.conventions_],
                "tau": opts.tau, "alpha": opts.alpha, "correction": self.correction_, "role_rule": opts.role_rule,
                "local_window": f"i-{WINDOW}..i+{WINDOW}, i included" + (
                    "; size min(i+2, n)+1-max(0, i-2) (Pande et al.)" if self.conventions_ == "pande" else ""),
                "sentences": sentences,
                **unit,
                "min_n": opts.roles_min_n,
                "not_tested": {"rows": int((~frame["tested"]).sum()), "rows_total": len(frame), "roles": untested},
                "not_tested_note": (
                    f"{int((~frame['tested']).sum())} of {len(frame)} head x role rows not tested: fewer than "
                    f"roles_min_n = {opts.roles_min_n} units for " + ", ".join(f"{r} (n = {n})" for r, n in
                                                                                untested.items())
                    if untested else f"every role had at least roles_min_n = {opts.roles_min_n} units"),
                "heads_with_role": {r: int((held["role"] == r).sum()) for r in self.roles_},
                "multi_role_heads": int((main.groupby(["layer", "head"]).size() > 1).sum()),
                "local_and_syntactic_heads": int((main.groupby(["layer", "head"])["role"].agg(
                    lambda r: {"local", "syntactic"} <= set(r))).sum()) if len(main) else 0,
                "heads": n_heads,
                "significant_vs_above_tau_agree": float((frame["significant"] == frame["above_tau"]).mean()),
                "p_near_0_or_1": float(((p < 0.01) | (p > 0.99)).mean()) if len(p) else None,
            },
        )

    @staticmethod
    def report(run: RunResult, figures: Path) -> ReportSection | None:
        if "roles" not in run.tables:
            return None
        from headscope.report.section import ReportSection, figure_html

        table = run.tables["roles"]
        opts = {**run.run.get("analysis_options", {}).get("roles", {}),
                **{k: v for k, v in run.run.get("analyses", {}).get("roles", {}).items() if k == "correction"}}
        summary = run.run.get("analyses", {}).get("roles", {})
        # Runs from before roles_min_n have no tested column: they tested from two scores on.
        tested = table["tested"].astype(bool) if "tested" in table.columns else table["n"] >= 2
        untested = [r for r, ok in tested.groupby(table["role"], sort=False).any().items() if not ok]
        min_n = summary.get("min_n", 2)
        not_tested = (
            f"<p>Not tested: <b>{int((~tested).sum())} of {len(table)}</b> head x role rows (fewer than "
            f"roles_min_n = {html.escape(str(min_n))} units; t and p left empty, no role held)"
            + (": " + html.escape(", ".join(f"{r} (n = {int(table.loc[table['role'] == r, 'n'].max())})"
                                          for r in untested)) if untested else "")
            + ". Syntactic roles need dependency trees (--treebank or --parse spacy); block needs segment "
            "pairs.</p>" if (~tested).any() else "")
        unit = (f"<p>Unit of the t-tests: <b>{html.escape(str(summary['unit']))}</b>; "
                f"{html.escape(str(summary.get('unit_note', '')))}.</p>" if "unit" in summary else "")
        roles = table[~table["role"].isin(untested)]
        if roles.empty:
            return ReportSection(key="roles", title="Heads hypothesis: roles", html=unit + not_tested,
                                 figures=[])
        names = [roles_grid_figure(roles, figures), colocation_figure(roles, figures),
                 per_layer_figure(roles, figures), pvalue_figure(roles, figures)]
        correction = {"bh": "Benjamini-Hochberg over all head x role tests",
                      "none": "none (as Pande et al.)"}.get(opts.get("correction", "?"), "?")
        rule = "significant t-test" if opts.get("role_rule", "ttest") == "ttest" else "mean score above tau"
        counts = per_layer_counts(roles)
        both = int((roles["significant"] == roles["above_tau"]).sum())
        captions = ["Roles held by each head", "Co-location: heads holding both roles",
                    "Heads holding each role, per layer", "Histogram of the t-tests' p-values"]
        body = (
            f"<p>Sieve-bias scores per head and role (Pande et al. 2021); a head holds a role by the "
            f"<b>{rule}</b>: one-sided t-test of H0 mean &le; tau = {html.escape(str(opts.get('tau', '?')))} "
            f"at alpha = {html.escape(str(opts.get('alpha', '?')))}; multiple-testing correction: "
            f"<b>{html.escape(correction)}</b>. The t-test and the plain mean-above-tau rule agree on "
            f"{both} of {len(roles)} head x role pairs. Grid letters: "
            + ", ".join(f"{v} = {html.escape(k)}" for k, v in ABBREVIATIONS.items())
            + "; +k = k single-relation syntactic roles.</p>"
            + conventions_html(run, "roles", CONVENTIONS) + unit + not_tested
            + "".join(figure_html(n, c) for n, c in zip(names, captions, strict=True))
            + "<h3>Heads per layer holding each role</h3>" + counts.to_html(border=0)
            + "<h3>Co-location</h3>" + colocation(roles).to_html(border=0)
        )
        return ReportSection(key="roles", title="Heads hypothesis: roles", html=body, figures=names)


def roles_grid_figure(roles: pd.DataFrame, figures: Path) -> str:
    """Layer x head grid: colour = number of roles held, letters = which (see :data:`ABBREVIATIONS`; ``+k``
    counts the per-relation syntactic roles)."""
    from headscope.report.figures import layer_head_heatmap, save_figure

    held = roles[roles["has_role"].astype(bool)]
    n_layers, n_heads = int(roles["layer"].max()) + 1, int(roles["head"].max()) + 1
    grid = np.zeros((n_layers, n_heads))
    letters = np.full((n_layers, n_heads), "", dtype=object)
    for (layer, head), group in held.groupby(["layer", "head"]):
        grid[layer, head] = len(group)
        others = sum(r not in ABBREVIATIONS for r in group["role"])
        letters[layer, head] = "".join(ABBREVIATIONS.get(r, "") for r in group["role"]) + (
            f"+{others}" if others else "")
    fig = layer_head_heatmap(grid, "roles held", cmap="Blues", label="roles", vmin=0)
    ax = fig.axes[0]
    for (layer, head), text in np.ndenumerate(letters):
        if text:
            ax.text(head, layer, text, ha="center", va="center", fontsize=4)
    save_figure(fig, figures, "roles_grid")
    return "roles_grid"


def colocation_figure(roles: pd.DataFrame, figures: Path) -> str:
    import matplotlib.pyplot as plt

    from headscope.report.figures import COLUMN_WIDTH, save_figure

    matrix = colocation(roles)
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, COLUMN_WIDTH), layout="constrained")
    im = ax.imshow(matrix.to_numpy(), cmap="Purples")
    ax.set_xticks(range(len(matrix)), matrix.columns, rotation=90, fontsize=5)
    ax.set_yticks(range(len(matrix)), matrix.index, fontsize=5)
    for (i, j), v in np.ndenumerate(matrix.to_numpy()):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=4)
    ax.set_title("heads holding both roles")
    fig.colorbar(im, ax=ax, shrink=0.8)
    save_figure(fig, figures, "roles_colocation")
    return "roles_colocation"


def per_layer_figure(roles: pd.DataFrame, figures: Path) -> str:
    import matplotlib.pyplot as plt

    from headscope.report.figures import COLUMN_WIDTH, save_figure

    counts = per_layer_counts(roles)
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, COLUMN_WIDTH * 0.75), layout="constrained")
    for role in counts.columns:
        ax.plot(counts.index, counts[role], marker="o", markersize=2, linewidth=0.8, label=role)
    ax.set_xlabel("layer")
    ax.set_ylabel("heads holding the role")
    ax.set_xticks(counts.index)
    ax.legend(fontsize=4, ncol=2)
    save_figure(fig, figures, "roles_per_layer")
    return "roles_per_layer"


def pvalue_figure(roles: pd.DataFrame, figures: Path) -> str:
    import matplotlib.pyplot as plt

    from headscope.report.figures import COLUMN_WIDTH, save_figure

    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, COLUMN_WIDTH * 0.6), layout="constrained")
    ax.hist(roles["p"].dropna(), bins=np.linspace(0, 1, 21).tolist(), color="grey")
    ax.set_xlabel("p (one-sided, uncorrected)")
    ax.set_ylabel("head x role tests")
    save_figure(fig, figures, "roles_pvalues")
    return "roles_pvalues"
