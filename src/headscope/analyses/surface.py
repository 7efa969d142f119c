"""Surface statistics of every head (Clark et al. 2019, section 3).

Per head, each statistic is computed per sequence (averaging over its query rows) and then averaged over
sequences:

- ``cls``, ``sep``, ``punct``: attention to a token class, ``sum_i sum_{j in S} A[i, j] / n``;
- ``self``, ``next``, ``prev``: mean of the diagonals 0, +1 (``A[i, i+1]``) and -1;
- ``entropy``: mean row entropy in nats; ``entropy_uniform``: the same for uniform rows (mean of
  ``log(keys)``); ``cls_entropy``: entropy of the [CLS] row only;
- ``sep_to_sep`` / ``other_to_sep``: attention of [SEP] rows / of all other rows to the [SEP] tokens;
- ``confidence``: mean of each row's largest weight (Voita et al. 2019).

With ``--conventions clark`` every statistic is computed as Clark et al.'s released code
(``General_Analysis.ipynb``) does: the maps are rounded to float16 first (their ``extract_attention.py``
stores them so); ``prev``/``next`` are divided by ``n``; ``sep_to_sep`` and ``other_to_sep`` by 2 and
``n - 2`` (two [SEP] tokens assumed); ``entropy`` and ``cls_entropy`` are those of the smoothed maps
``0.9999 A + 0.0001 / n`` in float16 arithmetic, as NumPy evaluates the notebook's cell on float16 maps
(each operation rounded to float16, each row's sum and each sequence's mean rounded to float16);
``entropy_uniform`` is ``log n`` and ``cls_entropy`` reads row 0 of every sequence. ``confidence`` (not in
Clark et al.) keeps its definition, on the float16 maps. See ``docs/conventions.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from headscope.analyses.base import Analysis, AnalysisResult, head_frame
from headscope.analyses.conventions import as_float16, effective_conventions, float16_constant
from headscope.analyses.labels.surface import LABELS as ATLAS_LABELS
from headscope.analyses.registry import register
from headscope.analyses.stats import means_or_nan
from headscope.engine.scratch import Scratch

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.engine.capture import LayerAttention
    from headscope.engine.context import AnalysisContext

#: Column order of the per-head table, and what each column means (figure titles, report).
LABELS = {
    "cls": "attention to [CLS]", "sep": "attention to [SEP]", "punct": "attention to . and ,",
    "self": "attention to self", "prev": "attention to previous token", "next": "attention to next token",
    "entropy": "row entropy (nats)", "entropy_uniform": "uniform-row entropy (nats)",
    "cls_entropy": "[CLS] row entropy (nats)", "sep_to_sep": "[SEP] rows to [SEP]",
    "other_to_sep": "other rows to [SEP]", "confidence": "max weight per row",
}

#: A decoder LM's names for the statistics of its first token: it has no [CLS], and ``cls`` is the attention
#: to the BOS token its tokenizer puts at position 0 (0 when the tokenizer adds none).
DECODER_LABELS = {"cls": "attention to the first token (BOS)", "cls_entropy": "first-token (BOS) row entropy (nats)"}


def labels(causal: bool) -> dict[str, str]:
    """What each column means, in a decoder LM's words when ``causal``."""
    return {**LABELS, **DECODER_LABELS} if causal else dict(LABELS)


STATISTICS = ("cls", "sep", "punct", "self", "prev", "next", "entropy", "entropy_uniform", "cls_entropy",
              "sep_to_sep", "other_to_sep", "confidence")

#: What each ``--conventions`` value means for these statistics (``run.json`` and the report).
CONVENTIONS = {
    "headscope": "headscope's definitions (docs/conventions.md)",
    "clark": "as Clark et al.'s released code: float16 maps; prev/next over n; [SEP] rows over 2 and other rows "
             "over n - 2; entropies of the smoothed maps 0.9999 A + 0.0001 / n in float16 arithmetic",
}
#: Clark et al.'s smoothing of the maps before the entropy: ``0.9999 * A + 0.0001 / n``.
CLARK_ENTROPY_SMOOTHING = 0.0001


