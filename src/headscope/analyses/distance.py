"""How far each head looks, and the attention patterns the heads fall into (after Guan et al. 2020).

Guan et al.'s full text is not available to us: the feature set below is reconstructed from the paper's
title and abstract (see ``docs/patterns.md``). Per head, over every real query row of the corpus (each row
counts once, so long sequences weigh more than short ones):

- ``rel_le_m8 ... rel_ge_p8``: the attention-weighted histogram of the signed distance ``j - i`` in the bins
  <=-8, -7..-2, -1, 0, +1, +2..+7, >=+8 (over all keys, special tokens included; the bins sum to 1);
- ``abs_dist_mean``, ``abs_dist_std``: mean and standard deviation of ``|j - i|`` under the head's attention,
  pooled over all rows (the spread is that of the corpus-wide distribution, not a mean of per-row spreads);
- ``special_share``: attention to the tokenizer's special tokens ([CLS], [SEP] or BOS/EOS);
- ``punct_share``: attention to punctuation (the run's ``--punctuation`` class);
- ``row_entropy`` (nats) and ``entropy_ratio`` (row entropy / log of the keys the row can see);
- ``within_segment``: attention staying inside the query's own segment, over A/B pair sequences only.

The features are standardised across heads and clustered with k-means and agglomerative (Ward) clustering;
k is given by ``--distance-clusters`` or chosen by silhouette. Each cluster is named from its centroid by
:func:`name_pattern` (``pattern``); ``head_pattern`` applies the same rules to each head's own features.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch

from headscope.analyses.base import Analysis, AnalysisResult, head_frame, head_name
from headscope.analyses.findings import Behaviour
from headscope.analyses.labels.distance import LABELS as ATLAS_LABELS
from headscope.analyses.registry import register
from headscope.analyses.stats import mean_or_nan
from headscope.config import check_choices, option

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.engine.capture import LayerAttention
    from headscope.engine.context import AnalysisContext

#: Signed-distance bins ``(name, lowest j - i, highest j - i)``, inclusive.
BINS: tuple[tuple[str, float, float], ...] = (
    ("rel_le_m8", -math.inf, -8), ("rel_m7_m2", -7, -2), ("rel_m1", -1, -1), ("rel_0", 0, 0),
    ("rel_p1", 1, 1), ("rel_p2_p7", 2, 7), ("rel_ge_p8", 8, math.inf))

#: Every per-head feature, in column order, with its meaning.
LABELS = {
    "rel_le_m8": "attention at j - i <= -8", "rel_m7_m2": "attention at -7 <= j - i <= -2",
    "rel_m1": "attention to the previous token", "rel_0": "attention to itself",
    "rel_p1": "attention to the next token", "rel_p2_p7": "attention at 2 <= j - i <= 7",
    "rel_ge_p8": "attention at j - i >= 8", "abs_dist_mean": "mean |j - i|", "abs_dist_std": "spread of |j - i|",
    "special_share": "attention to special tokens", "punct_share": "attention to punctuation",
    "row_entropy": "row entropy (nats)", "entropy_ratio": "row entropy / log(keys)",
    "within_segment": "attention inside own segment (pairs)",
}
FEATURES = tuple(LABELS)

#: Thresholds of the naming rules, applied to a cluster centroid in this order (docs/patterns.md).
SPECIAL_MIN = 0.5
LOCAL_MIN = 0.5
BLOCK_MIN = 0.9
BROAD_MIN = 0.8
PATTERNS = ("special-token", "previous", "next", "self", "block", "broad", "mixed")



def name_pattern(centroid: Mapping[str, float]) -> str:
    """Name a cluster from its centroid (raw feature values, not standardised).

    Rules, first match wins:

    1. ``special-token`` ("vertical"): ``special_share >= 0.5``;
    2. ``previous`` / ``next`` / ``self``: ``rel_m1`` / ``rel_p1`` / ``rel_0 >= 0.5``;
    3. ``block``: ``within_segment >= 0.9`` (measured on pairs) while the three local bins hold < 0.5;
    4. ``broad``: ``entropy_ratio >= 0.8`` (close to uniform over the keys it can see);
    5. ``mixed``: anything else.
    """
    def get(key: str) -> float:
        value = centroid.get(key, math.nan)
        return float(value) if value is not None else math.nan

    if get("special_share") >= SPECIAL_MIN:
        return "special-token"
    for key, name in (("rel_m1", "previous"), ("rel_p1", "next"), ("rel_0", "self")):
        if get(key) >= LOCAL_MIN:
            return name
    local = get("rel_m1") + get("rel_0") + get("rel_p1")
    if get("within_segment") >= BLOCK_MIN and local < LOCAL_MIN:
        return "block"
    if get("entropy_ratio") >= BROAD_MIN:
        return "broad"
    return "mixed"


def offset_weights(n: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                   query_start: int = 0, rows: int | None = None) -> torch.Tensor:
    """Weights of every (query, key) cell for the histogram bins, ``|j - i|`` and ``(j - i)^2``.

    Parameters
    ----------
    n : int
        Keys (the whole sequence).
    device, dtype
        Of the result.
    query_start : int
        Position of the first query row (a block of a layer's rows).
    rows : int, optional
        Query rows (default: ``n - query_start``, every row from ``query_start`` on).

    Returns
    -------
    Tensor of shape [rows * key, n_bins + 2]
        Columns: one indicator per bin of :data:`BINS`, then ``|j - i|``, then ``(j - i)^2``, with ``i`` the
        position ``query_start + r`` of row ``r``.
    """
    rows = n - query_start if rows is None else rows
    query = torch.arange(query_start, query_start + rows, device=device)
    key = torch.arange(n, device=device)
    offset = (key[None, :] - query[:, None]).to(dtype)  # [query, key]: j - i
    columns = [((offset >= lo) & (offset <= hi)).to(dtype) for _, lo, hi in BINS]
    columns += [offset.abs(), offset * offset]
    return torch.stack(columns, dim=-1).reshape(rows * n, -1)


def _row_masks(lengths: torch.Tensor, segment: torch.Tensor, causal: bool, query_start: int, rows: int
               ) -> dict[str, torch.Tensor]:
    """Which query rows count for each denominator, and the keys each row sees.

    Returns
    -------
    dict of str to Tensor of shape [batch, rows]
        ``all`` (real rows), ``entropy`` (real rows seeing > 1 key), ``pair`` (real rows of pair sequences),
        bool; ``keys``, int64, the keys each row sees.
    """
    dev = lengths.device
    n = segment.shape[-1]
    pos = torch.arange(query_start, query_start + rows, device=dev)
    real = pos[None, :] < lengths[:, None]  # [batch, rows]
    b = lengths.shape[0]
    keys = (pos + 1)[None, :].expand(b, rows) if causal else lengths[:, None].expand(b, rows)
    in_b = (segment != 0) & (torch.arange(n, device=dev)[None, :] < lengths[:, None])
    is_pair = in_b.any(-1)  # [batch]: a pair is a sequence with any real position in B
    return {"all": real, "entropy": real & (keys > 1), "pair": real & is_pair[:, None], "keys": keys}


def row_counts(lengths: torch.Tensor, segment: torch.Tensor, causal: bool = False) -> dict[str, int]:
    """Rows of a batch that count for each denominator (see :func:`distance_sums`), over all its rows.

    Parameters
    ----------
    lengths : Tensor of shape [batch]
    segment : Tensor of shape [batch, seq]
    causal : bool
    """
    masks = _row_masks(lengths, segment, causal, 0, int(segment.shape[-1]))
    return {key: int(masks[key].sum()) for key in ("all", "entropy", "pair")}


def distance_sums(attn: torch.Tensor, lengths: torch.Tensor, is_special: torch.Tensor, is_punct: torch.Tensor,
                  segment: torch.Tensor, causal: bool = False, query_start: int = 0
                  ) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Sums over the query rows of a batch, or of one block of its rows, of every distance feature.

    Every feature is a sum over rows, so the sums of a layer's blocks add up to those of the whole layer.

    Parameters
    ----------
    attn : Tensor of shape [batch, layer, head, query, key]
        Padded rows and columns exactly 0. ``query`` may be a block of rows starting at ``query_start``;
        ``key`` is always the whole sequence.
    lengths : Tensor of shape [batch]
    is_special, is_punct : Tensor of shape [batch, seq], bool
    segment : Tensor of shape [batch, seq]
        0 for segment A, 1 for B; a sequence is a pair when any real position is 1.
    causal : bool
        Row i sees keys 0..i (sets the keys of ``entropy_ratio``).
    query_start : int
        Position of ``attn``'s first query row.

    Returns
    -------
    sums : dict of str to Tensor of shape [layer, head], float64
        Per feature, the sum over the rows that count for it; ``abs_dist_sq`` holds the sum of ``(j - i)^2``
        (``abs_dist_std`` is derived from it and ``abs_dist_mean`` by :meth:`DistancePatterns.means`).
    rows : dict of str to int
        Rows of ``attn`` counted: ``all`` (real rows), ``entropy`` (rows seeing > 1 key), ``pair`` (rows of
        pair sequences).
    """
    # float64 from here: the sums run over every cell of a block, in an order that depends on the block's shape
    # and the CPU; in float32 two ways of cutting the same rows (batches, query blocks, Ray shards) differed by
    # ~1e-7 relative, which the standardisation before clustering then magnifies (see cluster_heads).
    attn = attn.to(torch.float64)
    b, n_layers, n_heads, q, n = attn.shape
    q0 = query_start
    dev, dt = attn.device, attn.dtype
    masks = _row_masks(lengths, segment, causal, q0, q)
    real, sees_many, pair_rows = masks["all"], masks["entropy"], masks["pair"]  # [batch, query]
    sums: dict[str, torch.Tensor] = {}

    def total(values: torch.Tensor) -> torch.Tensor:
        return values.reshape(b, n_layers, n_heads, -1).sum(dim=(0, 3)).to(torch.float64)

    # Bins, |j - i| and (j - i)^2 summed over rows and keys: one matrix product over the flattened maps.
    cells = attn.reshape(b * n_layers * n_heads, q * n) @ offset_weights(n, dev, dt, q0, q)
    cells = cells.reshape(b, n_layers, n_heads, -1).sum(0).to(torch.float64)  # [layer, head, bins + 2]
    for k, (name, _, _) in enumerate(BINS):
        sums[name] = cells[..., k]
    sums["abs_dist_mean"] = cells[..., len(BINS)]
    sums["abs_dist_sq"] = cells[..., len(BINS) + 1]

    received = attn.sum(dim=-2)  # [batch, layer, head, key]: attention each key gets from the block's rows
    sums["special_share"] = total(received * is_special[:, None, None, :])
    sums["punct_share"] = total(received * is_punct[:, None, None, :])

    row_entropy = torch.special.entr(attn).sum(-1)  # [batch, layer, head, query]
    sums["row_entropy"] = total(row_entropy)
    inv_log = torch.where(sees_many, 1.0 / masks["keys"].clamp_min(2).to(dt).log(), 0.0)
    sums["entropy_ratio"] = total(row_entropy * inv_log[:, None, None, :])

    in_b = (segment != 0) & (torch.arange(n, device=dev)[None, :] < lengths[:, None])
    to_b = attn @ in_b.to(dt)[:, None, None, :, None]  # [batch, layer, head, query, 1]
    row_mass = attn.sum(-1, keepdim=True)
    # Inside the own segment: the part on B for rows in B, the rest of the row for rows in A.
    row_in_b = in_b[:, q0:q0 + q]
    within = torch.where(row_in_b[:, None, None, :, None], to_b, row_mass - to_b)
    sums["within_segment"] = total(within[..., 0] * pair_rows[:, None, None, :])
    rows = {"all": int(real.sum()), "entropy": int(sees_many.sum()), "pair": int(pair_rows.sum())}
    return sums, rows


#: Which row count divides each feature's sum.
_DENOMINATOR = {name: "all" for name in FEATURES} | {"entropy_ratio": "entropy", "within_segment": "pair"}

#: Running sums kept per head: every feature except the spread, which comes from the mean square.
_SUMS = (*(f for f in FEATURES if f != "abs_dist_std"), "abs_dist_sq")

#: Relative spread across heads below which a feature is left out of the clustering as constant.
NEGLIGIBLE_SPREAD = 1e-4
#: Smallest scale a feature is divided by before clustering, relative to its mean size across heads. A feature
#: that varies by less than 1% of its size tells heads apart in proportion to that variation instead of being
#: blown up to one unit of variance: this caps how much the standardisation magnifies float32 noise (a few
#: 1e-7 relative between CPUs, thread counts and padding sides) at 100x, so the k-means labels and each
#: cluster's most typical heads do not move with it. Real models' features vary by far more than 1% across heads
#: (their z-scores are unchanged); random tiny models' features hardly vary at all.
SPREAD_FLOOR = 1e-2


@dataclass
class ClusterFit:
    """Heads clustered on standardised features."""

    labels: np.ndarray
    """int of shape (n_heads,): the cluster of each head by the chosen method, numbered in head order."""
    labels_kmeans: np.ndarray
    """int of shape (n_heads,): k-means clusters (same k)."""
    labels_agglomerative: np.ndarray
    """int of shape (n_heads,): Ward agglomerative clusters (same k)."""
    k: int
    """Number of clusters."""
    columns: list[str]
    """Features used (finite for every head and not constant)."""
    z: np.ndarray
    """float of shape (n_heads, n_features): the standardised features."""
    silhouette: dict[int, float] = field(default_factory=dict)
    """Silhouette of the chosen method for each k tried (empty when k was given)."""


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Clusters numbered by first appearance in head order, so the numbering does not depend on the algorithm."""
    order: dict[int, int] = {}
    for label in labels:
        order.setdefault(int(label), len(order))
    return np.array([order[int(label)] for label in labels], dtype=int)


#: How the heads are clustered.
ClusterMethod = Literal["kmeans", "agglomerative"]


def cluster_heads(features: pd.DataFrame, k: int | None = None, method: ClusterMethod = "kmeans", seed: int = 0,
                  max_clusters: int = 10) -> ClusterFit:
    """Standardise per-head features and cluster them.

    Parameters
    ----------
    features : DataFrame of shape (n_heads, n_features)
        Raw feature values; columns with a NaN or no variance are left out.
    k : int, optional
        Number of clusters; by default the k in 2..max_clusters with the best silhouette.
    method : {"kmeans", "agglomerative"}
        Which labels become ``labels`` (both are computed).
    seed : int
        Seed of k-means.
    max_clusters : int
        Largest k tried by silhouette.
    """
    from sklearn.cluster import AgglomerativeClustering, KMeans
    from sklearn.metrics import silhouette_score

    if method not in typing.get_args(ClusterMethod):
        raise ValueError(f"cluster method must be 'kmeans' or 'agglomerative', got {method!r}")
    values = features.to_numpy(float)
    std = values.std(axis=0)
    size = np.abs(np.nan_to_num(values.mean(axis=0)))
    # A spread below 1e-4 of a feature's size is float32 noise, not a difference between heads (it happens
    # on random small models); standardising it would blow that noise up to one unit and let it decide.
    floor = np.maximum(1e-12, NEGLIGIBLE_SPREAD * size)
    keep = np.isfinite(values).all(axis=0) & (np.nan_to_num(std) > floor)
    columns = [c for c, kept in zip(features.columns, keep, strict=True) if kept]
    scale = np.maximum(std, SPREAD_FLOOR * size)[keep]
    z = (values[:, keep] - values[:, keep].mean(axis=0)) / scale
    n = len(features)

    def fit(kk: int) -> tuple[np.ndarray, np.ndarray]:
        if kk <= 1 or not columns:
            zeros = np.zeros(n, dtype=int)
            return zeros, zeros
        km = KMeans(n_clusters=kk, n_init=10, random_state=seed).fit_predict(z)
        ag = AgglomerativeClustering(n_clusters=kk, linkage="ward").fit_predict(z)
        return km, ag

    silhouette: dict[int, float] = {}
    if k is None:
        best = 1
        for kk in range(2, min(max_clusters, n - 1) + 1):
            km, ag = fit(kk)
            labels = km if method == "kmeans" else ag
            if len(set(labels)) < 2 or not columns:
                continue
            silhouette[kk] = float(silhouette_score(z, labels))
            if best == 1 or silhouette[kk] > silhouette[best]:
                best = kk
        k = best
    if not 1 <= k <= n:
        raise ValueError(f"clusters must be between 1 and the number of heads ({n}), got {k}")
    km, ag = fit(k)
    km, ag = _renumber(km), _renumber(ag)
    return ClusterFit(labels=km if method == "kmeans" else ag, labels_kmeans=km, labels_agglomerative=ag, k=k,
                      columns=columns, z=z, silhouette=silhouette)


def cluster_table(heads: pd.DataFrame, fit: ClusterFit) -> pd.DataFrame:
    """One row per cluster: its pattern name, size, members and raw centroid (``heads`` has the features)."""
    rows = []
    for c in range(fit.k):
        members = heads[fit.labels == c]
        centroid = {f: float(members[f].mean()) for f in FEATURES if f in members}
        rows.append({"cluster": c, "pattern": name_pattern(centroid), "n_heads": len(members),
                     "heads": " ".join(head_name(la, he) for la, he in zip(members["layer"], members["head"],
                                                                        strict=True)),
                     **centroid})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class DistanceOptions:
    """Options of the ``distance`` analysis."""

    clusters: int | None = option(None, help="Number of head clusters (default: chosen by silhouette).")
    cluster_method: ClusterMethod = option(
        "kmeans", help="Clustering that sets `cluster`: kmeans or agglomerative (both are written).")
    max_clusters: int = option(10, help="Largest number of clusters tried when choosing by silhouette.")

    def __post_init__(self) -> None:
        check_choices(self)


@register
class DistancePatterns(Analysis):
    """Guan-style distance features per head, standardised, clustered and named."""

    # declared state (add_state in start)
    sums_: dict[str, torch.Tensor]
    rows_: dict[str, int]

    name = "distance"
    accepts_rollout = True
    report_order = 62
    behaviour = Behaviour(where=lambda heads: heads["pattern"] != "mixed", order=20)  # a named pattern
    atlas_labels = ATLAS_LABELS
    reads_pieces = True
    description = "how far each head looks (signed-distance histogram, spread, entropy ...), clustered into " \
                  "named patterns (after Guan et al. 2020)"
    Options = DistanceOptions

    def start(self, ctx: AnalysisContext) -> None:
        shape = (ctx.info.n_layers, ctx.info.n_heads)
        self.causal_ = bool(ctx.info.is_causal)
        self.add_state("sums_", {k: torch.zeros(shape, dtype=torch.float64, device=ctx.device) for k in _SUMS})
        self.add_state("rows_", {"all": 0, "entropy": 0, "pair": 0})

    def begin_batch(self, batch: Batch) -> None:
        # Rows are counted once per batch here; update adds every layer's (and block's) sums.
        for key, value in row_counts(batch.lengths, batch.segment, self.causal_).items():
            self.rows_[key] += value

    def update(self, batch: Batch, block: LayerAttention) -> None:
        sums, _ = distance_sums(block.weights[:, None], batch.lengths, batch.is_cls | batch.is_sep, batch.is_punct,
                                batch.segment, causal=self.causal_, query_start=block.query_start)
        for key, value in sums.items():
            self.sums_[key][block.layer] += value[0]

    def means(self) -> dict[str, torch.Tensor]:
        """Each feature as a float64 tensor of shape (n_layers, n_heads); NaN where no row counted."""
        out = {}
        for key in FEATURES:
            count = self.rows_[_DENOMINATOR[key]]
            if key == "abs_dist_std":
                mean = mean_or_nan(self.sums_["abs_dist_mean"], count)
                out[key] = (mean_or_nan(self.sums_["abs_dist_sq"], count) - mean * mean).clamp_min(0.0).sqrt()
            else:
                out[key] = mean_or_nan(self.sums_[key], count)
        return out

    def finalize(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        means = self.means()
        n_layers, n_heads = means["rel_0"].shape
        heads = head_frame(means, n_layers, n_heads)
        opts = self.options
        fit = cluster_heads(heads[list(FEATURES)], k=opts.clusters, method=opts.cluster_method,
                            seed=ctx.seeds.seed, max_clusters=opts.max_clusters)
        clusters = cluster_table(heads, fit)
        heads["cluster"] = fit.labels
        heads["pattern"] = clusters["pattern"].to_numpy()[fit.labels]
        heads["head_pattern"] = [name_pattern(r) for r in heads[list(FEATURES)].to_dict("records")]
        heads["cluster_kmeans"] = fit.labels_kmeans
        heads["cluster_agglomerative"] = fit.labels_agglomerative
        centroids = np.stack([fit.z[fit.labels == c].mean(axis=0) for c in range(fit.k)])
        heads["cluster_distance"] = np.linalg.norm(fit.z - centroids[fit.labels], axis=1)
        from sklearn.metrics import adjusted_rand_score

        summary = {
            "rows": dict(self.rows_), "k": fit.k, "method": opts.cluster_method,
            "k_chosen_by": "--distance-clusters" if opts.clusters is not None else "silhouette",
            "silhouette": {str(k): round(v, 4) for k, v in fit.silhouette.items()},
            "features_used": fit.columns,
            "kmeans_vs_agglomerative_ari": float(adjusted_rand_score(fit.labels_kmeans, fit.labels_agglomerative)),
            "feature_set": "reconstructed from Guan et al. 2020's title and abstract (full text unavailable)",
        }
        return AnalysisResult(name=self.name, heads=heads, tables={"clusters": clusters}, summary=summary)
