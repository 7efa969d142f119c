"""The head atlas: every head of a run with the labels its measured statistics give it, and the evidence.

One row per head and label (``atlas.csv``): the group (previous-token, broad, ``role:local``, ...), the
statistic the label rests on, its value and rank among the heads, the rule (threshold or test) that made the
label, the sample behind it and one readable line of evidence. A head that fits no label gets one row in the
group ``unlabelled``. Only what the run measured appears: a group whose column (or table) is missing gives no
row. The rules, their sources and the samples they need are in ``docs/atlas.md``.

The labels are the analyses' own: each analysis that labels heads declares ``atlas_labels``
(:class:`~headscope.analyses.findings.AtlasLabels`: its groups, thresholds and rule, in
:mod:`headscope.analyses.labels`), and this module runs every declaration of the registry, in their ``order``.

This module sits at the orchestration layer: it reads the assembled results (per-head columns, tables and the
run's summaries), never the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

import headscope.analyses  # noqa: F401 (registers every analysis, so that the registry holds every declaration)
from headscope.analyses.findings import AtlasLabels, AtlasRows, declared_atlas_labels

COLUMNS = ["layer", "head", "head_name", "group", "statistic", "value", "rank", "rule", "sample", "evidence"]


def declarations() -> list[tuple[str, AtlasLabels]]:
    """Every registered analysis's atlas labels, with its name, in their ``order`` (the whole registry: importing
    :mod:`headscope.analyses` registers every analysis)."""
    return declared_atlas_labels()


def default_thresholds() -> dict[str, float]:
    """The thresholds of the atlas's rules by name, with their defaults, from the analyses' declarations."""
    return {name: value for _, labels in declarations() for name, value in labels.thresholds.items()}


def groups() -> tuple[str, ...]:
    """The groups in the order the atlas lists them, from the analyses' declarations, then ``unlabelled``."""
    return (*dict.fromkeys(group for _, labels in declarations() for group in labels.groups), "unlabelled")


#: Thresholds of the atlas's rules (``--atlas-threshold NAME=VALUE`` overrides one), from the packaged
#: analyses' declarations. A head gets the label of a statistic when its value is strictly above the
#: threshold; ``important_fraction`` is the share of heads, ranked by importance, labelled important.
THRESHOLDS: dict[str, float] = default_thresholds()
#: The groups in the order the atlas lists them (names ending in ``:`` are families: ``role:``, ``pattern:``).
GROUPS = groups()


def parse_thresholds(items: Iterable[str]) -> dict[str, float]:
    """``NAME=VALUE`` overrides as a dict; ValueError for a malformed item, an unknown name or a bad value."""
    out: dict[str, float] = {}
    known = default_thresholds()
    shares = {name for _, labels in declarations() for name in labels.shares}
    for item in items:
        name, sep, text = str(item).partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"atlas threshold {item!r}: expected NAME=VALUE (e.g. prev=0.6)")
        if name not in known:
            raise ValueError(f"atlas threshold {name!r} is not one of {', '.join(known)}")
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"atlas threshold {item!r}: {text.strip()!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"atlas threshold {item!r}: the value must be a finite number >= 0")
        if name in shares and not 0 < value <= 1:
            raise ValueError(f"atlas threshold {item!r}: {name} must be in (0, 1]")
        out[name] = value
    return out


def thresholds_for(run: Mapping[str, Any]) -> dict[str, float]:
    """The thresholds of a run: the defaults, those the run's analysis options set (decoder_heads' sink
    epsilon), then ``atlas_thresholds``."""
    values = default_thresholds()
    options = run.get("analysis_options", {}) or {}
    for name, labels in declarations():
        mine = options.get(name, {}) or {}
        for threshold, option in labels.from_options.items():
            if option in mine:
                values[threshold] = float(mine[option])
    values.update(parse_thresholds(run.get("config", {}).get("atlas_thresholds", []) or []))
    return values


def build_atlas(heads: pd.DataFrame, tables: Mapping[str, pd.DataFrame], run: Mapping[str, Any]) -> pd.DataFrame:
    """The atlas of a run: one row per head and label, plus one ``unlabelled`` row per head with none.

    Parameters
    ----------
    heads : DataFrame
        The run's per-head table (``heads.csv``).
    tables : dict of str to DataFrame
        The run's other tables (``roles``, ``syntax``, ``coref_best``, ``retrieval``, ...).
    run : dict
        The run's manifest (``run.json``): analysis summaries, options, counts and ``config.atlas_thresholds``.

    Returns
    -------
    DataFrame
        Columns ``layer, head, head_name, group, statistic, value, rank, rule, sample, evidence``, sorted by
        layer and head, then group in :data:`GROUPS` order.
    """
    thresholds = thresholds_for(run)
    if heads is None or heads.empty:
        return pd.DataFrame(columns=COLUMNS)
    out = AtlasRows(heads.reset_index(drop=True), tables, run, thresholds)
    for _, labels in declarations():
        labels.rows(out)
    labelled = {(r["layer"], r["head"]) for r in out.rows}
    for row in out.heads[["layer", "head"]].itertuples(index=False):
        if (int(row.layer), int(row.head)) not in labelled:
            out.add(row.layer, row.head, "unlabelled", "", float("nan"), "-", "below every threshold measured",
                    "", "fits none of the labels this run measured")
    atlas = pd.DataFrame(out.rows, columns=COLUMNS)
    order = groups()
    atlas["order"] = atlas["group"].map(lambda group: group_order(group, order))
    atlas = atlas.sort_values(["layer", "head", "order"], kind="stable").drop(columns="order")
    return atlas.reset_index(drop=True)


def group_order(group: str, order: tuple[str, ...] | None = None) -> int:
    """Position of ``group`` in ``order`` (default: :func:`groups`; families by their prefix)."""
    order = groups() if order is None else order
    for k, name in enumerate(order):
        if group == name or (name.endswith(":") and group.startswith(name)):
            return k
    return len(order)


def atlas_summary(atlas: pd.DataFrame, run: Mapping[str, Any]) -> dict[str, Any]:
    """What ``run.json`` records of the atlas: labels per group, unlabelled heads, the thresholds used."""
    labelled = atlas[atlas["group"] != "unlabelled"]
    counts = labelled.groupby("group", sort=False).size()
    order = groups()
    return {"labels": {g: int(counts[g]) for g in sorted(counts.index, key=lambda g: (group_order(g, order), g))},
            "labelled_heads": int(labelled[["layer", "head"]].drop_duplicates().shape[0]),
            "unlabelled": int((atlas["group"] == "unlabelled").sum()),
            "thresholds": thresholds_for(run),
            "rules": "docs/atlas.md"}
