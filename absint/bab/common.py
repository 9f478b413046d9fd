"""Helpers shared by the splitting strategies."""
from __future__ import annotations

import torch


def clause_bounds(rows: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """Per sub-problem and clause, the best proved bound of the clause's rows ``[k, K]`` (a clause
    of the violation DNF is refuted once any of its rows is; ``onehot`` ``[m, K]``: row → clause)."""
    r = rows[:, :, None].expand(-1, -1, onehot.shape[1])
    return torch.where(onehot[None], r, torch.full_like(r, -float("inf"))).max(dim=1).values


def worst_rows(rows: torch.Tensor, onehot: torch.Tensor, open_clause: torch.Tensor) -> torch.Tensor:
    """Per sub-problem, the row to attack/split for: in the open clause with the smallest margin
    bound, that clause's row with the largest bound (the one closest to refuting it)."""
    K = onehot.shape[1]
    r = rows[:, :, None].expand(-1, -1, K)
    masked = torch.where(onehot[None], r, torch.full_like(r, -float("inf")))
    clause_lb, best_row = masked.max(dim=1)  # [k, K]
    clause_lb = clause_lb.masked_fill(~open_clause, float("inf"))
    k = clause_lb.argmin(dim=1)
    return best_row.gather(1, k[:, None]).squeeze(1)


def min_vertex(A: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The vertex of each box ``[lo, hi]`` minimising ``A·x`` (``A``, ``lo``, ``hi``: ``[k, n]``)."""
    return torch.where(A > 0, lo, hi)
