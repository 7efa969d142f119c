"""Attention rollout (Abnar & Zuidema 2020, "Quantifying attention flow in transformers").

Abnar & Zuidema average the heads of a layer, add the residual connection as an identity and renormalise:
``Ahat_l = 0.5 * mean_h(A_l) + 0.5 * I``, then multiply through the layers: ``R_l = Ahat_l @ R_{l-1}``,
``R_0 = Ahat_0``. headscope keeps one map per head (so every per-head analysis still has heads to rank):
``R_{l,h} = (0.5 * A_{l,h} + 0.5 * I) @ R_{l-1}``, with ``R_{l-1}`` the head-averaged rollout of the paper.
The mean over heads of ``R_{l,h}`` is exactly the paper's ``R_l`` (both factors are linear in ``A``), and
``R_{l,h}`` reads as "head h's attention, then everything below it". Only one [batch, query, key] product
is kept between layers.

Padded rows and columns stay 0: the identity is added at real positions only, so a real row sums to 1 and
needs no renormalisation beyond rounding.
"""

from __future__ import annotations

import torch


class Rollout:
    """The running product of one batch's layers.

    Parameters
    ----------
    real : Tensor of shape [batch, seq]
        bool, True at real (non-padded) positions, right-aligned like the weights.
    """

    def __init__(self, real: torch.Tensor) -> None:
        self.real = real.float()
        self.previous: torch.Tensor | None = None  # [batch, query, key]

    def _with_residual(self, weights: torch.Tensor) -> torch.Tensor:
        n = weights.shape[-1]
        eye = torch.eye(n, device=weights.device, dtype=torch.float32) * self.real[:, None, :]
        out = 0.5 * weights.float() + 0.5 * eye[:, None] if weights.dim() == 4 else \
            0.5 * weights.float() + 0.5 * eye
        total = out.sum(-1, keepdim=True)
        return torch.where(total > 0, out / total.clamp_min(torch.finfo(out.dtype).tiny), out)

    def step(self, weights: torch.Tensor) -> torch.Tensor:
        """Take the next layer and return its per-head rollout.

        Parameters
        ----------
        weights : Tensor of shape [batch, head, seq, seq]
            The whole layer (every query row).

        Returns
        -------
        Tensor of shape [batch, head, seq, seq]
            float32 ``(0.5 A_{l,h} + 0.5 I) @ R_{l-1}``; for the first layer ``0.5 A_{0,h} + 0.5 I``.
        """
        if weights.shape[-2] != weights.shape[-1]:
            raise ValueError("attention rollout needs every query row of a layer at once, got a block of "
                             f"{weights.shape[-2]} of {weights.shape[-1]} rows")
        per_head = self._with_residual(weights)
        mean = self._with_residual(weights.float().mean(1))
        if self.previous is None:
            self.previous = mean
            return per_head
        out = torch.matmul(per_head, self.previous[:, None])
        self.previous = torch.matmul(mean, self.previous)
        return out
