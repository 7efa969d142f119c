"""The report's first screen: what the heads do (the atlas, grouped by behaviour) and which statistic the
head grid opens on.

The atlas is read from the run's ``atlas.csv`` (``headscope.atlas`` writes it; the rules are in
``docs/atlas.md``). Groups come in the order ``run.json`` lists them (``atlas.labels``), the heads that fit no
label last.
"""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from headscope.engine.results import RunResult
from headscope.report.section import varies

#: One line per atlas group (families by prefix: ``role:``, ``syntax:``, ``coref:``, ``pattern:``).
GROUP_MEANINGS = {
    "previous-token": "attend mostly to the token before",
    "next-token": "attend mostly to the token after",
    "self": "attend mostly to the token itself",
    "broad": "spread their attention over many tokens",
    "cls-sink": "park their attention on [CLS]",
    "sep-sink": "park their attention on [SEP]",
    "punct-sink": "park their attention on punctuation",
    "first-token-sink": "park their attention on the first token (an attention sink)",
    "duplicate": "attend to earlier copies of the current token",
    "induction": "attend to the token that followed an earlier copy of the current one",
    "prefix-matching": "find, on repeated random tokens, the token that followed the current one before",
    "retrieval": "copy the answer from the context in needle-in-a-haystack prompts",
    "role:": "hold the role {name} by a significant t-test (Pande et al. 2021)",
    "syntax:": "point from a {name} dependent to its head word more often than the best fixed offset",
    "coref:": "link {name} mentions to an antecedent best of all heads",
    "pattern:": "are in the distance cluster named {name}",
    "important": "are among the most important heads by gradient (Michel et al. 2019)",
    "matters": "raise the model's loss when ablated (the interval of the change above 0)",
    "unlabelled": "fit none of the labels this run measured",
}

#: Heads listed in a group before the rest are folded away.
SHOWN_HEADS = 5

#: Families of groups shown as one card, a line per member: prefix -> (card title, source).
FAMILIES = {"role:": ("Roles", "Pande et al. 2021"), "syntax:": ("Syntax", "Clark et al. 2019, s4"),
            "coref:": ("Coreference", "Clark et al. 2019, s4.3"), "pattern:": ("Distance patterns",
                                                                               "after Guan et al. 2020")}
#: Heads named in a family member's line before its list is folded.
FAMILY_HEADS = 3


def group_meaning(group: str) -> str:
    """The line saying what the heads of ``group`` do."""
    for prefix, text in GROUP_MEANINGS.items():
        if group == prefix or (prefix.endswith(":") and group.startswith(prefix)):
            return text.format(name=group[len(prefix):])
    return ""


def group_order(run: RunResult, atlas: pd.DataFrame) -> list[str]:
    """The atlas's groups: in ``run.json``'s order (``atlas.labels``), then any other by first appearance."""
    listed = list((run.run.get("atlas", {}) or {}).get("labels", {}))
    seen = list(dict.fromkeys(atlas["group"]))
    return [g for g in listed if g in seen] + [g for g in seen if g not in listed and g != "unlabelled"]


def _head_link(name: str) -> str:
    text = html.escape(name)
    return f'<a class="head-link" href="#heads" data-head="{text}">{text}</a>'


def _ranked(rows: pd.DataFrame) -> pd.DataFrame:
    rank = pd.to_numeric(rows["rank"].astype(str).str.split("/").str[0], errors="coerce")
    return rows.assign(_rank=rank).sort_values(["_rank", "layer", "head"], kind="stable")


def _items(rows: pd.DataFrame) -> list[str]:
    return [f"<li>{_head_link(r.head_name)} <span class='evidence'>{html.escape(str(r.evidence))}</span></li>"
            for r in _ranked(rows).itertuples()]


def _count(n: int) -> str:
    return f"{n} head{'s' if n != 1 else ''}"


def _heads(rows: pd.DataFrame) -> int:
    return int(rows[["layer", "head"]].drop_duplicates().shape[0])


def _rule(rows: pd.DataFrame) -> str:
    """The rules that made a group's labels, each with its sample (a group may rest on two statistics:
    previous-token on ``prev`` and on a decoder's ``previous_token``)."""
    pairs = list(dict.fromkeys(zip(rows["rule"].astype(str), rows["sample"].astype(str), strict=True)))
    return "".join(f"<p class='rule'>Rule: {html.escape(rule)}. Sample: {html.escape(sample)}.</p>"
                   for rule, sample in pairs)


def group_card(group: str, rows: pd.DataFrame) -> str:
    """One behaviour: what its heads do, each head with its evidence (the first few shown), the rule."""
    items = _items(rows)
    more = (f"<details><summary>{len(items) - SHOWN_HEADS} more</summary><ul>{''.join(items[SHOWN_HEADS:])}"
            "</ul></details>" if len(items) > SHOWN_HEADS else "")
    return (f"<div class='group' data-group='{html.escape(group)}'><h3>{html.escape(group)} "
            f"<span class='count'>{_count(_heads(rows))}</span></h3>"
            f"<p class='meaning'>{html.escape(group_meaning(group))}</p><ul>{''.join(items[:SHOWN_HEADS])}</ul>"
            f"{more}{_rule(rows)}</div>")