def sequence_statistics(attn: torch.Tensor, lengths: torch.Tensor, is_cls: torch.Tensor,
                        is_sep: torch.Tensor, is_punct: torch.Tensor, causal: bool = False,
                        scratch: Scratch | None = None, query_start: int = 0, conventions: str = "headscope"
                        ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every surface statistic of every sequence of a batch, or the part of it one block of query rows holds.

    Every statistic is a sum over query rows divided by a per-sequence count, so the values of a layer's
    blocks add up to the values of the whole layer.

    Parameters
    ----------
    attn : Tensor of shape [batch, layer, head, query, key]
        Padded rows and columns must be 0 (as :mod:`headscope.engine.capture` gives). ``query`` may be a
        block of rows starting at ``query_start``; ``key`` is always the whole sequence.
    lengths : Tensor of shape [batch]
    is_cls, is_sep, is_punct : Tensor of shape [batch, seq], bool
    causal : bool
        Row i sees keys 0..i only (decoder LMs); changes the uniform-entropy baseline.
    scratch : Scratch, optional
        Work buffers reused across batches (the entropy needs one as large as ``attn``).
    query_start : int
        Position of ``attn``'s first query row.
    conventions : {"headscope", "clark"}
        ``clark``: Clark et al.'s definitions (module docstring). Its ``entropy`` is then not a mean: it is the
        block's sum of float16 row entropies, which :func:`clark_entropy` turns into the sequence's value once
        all of its rows are summed (Clark et al. round each sequence's mean to float16).

    Returns
    -------
    dict of str to (values, valid)
        ``values`` of shape [batch, layer, head]; ``valid`` of shape [batch], False where the statistic is
        undefined for that sequence (no [SEP] token, a single token, ...).
    """
    clark = conventions == "clark"
    if clark:
        attn = as_float16(attn)
    elif conventions != "headscope":
        raise ValueError(f"surface statistics have no {conventions!r} conventions")
    b, n = attn.shape[0], attn.shape[-1]
    q0, q1 = query_start, query_start + attn.shape[-2]
    first = q0 == 0
    dev = attn.device
    lengths_f = lengths.to(torch.float32)
    real = torch.arange(n, device=dev)[None, :] < lengths[:, None]
    all_valid = torch.ones(b, dtype=torch.bool, device=dev)
    per_row = lengths_f[:, None, None]

    col_sum = attn.sum(dim=-2)  # [batch, layer, head, key]: attention received, summed over queries
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, cls_mask in (("cls", is_cls), ("sep", is_sep), ("punct", is_punct)):
        out[name] = ((col_sum * cls_mask[:, None, None, :]).sum(-1) / per_row, all_valid)

    # Row r of the block is position q0 + r, so diagonal d of the whole map is offset q0 + d of the block.
    out["self"] = (torch.diagonal(attn, q0, dim1=-2, dim2=-1).sum(-1) / per_row, all_valid)
    # Clark et al. divide the off-diagonal sums by n as well.
    pairs = per_row if clark else (lengths_f - 1).clamp_min(1.0)[:, None, None]
    multi = all_valid if clark else lengths > 1
    # Padded rows and columns are 0, so summing a whole diagonal sums just the real entries.
    out["next"] = (torch.diagonal(attn, q0 + 1, dim1=-2, dim2=-1).sum(-1) / pairs, multi)
    out["prev"] = (torch.diagonal(attn, q0 - 1, dim1=-2, dim2=-1).sum(-1) / pairs, multi)

    if clark:
        row_entropy = clark_row_entropy(attn, lengths, query_start)
        out["entropy"] = (row_entropy.to(torch.float64).sum(-1), all_valid)  # exact: a sum of float16 values
    else:
        row_entropy = _row_entropy(attn, scratch)  # [batch, layer, head, query]
        out["entropy"] = (row_entropy.sum(-1) / per_row, all_valid)
    if causal and not clark:
        keys = torch.arange(1, n + 1, device=dev, dtype=torch.float32)[None, :].expand(b, n)
        uniform = (torch.log(keys) * real).sum(-1) / lengths_f
    else:
        uniform = torch.log(lengths_f)
    # Counted with the block that holds row 0, so a layer's blocks add up to it once.
    uniform = uniform if first else torch.zeros_like(uniform)
    out["entropy_uniform"] = (uniform[:, None, None].expand_as(out["entropy"][0]), all_valid)
    cls_row = row_entropy[..., 0] if first else torch.zeros_like(row_entropy[..., 0])
    out["cls_entropy"] = (cls_row, all_valid if clark else is_cls[:, 0])

    # [SEP] rows are a handful per sequence: gather just those rows instead of a pass over the whole map.
    seq, pos = torch.nonzero(is_sep[:, q0:q1], as_tuple=True)
    sep_rows_to_sep = (attn[seq, :, :, pos, :] * is_sep[seq][:, None, None, :]).sum(-1)  # [n_sep, layer, head]
    sep_to_sep = torch.zeros_like(out["sep"][0]).index_add_(0, seq, sep_rows_to_sep)
    all_to_sep = (col_sum * is_sep[:, None, None, :]).sum(-1)
    if clark:  # two [SEP] tokens assumed, as in Clark et al.'s segment pairs
        n_sep = torch.full_like(lengths_f, 2.0)
        n_other = lengths_f - 2
        sep_valid, other_valid = all_valid, n_other > 0
    else:
        n_sep = is_sep.sum(-1).to(attn.dtype)
        n_other = lengths_f - n_sep
        sep_valid, other_valid = n_sep > 0, (n_other > 0) & (n_sep > 0)
    out["sep_to_sep"] = (sep_to_sep / n_sep.clamp_min(1)[:, None, None], sep_valid)
    out["other_to_sep"] = ((all_to_sep - sep_to_sep) / n_other.clamp_min(1)[:, None, None], other_valid)
    out["confidence"] = (attn.amax(dim=-1).sum(-1) / per_row, all_valid)
    return out


def clark_row_entropy(attn: torch.Tensor, lengths: torch.Tensor, query_start: int = 0) -> torch.Tensor:
    """Row entropies of the smoothed maps as Clark et al.'s cell computes them on float16 maps.

    ``attns = 0.9999 * attns + 0.0001 / n`` and ``-(attns * np.log(attns)).sum(-1)`` on a float16 array: NumPy
    casts the constants to float16 and rounds every operation's result to float16, summing each row in float32
    and rounding the sum to float16.

    Parameters
    ----------
    attn : Tensor of shape [batch, layer, head, query, key]
        float16 values (see :func:`as_float16`); rows ``query_start ...``; padding 0.
    lengths : Tensor of shape [batch]

    Returns
    -------
    Tensor of shape [batch, layer, head, query], float32
        Each row's entropy (a float16 value); 0 on padded rows.
    """
    n, q = attn.shape[-1], attn.shape[-2]
    scale = float(np.float16(1.0 - CLARK_ENTROPY_SMOOTHING))
    shift = float16_constant([CLARK_ENTROPY_SMOOTHING / max(int(k), 1) for k in lengths.tolist()], attn.device)
    smoothed = as_float16(as_float16(attn * scale) + shift[:, None, None, None, None])
    terms = as_float16(smoothed * as_float16(torch.log(smoothed)))
    keys = torch.arange(n, device=attn.device)[None, :] < lengths[:, None]  # padding keys are not in the map
    rows = as_float16(-(terms * keys[:, None, None, None, :]).to(torch.float64).sum(-1).to(torch.float32))
    queries = torch.arange(query_start, query_start + q, device=attn.device)[None, :] < lengths[:, None]
    return rows * queries[:, None, None, :]


def clark_entropy(row_sums: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """A sequence's ``entropy`` under Clark et al.'s code: the mean of its float16 row entropies, rounded to float16.

    Parameters
    ----------
    row_sums : Tensor of shape [batch, ...], float64
        The sum of the sequence's row entropies (:func:`clark_row_entropy`) over all of its rows.
    lengths : Tensor of shape [batch]
    """
    n = lengths.to(torch.float64).clamp_min(1).reshape(-1, *([1] * (row_sums.dim() - 1)))
    return as_float16((row_sums / n).to(torch.float32)).to(torch.float64)


def _row_entropy(attn: torch.Tensor, scratch: Scratch | None) -> torch.Tensor:
    """``-sum_j A[i, j] log A[i, j]`` per row, shape [batch, layer, head, query]; 0 log 0 = 0."""
    if scratch is None:
        return -torch.special.xlogy(attn, attn).sum(-1)
    # In a reused buffer, without temporaries: 3x faster than xlogy on CPU. Clamping first makes 0 * log(tiny)
    # an exact 0 for padding and causal masks.
    buf = scratch.get("entropy", tuple(attn.shape), attn.dtype, attn.device)
    torch.clamp(attn, min=torch.finfo(attn.dtype).tiny, out=buf)
    buf.log_().mul_(attn)
    return -buf.sum(-1)


@register
class SurfaceStatistics(Analysis):
    """Clark et al.'s surface statistics, averaged over every sequence of the corpus."""

    # declared state (add_state in start)
    sums_: dict[str, torch.Tensor]
    counts_: dict[str, torch.Tensor]

    name = "surface"
    accepts_rollout = True
    report_order = 10
    atlas_labels = ATLAS_LABELS
    reads_pieces = True
    description = "attention to [CLS]/[SEP]/punctuation, self/previous/next token, entropy (Clark et al. s3)"

    def start(self, ctx: AnalysisContext) -> None:
        shape = (ctx.info.n_layers, ctx.info.n_heads)
        self.causal_ = bool(ctx.info.is_causal)
        self.conventions_ = effective_conventions(ctx, tuple(CONVENTIONS))
        self._scratch = Scratch()
        self._entropy_rows: torch.Tensor | None = None
        self.add_state("sums_", {k: torch.zeros(shape, dtype=torch.float64, device=ctx.device) for k in STATISTICS})
        self.add_state("counts_", {k: torch.zeros((), dtype=torch.float64, device=ctx.device) for k in STATISTICS})

    def update(self, batch: Batch, block: LayerAttention) -> None:
        stats = sequence_statistics(block.weights[:, None], batch.lengths, batch.is_cls, batch.is_sep,
                                    batch.is_punct, causal=self.causal_, scratch=self._scratch,
                                    query_start=block.query_start, conventions=self.conventions_)
        once = block.layer == 0 and block.is_first  # sequences are counted once, not per layer or block
        for key, (values, valid) in stats.items():
            if once:
                self.counts_[key] += valid.sum().to(torch.float64)
            if key == "entropy" and self.conventions_ == "clark":
                # Clark et al. round each sequence's mean row entropy to float16: sum the sequence's rows over
                # the layer's blocks first, then finish it.
                rows = values[:, 0]
                if not block.is_first and self._entropy_rows is not None:
                    rows = rows + self._entropy_rows
                self._entropy_rows = rows
                if not block.is_last:
                    continue
                values = clark_entropy(self._entropy_rows, batch.lengths)[:, None]
                self._entropy_rows = None
            self.sums_[key][block.layer] += (values[:, 0] * valid[:, None]).sum(0).to(torch.float64)

    def means(self) -> dict[str, torch.Tensor]:
        """Each statistic as a float64 tensor of shape (n_layers, n_heads); NaN where never defined."""
        return means_or_nan(self.sums_, self.counts_)

    def finalize(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        means = self.means()
        n_layers, n_heads = means["cls"].shape
        return AnalysisResult(
            name=self.name,
            heads=head_frame(means, n_layers, n_heads),
            summary={"sequences": {k: int(v.item()) for k, v in self.counts_.items()},
                     "conventions": self.conventions_, "definitions": CONVENTIONS[self.conventions_]},
        )
