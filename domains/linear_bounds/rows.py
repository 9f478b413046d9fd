"""Rows of the backward pass and their batch members.

The backward pass bounds ``R`` linear functions (rows) at once; each row belongs to one batch member
(one region / sub-problem), and per-member quantities (relaxation lines, concrete bounds, error
weights, ``[B, n]``) apply to its rows. Rows of all members are stacked, so a dense layer is one
matrix product for the whole batch.

:class:`RowLayout` records the member of every row and applies per-member vectors:

* one member (``bidx`` None): vectors broadcast;
* ``uniform`` — every member has the same number ``m`` of consecutive rows: views ``[B, m, n]``
  broadcast against ``[B, 1, n]`` (no gathered copies; autograd-friendly);
* general — ``bidx`` (non-decreasing) gathers per-member vectors, or, for large row blocks, works
  per contiguous segment of one member.
"""
from __future__ import annotations

import torch

__all__ = ["RowLayout"]


class RowLayout:
    """Which batch member each row belongs to (see the module docstring)."""

    SEGMENT_MIN = 1 << 15  # R·k above which segments beat gathering

    def __init__(self, bidx: torch.Tensor | None, batch: int, uniform: int | None = None) -> None:
        self.bidx = bidx
        self.batch = batch
        self.uniform = uniform  # rows per member when every member has the same number
        self._segs: list[tuple[int, int, int]] | None = None

    @staticmethod
    def single() -> "RowLayout":
        return RowLayout(None, 1)

    @staticmethod
    def per_member(batch: int, m: int, device: torch.device | None = None) -> "RowLayout":
        """``m`` consecutive rows for each of ``batch`` members."""
        if batch == 1:
            return RowLayout(None, 1)
        bidx = torch.arange(batch, device=device).repeat_interleave(m)
        return RowLayout(bidx, batch, m)

    def keep(self, keep: torch.Tensor) -> "RowLayout":
        """The layout of the rows ``keep`` (a sorted index)."""
        return self if self.bidx is None else RowLayout(self.bidx[keep], self.batch)

    @property
    def segments(self) -> list[tuple[int, int, int]]:
        if self._segs is None:
            counts = torch.bincount(self.bidx, minlength=self.batch).tolist()
            segs, s = [], 0
            for b, c in enumerate(counts):
                if c:
                    segs.append((b, s, s + c))
                    s += c
            self._segs = segs
        return self._segs

    def segmented(self, lam: torch.Tensor) -> bool:
        """True when per-segment processing beats gathering for ``lam`` (no autograd there)."""
        return self.segmented_shape(lam.shape[0], lam.shape[1])

    def segmented_shape(self, r: int, k: int) -> bool:
        """:meth:`segmented` for coefficients of shape ``[r, k]`` (before they are computed)."""
        return (self.bidx is not None and self.uniform is None and not torch.is_grad_enabled()
                and r * k >= self.SEGMENT_MIN and len(self.segments) * 2 <= r)

    def dot(self, lam: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """Row-wise ``λ_r · vec[b(r)]`` (``vec``: ``[B, k]``) → ``[R]``."""
        if self.bidx is None:
            return lam @ vec[0]
        if self.uniform is not None:
            b, m = self.batch, self.uniform
            return torch.bmm(lam.reshape(b, m, -1), vec.unsqueeze(2)).reshape(-1)
        if self.segmented(lam):
            return torch.cat([lam[s:e] @ vec[b] for b, s, e in self.segments])
        return (lam * vec.index_select(0, self.bidx)).sum(1)

    def pair_dots(self, lam: torch.Tensor, P: torch.Tensor, neg: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
        """Row-wise ``λ_r · P[b(r)] + λ⁻_r · Q[b(r)]`` for ``P``, ``Q`` ``[B, n, k]`` → ``[R, k]``
        (two matrix products, one pass over each of ``λ`` and ``λ⁻``)."""
        if self.bidx is None:
            return torch.addmm(torch.mm(lam, P[0]), neg, Q[0])
        if self.uniform is not None:
            b, m = self.batch, self.uniform
            out = torch.baddbmm(torch.bmm(lam.reshape(b, m, -1), P), neg.reshape(b, m, -1), Q)
            return out.reshape(b * m, -1)
        if self.segmented(lam):
            return torch.cat([torch.addmm(torch.mm(lam[s:e], P[b]), neg[s:e], Q[b]) for b, s, e in self.segments])
        return (torch.einsum("rn,rnk->rk", lam, P.index_select(0, self.bidx))
                + torch.einsum("rn,rnk->rk", neg, Q.index_select(0, self.bidx)))

    def scale(self, lam: torch.Tensor, vec: torch.Tensor,
              acc: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Row-wise ``λ_r ⊙ vec[b(r)]`` (plus ``acc[0] ⊙ acc[1][b(r)]`` if given) → ``[R, k]``."""
        if self.bidx is None:
            out = lam * vec
            return out if acc is None else (out.addcmul_(acc[0], acc[1]) if not out.requires_grad
                                            else out + acc[0] * acc[1])
        if self.uniform is not None:
            b, m = self.batch, self.uniform
            out = lam.reshape(b, m, -1) * vec.unsqueeze(1)
            if acc is not None:
                out = out + acc[0].reshape(b, m, -1) * acc[1].unsqueeze(1)
            return out.reshape(lam.shape)
        if self.segmented(lam):
            out = torch.empty_like(lam)
            for b, s, e in self.segments:
                torch.mul(lam[s:e], vec[b], out=out[s:e])
                if acc is not None:
                    out[s:e].addcmul_(acc[0][s:e], acc[1][b])
            return out
        out = lam * vec.index_select(0, self.bidx)
        return out if acc is None else out + acc[0] * acc[1].index_select(0, self.bidx)

    def gather(self, t: torch.Tensor, r: int) -> torch.Tensor:
        """``t[b(r)]`` for every row (``[R, k]``; a broadcast view when ``B == 1``)."""
        if self.bidx is None:
            return t.expand(r, -1)
        if self.uniform is not None:
            return t.unsqueeze(1).expand(-1, self.uniform, -1).reshape(r, -1)
        return t.index_select(0, self.bidx)
