"""How much of the disagreement between AtP (AtP*) and the exact head effects is the exact effects' own noise:
reads what ``bench/head_effects.py --dump DIR`` wrote and prints, per run, the heads whose 95% bootstrap
interval contains 0, the Spearman correlations over all heads and over the heads whose interval excludes 0,
and the agreement of the exact effects measured on two halves of the held-out sequences (split-half Spearman,
the ceiling a ranking from so few sequences can reach against another sample of them).

    python bench/head_effects_noise.py DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def one(stem: Path) -> None:
    table = pd.read_csv(f"{stem}.csv")
    effect, atp = table["effect"].to_numpy(), table["effect_atp"].to_numpy()
    covers = (table["effect_low"] <= 0) & (table["effect_high"] >= 0)
    clear = ~covers.to_numpy()
    print(f"{stem.name}: {len(table)} heads, {int(covers.sum())} with 0 inside their 95% interval")
    print(f"  Spearman AtP vs effect: all {spearman(atp, effect):.3f}, interval excluding 0 "
          f"({clear.sum()} heads) {spearman(atp[clear], effect[clear]):.3f}")
    print(f"  Spearman |AtP| vs |effect|: all {spearman(np.abs(atp), np.abs(effect)):.3f}, interval excluding 0 "
          f"{spearman(np.abs(atp[clear]), np.abs(effect[clear])):.3f}")
    if "effect_atp_star" in table:
        star = table["effect_atp_star"].to_numpy()
        print(f"  Spearman AtP* vs |effect|: all {spearman(star, np.abs(effect)):.3f}, interval excluding 0 "
              f"{spearman(star[clear], np.abs(effect[clear])):.3f}")
    top = np.argsort(-np.abs(effect))[:50]
    print(f"  the 50 largest |effect|: Spearman AtP vs effect {spearman(atp[top], effect[top]):.3f}")
    npz = Path(f"{stem}.npz")
    if not npz.exists():
        return
    data = np.load(npz)
    order = np.argsort(data["index"], kind="stable")
    diff = data["ablated"][order] - data["base"][order][:, None]
    terms = data["terms"][order]
    atp_seq = data["atp"][order]
    n = len(order)
    half = np.arange(n) < n // 2
    a = diff[half].sum(0) / terms[half].sum()
    b = diff[~half].sum(0) / terms[~half].sum()
    atp_a = atp_seq[half].sum(0) / terms[half].sum()
    print(f"  split halves ({half.sum()} + {(~half).sum()} sequences): exact vs exact Spearman {spearman(a, b):.3f} "
          f"(|.|: {spearman(np.abs(a), np.abs(b)):.3f}); AtP on half 1 vs exact on half 1 {spearman(atp_a, a):.3f}, "
          f"vs exact on half 2 {spearman(atp_a, b):.3f}")


def main() -> None:
    directory = Path(sys.argv[1])
    for path in sorted(directory.glob("head_effects-*.csv")):
        one(path.with_suffix(""))


if __name__ == "__main__":
    main()
