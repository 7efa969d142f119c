"""Counts over ``roles.csv``: heads holding each pair of roles, and heads holding each role per layer."""

from __future__ import annotations

import pandas as pd


def colocation(roles: pd.DataFrame, column: str = "has_role") -> pd.DataFrame:
    """How many heads hold each pair of roles (the diagonal: how many hold the role).

    Parameters
    ----------
    roles : DataFrame
        ``roles.csv`` (``layer, head, role`` and ``column``).

    Returns
    -------
    DataFrame of shape (n_roles, n_roles), index and columns the roles in table order
    """
    order = list(dict.fromkeys(roles["role"]))
    held = roles.pivot_table(index=["layer", "head"], columns="role", values=column, aggfunc="max",
                             fill_value=False).reindex(columns=order, fill_value=False).astype(int)
    matrix = held.T.to_numpy() @ held.to_numpy()
    return pd.DataFrame(matrix, index=pd.Index(order, name="role"), columns=order)


def per_layer_counts(roles: pd.DataFrame, column: str = "has_role") -> pd.DataFrame:
    """Number of heads per layer that hold each role: index layer, one column per role."""
    order = list(dict.fromkeys(roles["role"]))
    counts = roles.assign(_held=roles[column].astype(bool)).pivot_table(
        index="layer", columns="role", values="_held", aggfunc="sum", fill_value=0)
    return counts.reindex(columns=order, fill_value=0).astype(int)