def family_card(prefix: str, groups: list[str], atlas: pd.DataFrame) -> str:
    """A family of behaviours (every role, relation, mention type or pattern) as one card: a line per member
    naming its best heads; the member's full list, each head with its evidence, unfolds from the line."""
    title, source = FAMILIES[prefix]
    lines = []
    for group in groups:
        rows = atlas[atlas["group"] == group]
        ranked = _ranked(rows)
        best = ", ".join(_head_link(n) for n in ranked["head_name"].head(FAMILY_HEADS))
        rest = len(ranked) - FAMILY_HEADS
        lines.append(f"<details class='member' data-group='{html.escape(group)}'><summary><b>"
                     f"{html.escape(group[len(prefix):])}</b> <span class='count'>{_count(_heads(rows))}</span> "
                     f"{best}{f' and {rest} more' if rest > 0 else ''}</summary>"
                     f"<p class='meaning'>{html.escape(group_meaning(group))}</p><ul>{''.join(_items(rows))}</ul>"
                     f"{_rule(rows)}</details>")
    heads = _heads(atlas[atlas["group"].isin(groups)])
    return (f"<div class='group family' data-family='{html.escape(prefix)}'><h3>{html.escape(title)} "
            f"<span class='count'>{len(groups)} label{'s' if len(groups) != 1 else ''}, {_count(heads)}; "
            f"{html.escape(source)}</span></h3>"
            f"{''.join(lines)}</div>")


def atlas_html(run: RunResult) -> str:
    """The "What the heads do" section: one card per behaviour (one per family of roles, relations, mention
    types, patterns) with its heads and their evidence, then the heads that fit no label."""
    atlas = run.tables.get("atlas")
    if atlas is None or atlas.empty:
        return ("<p class='note'>This run has no head atlas (atlas.csv): runs from before headscope 0.3 do not "
                "write one; run the model again to get it.</p>")
    atlas = atlas.copy()
    atlas["head_name"] = atlas["head_name"].astype(str)
    cards, done = [], set()
    groups = group_order(run, atlas)
    for group in groups:
        prefix = next((f for f in FAMILIES if group.startswith(f)), None)
        if prefix is None:
            cards.append(group_card(group, atlas[atlas["group"] == group]))
        elif prefix not in done:
            done.add(prefix)
            cards.append(family_card(prefix, [g for g in groups if g.startswith(prefix)], atlas))
    unlabelled = atlas[atlas["group"] == "unlabelled"].sort_values(["layer", "head"])
    heads = _heads(atlas)
    labelled = heads - len(unlabelled)
    lead = (f"<p>{labelled} of {heads} heads have at least one label from what this run measured "
            f"({len(groups)} labels); each line gives the statistic, its value and the head's rank among all heads. "
            "Click a head to see its profile in the grid below; the rules and their sources are in "
            "docs/atlas.md.</p>")
    rest = (f"<div class='unlabelled' data-group='unlabelled'><h3>Heads that fit no label <span class='count'>"
            f"{_count(len(unlabelled))}</span></h3><p class='heads'>"
            + " ".join(_head_link(n) for n in unlabelled["head_name"]) + "</p></div>") if len(unlabelled) else (
        "<p class='note'>Every head has at least one label.</p>")
    return lead + f"<div class='atlas'>{''.join(cards)}</div>" + rest


def _strongest_role(heads: pd.DataFrame, run: RunResult) -> list[str]:
    """The ``role_<role>`` columns, the role most heads hold first (then the largest spread)."""
    columns = [c for c in heads.columns if c.startswith("role_") and pd.api.types.is_numeric_dtype(heads[c])]
    labels = (run.run.get("atlas", {}) or {}).get("labels", {})

    def key(column: str) -> tuple[int, float]:
        values = pd.to_numeric(heads[column], errors="coerce")
        return (-int(labels.get(f"role:{column[5:]}", 0)), -float(values.max() - values.min()))

    return sorted(columns, key=key)


def default_statistic(run: RunResult) -> str | None:
    """The column the head grid opens on: one the run measured and that varies over the heads.

    A decoder: the attention to the first token (sink), else induction; an encoder: the attention to [SEP],
    else the role most heads hold; then any of the usual statistics, then any numeric column that varies.
    """
    heads = run.heads
    if heads.empty:
        return None
    causal = bool(run.run.get("model", {}).get("is_causal"))
    preferred: list[Any] = (["sink_first", "induction", "previous_token", "prev", "entropy"] if causal
                            else ["sep", *_strongest_role(heads, run), "prev", "entropy", "cls"])
    numeric = [c for c in heads.columns if c not in ("layer", "head")
               and pd.api.types.is_numeric_dtype(heads[c]) and not pd.api.types.is_bool_dtype(heads[c])
               and not c.startswith("cluster")]
    for column in [*preferred, *numeric]:
        if column in heads.columns and column in numeric and varies(heads[column]):
            return str(column)
    return None
