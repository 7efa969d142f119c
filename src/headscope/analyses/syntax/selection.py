"""Head and offset selection from the counts of ``syntax``: the accuracy table, per-head best relations and
the best head per relation picked on one split and scored on another (Clark et al. 2019, section 4)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from headscope.analyses.base import head_name
from headscope.analyses.syntax.arcs import OFFSETS
from headscope.analyses.syntax.predict import DIRECTIONS

#: Split names, in the order of the ``split`` axis of the counts.
SPLITS = ("selection", "held_out")
#: Default of ``--syntax-min-n``: fewest arcs of a relation for any "best" claim about it.
MIN_N = 20


def relation_baselines(relations: list[str], total: np.ndarray, offset_correct: np.ndarray) -> dict[str, float]:
    """Per relation, the accuracy of its best fixed offset over the whole corpus (both splits).

    ``total`` of shape (n_splits, n_relations) and ``offset_correct`` of shape (n_splits, n_relations,
    n_offsets), as :meth:`SyntaxHeads.counts` gives them.
    """
    arcs, hits = total.sum(0), offset_correct.sum(0)
    return {r: float(hits[k].max() / arcs[k]) for k, r in enumerate(relations) if arcs[k] > 0 and hits.shape[-1]}


def best_relation_per_head(table: pd.DataFrame, baselines: dict[str, float] | None = None, min_n: int = MIN_N
                           ) -> pd.DataFrame | None:
    """Per head, the relation it predicts best over the whole corpus and that accuracy (either direction).

    Only relations with at least ``min_n`` arcs compete (``--syntax-min-n``): a relation with one or two arcs
    would give every head an accuracy of 1. A head gets NaN and an empty relation when no relation has that
    many arcs. Returns None when no relation was scored.

    Columns for ``heads.csv`` (the report's grid is coloured by them): ``syntax_best_accuracy``,
    ``syntax_best_relation``, ``syntax_best_n`` (the relation's arcs) and ``syntax_best_baseline`` (the
    accuracy of that relation's best fixed offset over the same arcs, from ``baselines``).
    """
    scored = table[(table["split"] == "all") & (table["relation"] != "all")]
    if scored.empty:
        return None
    heads = scored[["layer", "head"]].drop_duplicates().sort_values(["layer", "head"], kind="stable")
    rows = scored[scored["n"] >= min_n]
    top = rows.sort_values("accuracy", ascending=False, kind="stable").drop_duplicates(["layer", "head"])
    top = heads.merge(top, on=["layer", "head"], how="left").sort_values(["layer", "head"], kind="stable")
    baseline = top["relation"].map(baselines or {})
    return pd.DataFrame({"layer": top["layer"].to_numpy(int), "head": top["head"].to_numpy(int),
                         "syntax_best_accuracy": top["accuracy"].to_numpy(float),
                         "syntax_best_relation": top["relation"].fillna("").to_numpy(str),
                         "syntax_best_n": top["n"].to_numpy(float),
                         "syntax_best_baseline": baseline.to_numpy(float)})


def accuracy_table(relations: list[str], correct: np.ndarray, total: np.ndarray) -> pd.DataFrame:
    """``syntax.csv``: one row per split (selection, held_out, all) x relation x direction x head."""
    L, H = correct.shape[-2:]
    parts = {**{s: (correct[i], total[i]) for i, s in enumerate(SPLITS)},
             "all": (correct.sum(0), total.sum(0))}
    frames = []
    layer, head = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
    for split, (c, t) in parts.items():
        for r, relation in enumerate(relations):
            if t[r] == 0:
                continue
            for d, direction in enumerate(DIRECTIONS):
                frames.append(pd.DataFrame({
                    "split": split, "relation": relation, "direction": direction,
                    "layer": layer.reshape(-1), "head": head.reshape(-1),
                    "accuracy": c[d, r].reshape(-1) / t[r], "n": int(t[r])}))
    columns = ["split", "relation", "direction", "layer", "head", "accuracy", "n"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _pick(correct: np.ndarray, n: int, clark_ties: bool = False) -> tuple[int, int, int, float]:
    """(direction, layer, head, accuracy) of the best head; ``correct`` of shape (n_directions, L, H).

    Ties go to the first direction, layer and head; with ``clark_ties`` to the highest layer, then head, then
    ``head->dep``, as Clark et al.'s ``sorted((score, layer, head, direction))[-1]`` (``"dep->head"`` sorts
    before ``"head<-dep"``).
    """
    if clark_ties:
        by_layer = correct.transpose(1, 2, 0).reshape(-1)  # (layer, head, direction) order
        flat = len(by_layer) - 1 - int(np.argmax(by_layer[::-1]))
        layer, head, d = np.unravel_index(flat, correct.transpose(1, 2, 0).shape)
    else:
        d, layer, head = np.unravel_index(int(np.argmax(correct.reshape(-1))), correct.shape)
    return int(d), int(layer), int(head), float(correct[d, layer, head] / n)


def _pick_offset(offset_correct: np.ndarray, clark_ties: bool = False) -> int:
    """Index of the best offset; ties to the first, or with ``clark_ties`` to the largest (their ``max``)."""
    if clark_ties:
        return len(offset_correct) - 1 - int(np.argmax(offset_correct[::-1]))
    return int(np.argmax(offset_correct))


def best_heads(relations: list[str], correct: np.ndarray, total: np.ndarray, offset_correct: np.ndarray,
               offsets: tuple[int, ...] = OFFSETS, clark_ties: bool = False, min_n: int = 1) -> pd.DataFrame:
    """``syntax_best.csv``: per relation, the best head and offset picked on the selection split and scored
    on the held-out split, and (``same_data_*``) picked and scored on the held-out split (Clark et al.).

    ``offsets`` label the last axis of ``offset_correct``; ``clark_ties`` breaks ties as Clark et al.'s code.
    A relation with fewer than ``min_n`` arcs in the held-out split, or in the selection split when the run has
    one (``--syntax-held-out-fraction 1`` leaves it empty: only the same-data pick exists then), is listed with
    its counts and ``below_min_n`` True, but no head or offset is picked for it (every other column empty).
    """
    sel, held = SPLITS.index("selection"), SPLITS.index("held_out")
    has_selection = bool(total[sel].sum() > 0)
    rows = []
    for r, relation in enumerate(relations):
        n_sel, n_held = int(total[sel, r]), int(total[held, r])
        below = n_held < min_n or (has_selection and n_sel < min_n)
        row: dict[str, Any] = {"relation": relation, "n_selection": n_sel, "n_held_out": n_held,
                               "below_min_n": below}
        if below:
            rows.append(row)
            continue
        if n_sel and n_held:
            d, layer, head, acc_sel = _pick(correct[sel, :, r], n_sel, clark_ties)
            o = _pick_offset(offset_correct[sel, r], clark_ties)
            row.update(direction=DIRECTIONS[d], layer=layer, head=head, head_name=head_name(layer, head),
                       selection_accuracy=acc_sel, accuracy=correct[held, d, r, layer, head] / n_held,
                       baseline_offset=offsets[o], baseline_accuracy=offset_correct[held, r, o] / n_held)
        if n_held:
            d, layer, head, acc = _pick(correct[held, :, r], n_held, clark_ties)
            o = _pick_offset(offset_correct[held, r], clark_ties)
            row.update(same_data_direction=DIRECTIONS[d], same_data_layer=layer, same_data_head=head,
                       same_data_head_name=head_name(layer, head), same_data_accuracy=acc,
                       same_data_baseline_offset=offsets[o],
                       same_data_baseline_accuracy=offset_correct[held, r, o] / n_held)
        rows.append(row)
    columns = ["relation", "n_selection", "n_held_out", "below_min_n", "direction", "layer", "head", "head_name",
               "selection_accuracy", "accuracy", "baseline_offset", "baseline_accuracy",
               "same_data_direction", "same_data_layer", "same_data_head", "same_data_head_name",
               "same_data_accuracy", "same_data_baseline_offset", "same_data_baseline_accuracy"]
    best = pd.DataFrame(rows).reindex(columns=columns)
    for c in ("layer", "head", "baseline_offset", "same_data_layer", "same_data_head",
              "same_data_baseline_offset"):
        best[c] = best[c].astype("Int64")
    return best
