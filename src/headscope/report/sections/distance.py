"""The distance patterns' section (after Guan et al. 2020): each head's named cluster, and what the clusters
look like."""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd

from headscope.analyses.distance import FEATURES, LABELS, PATTERNS
from headscope.report.figures import COLUMN_WIDTH, head_grid
from headscope.report.heatmap import MARGINS, heatmap_size, label_step
from headscope.report.section import ReportSection, SectionStart, no_figure_html, opens

#: What each per-head column means, for the head grid's chooser.
MEANINGS = {**LABELS, "cluster_distance": "distance of the head from its cluster's centre (standardised features)"}


def pattern_colour(pattern: str) -> tuple[float, float, float, float]:
    """The colour of a pattern name in every figure (tab10, in :data:`PATTERNS` order; grey if unknown)."""
    import matplotlib.pyplot as plt

    return plt.get_cmap("tab10")(PATTERNS.index(pattern)) if pattern in PATTERNS else (0.6, 0.6, 0.6, 1.0)


@opens("distance", table="clusters")
def section(start: SectionStart) -> ReportSection | None:
    run = start.run
    if "pattern" not in run.heads.columns:
        return None
    heads, clusters, figs = run.heads, start.table, start.figs
    rows = "".join(
        f"<tr><td>{int(r.cluster)}</td><td>{html.escape(str(r.pattern))}</td><td>{int(r.n_heads)}</td>"
        f"<td>{r.special_share:.2f}</td><td>{r.rel_m1:.2f}</td><td>{r.rel_0:.2f}</td><td>{r.rel_p1:.2f}</td>"
        f"<td>{r.abs_dist_mean:.1f}</td><td>{r.entropy_ratio:.2f}</td></tr>" for r in clusters.itertuples())
    table = ("<div class='wide'><table><tr><th>cluster</th><th>pattern</th><th>heads</th><th>special</th>"
             "<th>prev</th><th>self</th><th>next</th><th>mean |j-i|</th><th>entropy ratio</th></tr>" + rows
             + "</table></div>")
    cluster = head_grid(heads, "cluster")
    if len(set(cluster[np.isfinite(cluster)].tolist())) > 1:
        pattern_map = figs.plot(lambda: pattern_figure(heads), "distance_patterns", "pattern of each head",
                                cluster, "")
    else:
        pattern_map = no_figure_html(f"Every head is in one cluster ({heads['pattern'].iloc[0]}), so no map.")
    cols = profile_columns(heads)
    profile = profile_table(heads, cols)
    body = ("<p>Distance-based features of every head, standardised and clustered; each cluster is named "
            "from its centroid by the rules in <code>docs/patterns.md</code>. Guan et al. (2020)'s exact "
            "feature set is reconstructed from the paper's title and abstract (the full text was not "
            "available).</p>" + table + pattern_map
            + figs.plot(lambda: profile_figure(profile, heads, cols), "distance_profile",
                        "feature profile of each cluster (standardised centroid)", profile.to_numpy(),
                        "Cluster profiles: every cluster has the same standardised features."))
    return start.section("Distance-based patterns", body)


def pattern_figure(heads: pd.DataFrame) -> Any:
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    present = [p for p in PATTERNS if p in set(heads["pattern"])]
    codes = heads.assign(code=heads["pattern"].map({p: i for i, p in enumerate(present)}))
    grid = head_grid(codes, "code")
    n_layers, n_heads = grid.shape
    width, height = heatmap_size(n_layers, COLUMN_WIDTH)
    fig, ax = plt.subplots(figsize=(width, height + 0.35), layout="constrained")
    cmap = ListedColormap([pattern_colour(p) for p in present])
    ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=len(present) - 0.5, aspect="auto", interpolation="nearest")
    cluster = head_grid(heads, "cluster")
    for la in range(n_layers):
        for he in range(n_heads):
            if np.isfinite(cluster[la, he]):
                r, g, b, _ = cmap(int(grid[la, he])) if np.isfinite(grid[la, he]) else (1, 1, 1, 1)
                ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                ax.text(he, la, str(int(cluster[la, he])), ha="center", va="center", color=ink)
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(len(present))]
    fig.legend(handles, present, loc="outside lower center", ncols=min(4, len(present)), frameon=False)
    left, right = MARGINS[0], MARGINS[1]
    across = label_step(n_heads, (width - left - right) * 72 / n_heads)
    down = label_step(n_layers, (height - MARGINS[2] - MARGINS[3]) * 72 / n_layers, across=False)
    ax.set_xticks(range(n_heads), [str(j) if j % across == 0 else "" for j in range(n_heads)])
    ax.set_yticks(range(n_layers), [str(i) if i % down == 0 else "" for i in range(n_layers)])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("Pattern (cluster number) of each head")
    return fig


def profile_columns(heads: pd.DataFrame) -> list[str]:
    """The features that vary over the heads (a constant one has no z-score)."""
    return [f for f in FEATURES if f in heads and heads[f].notna().all() and heads[f].std() > 0]


def profile_table(heads: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Each cluster's mean z-score of every feature in ``cols``: index cluster, one column per feature."""
    if not cols:
        return pd.DataFrame()
    z = (heads[cols] - heads[cols].mean()) / heads[cols].std(ddof=0)
    return z.groupby(heads["cluster"]).mean().sort_index()


def profile_figure(profile: pd.DataFrame, heads: pd.DataFrame, cols: list[str]) -> Any:
    import matplotlib.pyplot as plt

    patterns = heads.groupby("cluster")["pattern"].first().reindex(profile.index)
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH * 1.4, 1.4 + 0.25 * len(profile)), layout="constrained")
    lim = float(np.nanmax(np.abs(profile.to_numpy()))) or 1.0
    im = ax.imshow(profile.to_numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right")
    ax.set_yticks(range(len(profile)), [f"{c}: {p}" for c, p in zip(profile.index, patterns, strict=True)])
    ax.set_title("Cluster feature profile (z-score of centroid)")
    fig.colorbar(im, ax=ax, shrink=0.8, label="z")
    return fig
