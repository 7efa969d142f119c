"""The ablation section: each cluster of heads switched off, against as many random heads."""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd

from headscope.report.figures import COLUMN_WIDTH
from headscope.report.section import ReportSection, SectionStart, numbers, opens


@opens("ablation")
def section(start: SectionStart) -> ReportSection:
    table, figs = start.table, start.figs
    metric = start.summary.get("metric", "?")
    clusters = table[table["kind"] == "cluster"]
    random = table[table["kind"] == "random"]
    rows = "".join(f"<tr><td>{int(r.cluster)}</td><td>{html.escape(str(r.pattern))}</td><td>{int(r.n_heads)}"
                   f"</td><td>{r.effect:.4g}</td></tr>" for r in clusters.itertuples())
    what = ("increase of the LM loss" if "loss" in metric
            else "drift of the final hidden states (1 - cosine)")
    body = (f"<p>Each cluster of heads switched off by gates on the heads' outputs, over a seeded subset of "
            f"the corpus; effect = {what}"
            f" ({html.escape(metric)}). Grey: the same number of random heads from outside the cluster.</p>"
            f"<table><tr><th>cluster</th><th>pattern</th><th>heads</th><th>effect</th></tr>{rows}</table>"
            + figs.plot(lambda: ablation_figure(table, metric), "ablation_clusters", "Ablation effect per cluster",
                        numbers(clusters["effect"], random["effect"]),
                        "Ablation: every cluster and every random set has the same effect."))
    return start.section("Ablation of head clusters", body)


def ablation_figure(table: pd.DataFrame, metric: str) -> Any:
    import matplotlib.pyplot as plt

    clusters = table[table["kind"] == "cluster"].sort_values("cluster")
    random = table[table["kind"] == "random"].set_index("cluster")["effect"]
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.6), layout="constrained")
    x = np.arange(len(clusters))
    ax.bar(x - 0.2, clusters["effect"], width=0.4, label="cluster off", color="tab:blue")
    ax.bar(x + 0.2, random.reindex(clusters["cluster"]).to_numpy(float), width=0.4, label="random heads off",
           color="lightgrey")
    ax.set_xticks(x, [f"{c}: {p} ({n})" for c, p, n in zip(clusters["cluster"], clusters["pattern"],
                                                           clusters["n_heads"], strict=True)],
                  rotation=45, ha="right")
    ax.set_ylabel("loss increase" if "loss" in metric else "hidden drift (1 - cos)")
    ax.set_title("Switching off each cluster")
    ax.legend(frameon=False)
    return fig
