"""Norm-based attention (Kobayashi et al. 2020, "Attention is not only a weight").

A head's contribution of token ``j`` to query ``i`` is the vector ``A[i, j] * f(x_j)`` with
``f(x_j) = v_j W_O^h``: token ``j``'s value for head ``h`` (value bias included, as the model adds it)
times that head's slice of the output projection (the output bias is shared by all tokens and left out).
Since ``A[i, j] >= 0``, ``||A[i, j] f(x_j)|| = A[i, j] ||f(x_j)||``: the per-key norms are computed once per
layer, shape [batch, head, key], and multiply the weights. Rows are renormalised to sum to 1 so that every
analysis still gets a distribution over keys.
"""

from __future__ import annotations

import torch


def head_output_matrix(projection: torch.nn.Module, n_heads: int) -> torch.Tensor:
    """The output projection as one matrix per head.

    Parameters
    ----------
    projection : torch.nn.Module
        ``nn.Linear`` (weight [hidden, n_heads * head_dim]) or transformers' ``Conv1D`` (GPT-2, weight
        [n_heads * head_dim, hidden]).
    n_heads : int

    Returns
    -------
    Tensor of shape [head, head_dim, hidden]
        float32; ``v @ W[h]`` is head ``h``'s value mapped into the residual stream.
    """
    if not isinstance(projection.weight, torch.Tensor):
        raise TypeError(f"norm-based weights: output projection {type(projection).__name__} has no weight tensor")
    weight = projection.weight.detach().float()
    if isinstance(projection, torch.nn.Linear):
        weight = weight.t()
    elif type(projection).__name__ != "Conv1D":
        raise TypeError(f"norm-based weights: unsupported output projection {type(projection).__name__} "
                        "(expected nn.Linear or Conv1D)")
    n_in, hidden = weight.shape
    if n_in % n_heads:
        raise ValueError(f"norm-based weights: output projection input size {n_in} is not a multiple of "
                         f"{n_heads} heads")
    return weight.reshape(n_heads, n_in // n_heads, hidden)


def value_norms(value: torch.Tensor, head_output: torch.Tensor) -> torch.Tensor:
    """``||v_j W_O^h||`` for every head and key.

    Parameters
    ----------
    value : Tensor of shape [batch, head, key, head_dim]
        Value states with grouped-query heads already expanded.
    head_output : Tensor of shape [head, head_dim, hidden]
        From :func:`head_output_matrix`.

    Returns
    -------
    Tensor of shape [batch, head, key]
        float32.
    """
    # Through the Gram matrix W_h W_h^T [head, d, d]: never builds the [batch, head, key, hidden] vectors.
    gram = torch.matmul(head_output, head_output.transpose(1, 2))
    v = value.float()
    squared = torch.einsum("bhkd,hde,bhke->bhk", v, gram, v)
    return squared.clamp_min_(0.0).sqrt_()


def norm_based(weights: torch.Tensor, norms: torch.Tensor, renormalise: bool = True) -> torch.Tensor:
    """Norm-based weights ``A[i, j] * ||f(x_j)||``, optionally renormalised per row.

    Parameters
    ----------
    weights : Tensor of shape [batch, head, query, key]
        Attention weights (a block of query rows is fine: keys are always the whole sequence).
    norms : Tensor of shape [batch, head, key]
        From :func:`value_norms`.
    renormalise : bool
        Divide each row by its sum (rows that are all 0, padding, stay 0).

    Returns
    -------
    Tensor of shape [batch, head, query, key]
        float32.
    """
    out = weights.float() * norms[:, :, None, :]
    if renormalise:
        total = out.sum(-1, keepdim=True)
        out = torch.where(total > 0, out / total.clamp_min(torch.finfo(out.dtype).tiny), out)
    return out


def norm_weights(weights: torch.Tensor, value: torch.Tensor, projection: torch.nn.Module | torch.Tensor,
                 renormalise: bool = True) -> torch.Tensor:
    """Norm-based weights from attention, value states and the output projection in one call.

    Parameters
    ----------
    weights : Tensor of shape [batch, head, query, key]
    value : Tensor of shape [batch, head, key, head_dim]
        Grouped-query heads expanded.
    projection : torch.nn.Module or Tensor of shape [head, head_dim, hidden]
        The layer's output projection, or its per-head matrices.
    renormalise : bool

    Returns
    -------
    Tensor of shape [batch, head, query, key]
    """
    head_output = projection if isinstance(projection, torch.Tensor) else head_output_matrix(
        projection, int(weights.shape[1]))
    return norm_based(weights, value_norms(value, head_output), renormalise)
