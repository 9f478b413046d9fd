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

:class:`MemberCols` is the *member-compact* column layout of a pruned ReLU's coefficients when
several members are bounded together: the rows of member ``b`` carry only the ``k_b`` neurons live in
``b`` (columns ``0..k_b−1``), padded with exact zeros to the widest member of the row block
(:meth:`MemberCols.narrow`), instead of the union of all members' live neurons (ERAN 6x200, 100
images: 44-79 of 200 neurons live per image in the first hidden layer (10th-90th percentile), a
union of 195; 71-200 in the fifth). Per-member vectors ``[B, n]`` become ``[B, k]`` by
:meth:`MemberCols.take` (zeros in the padding), so every :class:`RowLayout` operation applies
unchanged; the per-segment steps of :mod:`.backward` use each member's exact ``k_b`` columns.
"""
from __future__ import annotations

import torch

__all__ = ["MemberCols", "RowLayout"]


class RowLayout:
    """Which batch member each row belongs to (see the module docstring)."""

    SEGMENT_MIN = 1 << 15  # R·k above which segments beat gathering

    def __init__(self, bidx: torch.Tensor | None, batch: int, uniform: int | None = None) -> None:
        self.bidx = bidx
        self.batch = batch
        self.uniform = uniform  # rows per member when every member has the same number
        self._segs: list[tuple[int, int, int]] | None = None
        self._sizes: list[int] | None = None
        self._members: list[int] | None = None

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
    def members(self) -> list[int]:
        """The member of each segment (:attr:`segments`)."""
        if self._members is None:
            self.sizes  # noqa: B018 (fills both)
        return self._members

    @property
    def sizes(self) -> list[int]:
        """The number of rows of each segment (for ``Tensor.split``)."""
        if self._sizes is None:
            self._sizes = [e - s for _, s, e in self.segments]
            self._members = [b for b, _, _ in self.segments]
        return self._sizes

    @property
    def segments(self) -> list[tuple[int, int, int]]:
        """``(member, start, end)`` of each contiguous run of one member's rows."""
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


class MemberCols:
    """Per-member neuron subsets of one node (the member-compact layout, see the module docstring).

    ``index[b, j]`` (``[B, k]``) is the neuron of column ``j`` of member ``b``'s rows (``n``, a zero
    sentinel, in the padding, ``j ≥ counts[b]``); ``pos`` is the same relative to ``alive`` (the
    union of the members' neurons, the columns of the union layout; sentinel ``len(alive)``).
    :meth:`narrow` gives the layout cut to the width of the members a row block actually holds."""

    def __init__(self, live: torch.Tensor, alive: torch.Tensor) -> None:
        b, n = live.shape
        counts = live.sum(1)
        k = max(int(counts.max()), 1)
        order = torch.argsort((~live).to(torch.int8), dim=1, stable=True)[:, :k]  # live neurons first
        pad = torch.arange(k, device=live.device).unsqueeze(0) >= counts.unsqueeze(1)
        self.index = order.masked_fill(pad, n).contiguous()
        where = torch.full((n + 1,), len(alive), dtype=torch.long, device=live.device)
        where[alive] = torch.arange(len(alive), device=live.device)
        self.pos = where[self.index].contiguous()
        self.alive = alive
        self.counts: list[int] = counts.tolist()
        self.counts_t = counts
        self.n = n
        self.batch = b
        self.width = k
        self.root = self
        self._narrow: dict[int, MemberCols] = {}
        self._memo: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def narrow(self, width: int) -> "MemberCols":
        """The same layout with ``width`` columns: for rows of members with at most ``width`` neurons
        (memoised, so equal widths give the same object)."""
        root = self.root
        width = max(1, min(width, root.width))
        if width == root.width:
            return root
        out = root._narrow.get(width)
        if out is None:
            out = object.__new__(MemberCols)
            out.__dict__.update(root.__dict__)
            out.index, out.pos = root.index[:, :width].contiguous(), root.pos[:, :width].contiguous()
            out.width, out.root = width, root
            root._narrow[width] = out
        return out

    def for_rows(self, rows: RowLayout) -> "MemberCols":
        """:meth:`narrow` to the widest member among ``rows``."""
        return self.narrow(max((self.counts[b] for b, _, _ in rows.segments), default=1))

    def take(self, t: torch.Tensor) -> torch.Tensor:
        """Per-member ``t`` (``[B, n]`` or ``[B, n, c]``) on each member's columns → ``[B, k(, c)]``
        (exact zeros in the padding; memoised while ``t`` stands)."""
        if self.root is not self:  # a view of the full-width columns (memoised there)
            return self.root.take(t)[:, :self.width]
        memo = self._memo.get(id(t))
        if memo is not None and memo[0] is t:
            return memo[1]
        ext = torch.cat([t, t.new_zeros(t.shape[0], 1, *t.shape[2:])], 1)
        if t.dim() == 2:
            out = ext.gather(1, self.index)
        else:
            out = ext.gather(1, self.index.unsqueeze(2).expand(-1, -1, t.shape[2])).contiguous()
        if len(self._memo) > 64:
            self._memo.clear()
        self._memo[id(t)] = (t, out)
        return out

    def rows_from(self, lam: torch.Tensor, cols: torch.Tensor | None, rows: RowLayout) -> torch.Tensor:
        """Coefficients ``[R, n]`` (``cols`` None) or ``[R, |alive|]`` (``cols`` is ``alive``) in this
        layout ``[R, k]`` (exact: a gather; the dropped columns are each member's dead neurons)."""
        if cols is self.alive:
            idx = self.pos
        else:
            if cols is not None:
                lam = lam.new_zeros(lam.shape[0], self.n).index_copy(1, cols, lam)
            idx = self.index
        ext = torch.cat([lam, lam.new_zeros(lam.shape[0], 1)], 1)
        return ext.gather(1, rows.gather(idx, lam.shape[0]))

    def full(self, lam: torch.Tensor, rows: RowLayout) -> torch.Tensor:
        """Dense coefficients ``[R, n]`` from this layout's ``[R, k]``."""
        r = lam.shape[0]
        out = lam.new_zeros(r, self.n + 1).scatter_(1, rows.gather(self.index, r), lam)
        return out[:, :self.n]
