"""The roles analysis as an accumulator: running count, sum and sum of squares per role and head, and the
t-tests of ``finalize``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from headscope.analyses.base import Analysis, AnalysisResult
from headscope.analyses.conventions import effective_conventions
from headscope.analyses.findings import Behaviour, Ranking
from headscope.analyses.labels.roles import LABELS as ATLAS_LABELS
from headscope.analyses.registry import register
from headscope.analyses.roles.arcs import (
    DependentSlots,
    PieceSlots,
    dependent_slots,
    piece_slots,
)
from headscope.analyses.roles.options import (
    CONVENTIONS,
    DEFAULT_RELATIONS,
    INPUT_KINDS,
    MAIN_ROLES,
    SURFACE_ROLES,
    WINDOW,
    RolesOptions,
)
from headscope.analyses.roles.scores import sieve_row_sums
from headscope.analyses.roles.targets import (
    SurfaceTargets,
    surface_row_sums,
    surface_targets,
)
from headscope.analyses.stats import adjust_pvalues, one_sided_t_test

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.engine.capture import LayerAttention
    from headscope.engine.context import AnalysisContext
    from headscope.model.encode import Example


def one_sided_tests(n: np.ndarray, total: np.ndarray, total_sq: np.ndarray, tau: float,
                    conventions: str = "headscope") -> dict[str, np.ndarray]:
    """The roles' one-sided t-tests (H0 mean <= tau) from count, sum and sum of squares
    (:func:`headscope.analyses.stats.one_sided_t_test`); ``conventions="pande"``: as Pande et al.'s
    ``ztest_own`` (population standard deviation, ``p = 1 - cdf``)."""
    return one_sided_t_test(n, total, total_sq, tau, population_sd=conventions == "pande")


def untested_summary(untested: dict[str, int], min_n: int) -> str:
    """One manifest warning for every role whose t-tests were not run (a raw-text run leaves five or six):
    the roles grouped by their number of units, and what the missing ones need."""
    by_n: dict[int, list[str]] = {}
    for role, n in untested.items():
        by_n.setdefault(int(n), []).append(role)
    groups = "; ".join(f"{', '.join(roles)} ({n} unit{'s' if n != 1 else ''})" for n, roles in by_n.items())
    needs = []
    if any(role.startswith("syntactic") and n == 0 for role, n in untested.items()):
        needs.append("syntactic roles need dependency trees: --treebank, or --parse spacy on raw text")
    if untested.get("block") == 0:
        needs.append("block needs segment pairs [CLS] A [SEP] B [SEP]")
    count = len(untested)
    return (f"roles: {count} role{'s' if count != 1 else ''} not tested in any head, fewer than roles_min_n = "
            f"{min_n} units (scores): {groups}" + (f" ({'; '.join(needs)})" if needs else "")
            + "; their rows have tested False, p NaN, has_role False")


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


@register
class HeadRoles(Analysis):
    """Per head and role: sieve-bias scores, one-sided t-tests against tau, and the roles each head holds."""

    # declared state (add_state in start)
    count_: torch.Tensor
    sum_: torch.Tensor
    sumsq_: torch.Tensor
    inputs_: torch.Tensor
    input_sentences_: torch.Tensor
    silver_sentences_: int

    name = "roles"
    report_order = 60
    ranking = Ranking("t", table="roles", per_head="max", order=10,
                      describe="the largest t over the head's roles (how clearly it holds its strongest role)")
    behaviour = Behaviour(table="roles", where=lambda roles: roles["has_role"].astype(bool), order=10)  # a held role
    atlas_labels = ATLAS_LABELS
    reads_pieces = True
    description = "heads hypothesis: local/delimiter/block/syntactic roles with t-tests (Pande et al. 2021)"
    Options = RolesOptions

    reads_words = True

    def wants_words(self, example: Example) -> bool:
        # Syntactic roles only (raw text without parses needs no word map); Pande et al.'s are piece level.
        return example.has_tree and self.conventions_ != "pande"

    def start(self, ctx: AnalysisContext) -> None:
        opts: RolesOptions = self.options
        self.conventions_ = effective_conventions(ctx, tuple(CONVENTIONS))
        self.correction_ = "none" if self.conventions_ == "pande" else opts.correction
        # The notebooks score each model input once (a sentence pair is one observation).
        self.unit_ = "input" if self.conventions_ == "pande" else opts.roles_unit
        self.relations_ = list(dict.fromkeys([*DEFAULT_RELATIONS, *opts.relations]))
        self.roles_ = [*SURFACE_ROLES, "syntactic", *(f"syntactic_{r}" for r in self.relations_)]
        shape = (len(self.roles_), ctx.info.n_layers, ctx.info.n_heads)
        # Sufficient statistics of the scores: count, sum and sum of squares per role (and head).
        self.add_state("count_", torch.zeros(len(self.roles_), dtype=torch.float64, device=ctx.device))
        self.add_state("sum_", torch.zeros(shape, dtype=torch.float64, device=ctx.device))
        self.add_state("sumsq_", torch.zeros(shape, dtype=torch.float64, device=ctx.device))
        # Which units the tests ran over: inputs of each kind, and the source sentences they hold.
        self.add_state("inputs_", torch.zeros(len(INPUT_KINDS), dtype=torch.float64, device=ctx.device))
        self.add_state("input_sentences_", torch.zeros(len(INPUT_KINDS), dtype=torch.float64, device=ctx.device))
        # Sentences whose tree is a silver parse (--parse spacy): the summary and report name the parser.
        self.add_state("silver_sentences_", 0)
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
        self.silver_sentences_ += sum(bool(s.silver) for ex in batch.examples for s in ex.sentences)
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

    def finalize(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        opts: RolesOptions = self.options
        frame = self.table()
        sentences = dict(zip(self.roles_, self.count_.cpu().numpy().astype(int).tolist(), strict=True))
        untested = {role: n for role, n in sentences.items() if n < opts.roles_min_n}
        # One line for them all: a raw-text run leaves every syntactic role and block untested, and a warning
        # each buried the rest of the run's output (the per-role counts are in the summary's not_tested).
        warnings = [untested_summary(untested, opts.roles_min_n)] if untested else []
        unit = units_summary(self.inputs_.cpu().numpy(), self.input_sentences_.cpu().numpy(), self.unit_)
        held = frame[frame["has_role"]]
        main = held[held["role"].isin(MAIN_ROLES)]
        n_heads = frame[["layer", "head"]].drop_duplicates().shape[0]
        p = frame["p"].dropna()
        # The grid and the head profiles colour (and rank heads) by any per-head column: one sieve-bias score
        # per role, for tested roles only (at least roles_min_n units); an untested role's column is empty, so
        # no head is shown as strongest at it on a handful of scores.
        heads = frame.assign(score_mean=frame["score_mean"].where(frame["tested"])).pivot(
            index=["layer", "head"], columns="role", values="score_mean")
        heads = heads[list(self.roles_)].add_prefix("role_").reset_index()
        heads.columns.name = None
        return AnalysisResult(
            name=self.name,
            heads=heads,
            tables={"roles": frame},
            warnings=warnings,
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
                "per_head_columns": (f"heads.csv role_<role>: the mean sieve-bias score, for roles with at least "
                                     f"roles_min_n = {opts.roles_min_n} units only (empty for the others)"),
                "silver_sentences": int(self.silver_sentences_),
                **({"parser": ctx.silver_parser(),
                    "trees": "syntactic roles read silver parses (--parse spacy) for "
                    f"{int(self.silver_sentences_)} sentences"} if self.silver_sentences_ else {}),
                "heads_with_role": {r: int((held["role"] == r).sum()) for r in self.roles_},
                "multi_role_heads": int((main.groupby(["layer", "head"]).size() > 1).sum()),
                "local_and_syntactic_heads": int((main.groupby(["layer", "head"])["role"].agg(
                    lambda r: {"local", "syntactic"} <= set(r))).sum()) if len(main) else 0,
                "heads": n_heads,
                "significant_vs_above_tau_agree": float((frame["significant"] == frame["above_tau"]).mean()),
                "p_near_0_or_1": float(((p < 0.01) | (p > 0.99)).mean()) if len(p) else None,
            },
        )
