"""The [SEP] section (Clark et al. 2019, figure 3): attention to [SEP] and its gradient, layer by layer."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from headscope.report.figures import COLUMN_WIDTH
from headscope.report.section import ReportSection, SectionStart, numbers, opens

#: What each per-head column means, for the head grid's chooser.
MEANINGS = {
    "sep_attention": "mean attention to [SEP] of the rows the gradient pass read",
    "sep_gradient": "mean |dL/dA| at [SEP]: how much the loss moves with that attention",
}


@opens("sep_gradient")
def section(start: SectionStart) -> ReportSection:
    table, figs, loss = start.table, start.figs, start.first("loss")
    per_layer = table.groupby("layer")[["sep_attention", "sep_gradient"]].mean()
    rows = "".join(f"<tr><td>{int(layer)}</td><td>{r.sep_attention:.3g}</td><td>{r.sep_gradient:.3g}</td></tr>"
                   for layer, r in per_layer.iterrows())
    body = ("<p>Per layer, the mean attention to [SEP] (the separator, or EOS) and the mean gradient magnitude "
            f"|dL/dA| of the loss ({html.escape(loss)}) with respect to that attention, as Clark et al. "
            "(2019) Figure 3. Averaged over the layer's heads.</p>"
            f"<table><tr><th>layer</th><th>attention to [SEP]</th><th>|dL/dA| at [SEP]</th></tr>{rows}</table>"
            + figs.plot(lambda: sep_gradient_figure(table), "sep_gradient_layers",
                        "Attention to [SEP] and its gradient, per layer",
                        numbers(table["sep_attention"], table["sep_gradient"]),
                        "Attention to [SEP] and its gradient: the same value for every head."))
    return start.section("Attention to [SEP] and its gradient", body)


def sep_gradient_figure(table: pd.DataFrame) -> Any:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(2 * COLUMN_WIDTH, 2.2), layout="constrained")
    for ax, column, title in zip(axes, ("sep_attention", "sep_gradient"),
                                 ("Avg. attention to [SEP]", "Avg. |dL/dA| at [SEP]"), strict=True):
        ax.scatter(table["layer"], table[column], s=6, color="0.7", label="heads")
        mean = table.groupby("layer")[column].mean()
        ax.plot(mean.index, mean.to_numpy(float), marker="o", color="C0", label="layer mean")
        ax.set_xlabel("layer")
        ax.set_xticks(sorted(set(table["layer"].astype(int))))
        ax.set_title(title)
    axes[0].legend(frameon=False)
    return fig
