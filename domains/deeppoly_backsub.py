"""Back-substitution for DeepPoly (Singh et al., POPL 2019, §3: "back-substitution").

A batch of ``R`` rows, each a linear function ``λ_r · x + c_r`` of one element's neurons, is pushed
backwards through the element graph until only the input box remains, where it is concretised.
Lower bounds only (an upper bound of ``λ·x`` is minus the lower bound of ``−λ·x``). Per step:

* affine ``y = A x + b``:  ``λ_x = Aᵀ λ`` (``op.transpose``: conv_transpose2d for convolutions,
  never a dense matrix), ``c += λ·b``;
* activation lines ``ls·x + lo ≤ y ≤ us·x + uo``: ``λ_x = λ⁺·ls + λ⁻·us``, ``c += λ⁺·lo + λ⁻·uo``;
* max-pool: each output maps to one input (or a constant upper bound), scatter-added;
* reshape: nothing; add: ``λ`` goes to both operands.

Over a DAG (residual ``add``) the coefficients of a node are accumulated from all its consumers
before it is expanded: nodes are expanded deepest first (reverse topological order, by ``depth``).

Two exact speed-ups, both keeping (or improving) DeepPoly's precision:

* *intermediate concretisation* (as in GPUPoly, Müller et al. 2021): after an affine step the
  whole frontier is concretised with its memoised concrete bounds (fused into the next ReLU
  step when the frontier is that one ReLU); every such value is a sound lower bound and the
  best one is kept (full back-substitution is always done unless stopped). It runs with a
  threshold (while it keeps deciding rows) or with ``keep_best``;
* *early stopping*: with a ``threshold``, a row (and its partner: ``pair`` ids, or the other
  half of the rows with ``halves``) is dropped once its bound reaches the threshold (e.g. the
  sign of a ReLU input is proved, nothing more is needed).

Rows of all batch members are stacked (``bidx[r]`` = batch member of row ``r``, non-decreasing),
so dense layers become one matrix product for the whole batch; ``bidx`` is None when ``B == 1``.
Per-batch quantities (relaxation lines, concrete bounds) are applied per contiguous segment of
rows when the rows are many (no ``[R, n]`` gathered copies), else by gathering.
"""
from __future__ import annotations

import heapq
import itertools
import logging
from typing import Callable

import torch

from absint.linear import DenseOperator
from absint.domains.deeppoly_element import ACT, ADD, AFFINE, INPUT, MAXPOOL, RESHAPE, DeepPolyElement

log = logging.getLogger(__name__)

BoundsFn = Callable[[DeepPolyElement], "tuple[torch.Tensor, torch.Tensor] | None"]


class RowLayout:
    """Which batch member each row belongs to, and per-member operations on rows.

    ``bidx`` (sorted) is None for a single batch member. Large row blocks are processed per
    contiguous segment of one member (``segments``), small ones by gathering per-member vectors.
    """

    SEGMENT_MIN = 1 << 15  # R·k above which segments beat gathering

    def __init__(self, bidx: torch.Tensor | None, batch: int) -> None:
        self.bidx = bidx
        self.batch = batch
        self._segs: list[tuple[int, int, int]] | None = None

    def keep(self, keep: torch.Tensor) -> "RowLayout":
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

    def _segmented(self, lam: torch.Tensor) -> bool:
        return lam.shape[0] * lam.shape[1] >= self.SEGMENT_MIN and len(self.segments) * 8 <= lam.shape[0]

    def dot(self, lam: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """Row-wise ``λ_r · vec[b(r)]`` (``vec``: ``[B, k]``) → ``[R]``."""
        if self.bidx is None:
            return lam @ vec[0]
        if self._segmented(lam):
            return torch.cat([lam[s:e] @ vec[b] for b, s, e in self.segments])
        return (lam * vec.index_select(0, self.bidx)).sum(1)

    def scale(self, lam: torch.Tensor, vec: torch.Tensor, acc: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Row-wise ``λ_r ⊙ vec[b(r)]`` (plus ``acc[0] ⊙ acc[1][b(r)]`` if given) → ``[R, k]``."""
        if self.bidx is None:
            out = lam * vec
            return out if acc is None else out.addcmul_(acc[0], acc[1])
        if self._segmented(lam):
            out = torch.empty_like(lam)
            for b, s, e in self.segments:
                torch.mul(lam[s:e], vec[b], out=out[s:e])
                if acc is not None:
                    out[s:e].addcmul_(acc[0][s:e], acc[1][b])
            return out
        out = lam * vec.index_select(0, self.bidx)
        return out if acc is None else out.addcmul_(acc[0], acc[1].index_select(0, self.bidx))

    def gather(self, t: torch.Tensor, r: int) -> torch.Tensor:
        """``t[b(r)]`` for every row (``[R, k]``; broadcast view when ``B == 1``)."""
        return t.expand(r, -1) if self.bidx is None else t.index_select(0, self.bidx)


def concretize(lam: torch.Tensor, mid: torch.Tensor, rad: torch.Tensor, rows: RowLayout) -> torch.Tensor:
    """``min λ·x`` over the box with centre ``mid`` and radius ``rad`` (``[B, k]``): ``λ·mid − |λ|·rad``."""
    if rows.bidx is None:
        return torch.addmv(lam @ mid[0], lam.abs(), rad[0], alpha=-1)
    return rows.dot(lam, mid) - rows.dot(lam.abs(), rad)


class BackSubstitution:
    """One back-substitution run over ``R`` rows (see module docstring).

    ``bounds_of(element)`` returns the memoised concrete bounds as flat centre and radius
    ``[B, n]``, or None (then that frontier is not concretised early). ``margin`` widens every
    computed bound outward by ``margin·(1 + |bound|)`` (floating-point safety margin).

    A frontier entry may hold coefficients for a subset ``cols`` of an element's neurons only:
    the neurons of a ReLU that are not stably inactive (``Prune.alive``) and the matching rows of
    the dense layer before it, so stably-inactive neurons cost nothing at all.
    """

    def __init__(self, const: torch.Tensor, bidx: torch.Tensor | None, bounds_of: BoundsFn, *,
                 batch: int = 1, margin: float = 0.0, keep_best: bool = False, threshold: float | None = None,
                 pair: torch.Tensor | None = None, halves: bool = False, symbolic: bool = False) -> None:
        self.const = const
        self.rows = RowLayout(bidx, batch)
        self.bounds_of = bounds_of
        self.margin = margin
        self.threshold = threshold
        # Intermediate concretisation: always with keep_best; with a threshold, as long as it
        # keeps deciding rows (it costs a pass over the frontier each time).
        self.early = (keep_best or threshold is not None) and not symbolic
        self.keep_best = keep_best
        self.pair = pair
        self.halves = halves  # rows r and r + R/2 are partners (kept so by symmetric dropping)
        self.symbolic = symbolic
        n = const.shape[0]
        self.best = const.new_full((n,), float("-inf"))
        self.pos: torch.Tensor | None = None  # original row of each current row (None: identity)
        self.pending: dict[int, list] = {}
        self.heap: list[tuple[int, int, int]] = []
        self._seq = itertools.count()
        self.input_lam: torch.Tensor | None = None
        self.steps = 0
        self.dropped = 0
        self.conc_due = False

    # -- frontier bookkeeping -----------------------------------------------------------------
    def push(self, el: DeepPolyElement, lam: torch.Tensor, cols: torch.Tensor | None = None) -> None:
        """Add ``lam`` (``[R, n]``, or ``[R, k]`` over neurons ``cols``) to ``el``'s coefficients."""
        key = id(el)
        entry = self.pending.get(key)
        if entry is None:
            self.pending[key] = [el, lam, cols]
            heapq.heappush(self.heap, (-el.depth, next(self._seq), key))
        elif entry[2] is cols:
            entry[1] = entry[1] + lam
        else:
            entry[1] = _full(entry[1], entry[2], el.numel) + _full(lam, cols, el.numel)
            entry[2] = None

    def _bound(self, value: torch.Tensor) -> torch.Tensor:
        return value - self.margin * (1 + value.abs()) if self.margin else value

    def _decided(self, best: torch.Tensor) -> torch.Tensor:
        """Rows whose margin-widened bound reaches the threshold."""
        t, m = self.threshold, self.margin
        if t >= 0 and m < 1:  # b − m(1+|b|) ≥ t  ⇔  b ≥ (t + m)/(1 − m) when t ≥ 0
            return best >= (t + m) / (1 - m)
        return self._bound(best) >= t

    def _midrad(self, el: DeepPolyElement, cols: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Centre and radius ``[B, k]`` of ``el``'s memoised bounds, restricted to ``cols``."""
        b = self.bounds_of(el)
        if b is None or cols is None:
            return b
        mid, rad = b
        memo = el.cache.get("midrad_cols")
        if memo is not None and memo[0] is cols and memo[1] is mid:
            return memo[2], memo[3]
        sub = mid[:, cols], rad[:, cols]
        el.cache["midrad_cols"] = (cols, mid, *sub)
        return sub

    def _conc_entry(self, el: DeepPolyElement, lam: torch.Tensor, cols: torch.Tensor | None) -> torch.Tensor | None:
        b = self._midrad(el, cols)
        return None if b is None else concretize(lam, b[0], b[1], self.rows)

    # -- main loop ----------------------------------------------------------------------------
    def run(self) -> torch.Tensor:
        """Expand the frontier down to the input; returns the best lower bound of every row ``[R]``."""
        while self.heap:
            _, _, key = heapq.heappop(self.heap)
            el, lam, cols = self.pending.pop(key)
            self.steps += 1
            kind = el.kind
            if kind == INPUT or (el.boxlike and not self.symbolic):
                if self.symbolic:
                    lam = _full(lam, cols, el.numel)
                    self.input_lam = lam if self.input_lam is None else self.input_lam + lam
                else:
                    self.const = self.const + self._conc_entry(el, lam, cols)
                continue
            fuse = False
            if self.conc_due:  # concretise the frontier left by the last affine step
                self.conc_due = False
                if kind == ACT and not self.pending and self.bounds_of(el) is not None:
                    fuse = True  # done inside the activation step, nearly for free
                else:
                    self.pending[key] = [el, lam, cols]
                    self._concretize_frontier()
                    entry = self.pending.pop(key, None)
                    if entry is None or self.const.shape[0] == 0:
                        break
                    lam = entry[1]
            if kind == AFFINE:
                self._affine(el, lam, cols)
                self.conc_due = self.early and bool(self.heap)
            elif kind == ACT:
                self._act(el, lam, cols, fuse)
                if fuse and self.const.shape[0] == 0:
                    break
            elif kind == RESHAPE:
                self.push(el.parents[0], lam, cols)
            elif kind == ADD:
                self.push(el.parents[0], lam, cols)
                self.push(el.parents[1], lam, cols)
            elif kind == MAXPOOL:
                self._maxpool(el, _full(lam, cols, el.numel))
            else:  # pragma: no cover - element kinds are closed
                raise ValueError(f"unknown DeepPoly element kind {kind!r}")
        best = self._bound(torch.maximum(self.best, self.const))
        if self.pos is None:
            return best
        out = self.out
        out[self.pos] = best
        return out

    # -- steps --------------------------------------------------------------------------------
    def _affine(self, el: DeepPolyElement, lam: torch.Tensor, cols: torch.Tensor | None) -> None:
        parent = el.parents[0]
        op = el.op
        if isinstance(op, DenseOperator):
            pcols = parent.prune.alive if parent.kind == ACT and parent.prune is not None else None
            weight, bias = dense_block(el, cols, pcols)
            members = el.cache.get("members") if cols is not None and self.rows.bidx is not None else None
            if members is not None and members[0] is cols and self.rows._segmented(lam):
                # batch members have different dead neurons: skip each member's zero columns
                lam_p = lam.new_empty(lam.shape[0], weight.shape[1])
                for b, s, e in self.rows.segments:
                    idx = members[1][b]
                    if idx.numel() == lam.shape[1]:
                        torch.mm(lam[s:e], weight, out=lam_p[s:e])
                    else:
                        torch.mm(lam[s:e][:, idx], weight[idx], out=lam_p[s:e])
            else:
                lam_p = lam @ weight
            if bias is not None:
                self.const = self.const + lam @ bias
            self.push(parent, lam_p, pcols)
            return
        lam = _full(lam, cols, el.numel)
        r = lam.shape[0]
        lam_p = op.transpose(lam.reshape(r, *el.shape)).reshape(r, -1)
        if el.bias is not None:
            self.const = self.const + lam @ el.bias
        self.push(parent, lam_p)

    def _act(self, el: DeepPolyElement, lam: torch.Tensor, cols: torch.Tensor | None, conc: bool = False) -> None:
        pr = el.prune
        if pr is not None:
            if cols is not pr.alive:
                lam = _full(lam, cols, el.numel)[:, pr.alive]
                cols = pr.alive
            lines = pr.lines
        else:
            lam = _full(lam, cols, el.numel)
            cols = None
            lines = el.lines
        # λ_x = λ⁺·ls + λ⁻·us = λ·ls + λ⁻·(us − ls);  c += λ⁺·lo + λ⁻·uo = λ·lo + λ⁻·(uo − lo)
        neg = lam.clamp(max=0)
        rows = self.rows
        total = None
        if conc:  # min of λ·y over y's box: λ·l − 2·λ⁻·r  (l = mid − rad, r = rad)
            mid, rad = self._midrad(el, cols)
            total = self.const + rows.dot(lam, mid - rad) + 2 * rows.dot(neg, rad)
        lam_p = rows.scale(lam, lines.ls, (neg, lines.dslope))
        self.const = self.const + rows.dot(neg, lines.doffset)
        if lines.lo is not None:
            self.const = self.const + rows.dot(lam, lines.lo)
        self.push(el.parents[0], lam_p, cols)
        if total is not None:
            self._update_best(total)

    def _maxpool(self, el: DeepPolyElement, lam: torch.Tensor) -> None:
        pl = el.pool
        r = lam.shape[0]
        index, exact = self.rows.gather(pl.index, r), self.rows.gather(pl.exact, r)
        neg = lam.clamp(max=0)
        # y ≥ x_j* always; y ≤ x_j* where exact, else y ≤ max u (a constant).
        coef = torch.where(exact, lam, lam - neg)
        loose = torch.where(exact, torch.zeros_like(neg), neg)
        self.const = self.const + self.rows.dot(loose, pl.upper)
        lam_p = lam.new_zeros(r, pl.in_numel).scatter_add_(1, index, coef)
        self.push(el.parents[0], lam_p)

    # -- intermediate concretisation and early stopping ---------------------------------------
    def _concretize_frontier(self) -> None:
        total = self.const
        for el, lam, cols in self.pending.values():
            c = self._conc_entry(el, lam, cols)
            if c is None:
                return
            total = total + c
        self._update_best(total)

    def _update_best(self, total: torch.Tensor) -> None:
        """Keep the better bound per row; with a threshold, drop rows (and partners) it decides."""
        self.best = torch.maximum(self.best, total)
        if self.threshold is None:
            return
        decided = self._decided(self.best)
        n_dec = int(decided.sum())
        n = decided.numel()
        if n_dec * 16 < n and not self.keep_best:
            self.early = False  # unproductive here: deeper frontiers rarely do better
        if n_dec == 0:
            return
        if self.halves:
            h = n // 2
            d = decided[:h] | decided[h:]
            decided = torch.cat([d, d])
            n_dec = int(decided.sum())
        elif self.pair is not None:
            dead = torch.zeros(int(self.pair.max()) + 1, dtype=torch.bool, device=decided.device)
            dead[self.pair[decided]] = True
            decided = dead[self.pair]
            n_dec = int(decided.sum())
        if n_dec * 8 < n and n_dec < 64:
            return  # not worth a copy
        keep = (~decided).nonzero().squeeze(1)
        if self.pos is None:
            self.out = self._bound(self.best)
            self.pos = keep
        else:
            self.out[self.pos[decided]] = self._bound(self.best[decided])
            self.pos = self.pos[keep]
        self.dropped += n_dec
        self.best = self.best[keep]
        self.const = self.const[keep]
        self.rows = self.rows.keep(keep)
        if self.pair is not None:
            self.pair = self.pair[keep]
        for entry in self.pending.values():
            entry[1] = entry[1][keep]
        if keep.numel() == 0:
            self.pending.clear()
            self.heap.clear()


def _full(lam: torch.Tensor, cols: torch.Tensor | None, n: int) -> torch.Tensor:
    """Coefficients over all ``n`` neurons from coefficients over the subset ``cols``."""
    if cols is None:
        return lam
    out = lam.new_zeros(lam.shape[0], n)
    out[:, cols] = lam
    return out


def dense_block(el: DeepPolyElement, rows: torch.Tensor | None,
                cols: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``W[rows][:, cols]`` and ``b[rows]`` of a dense affine element (memoised per index pair)."""
    if rows is None and cols is None:
        return el.op.weight, el.bias
    memo = el.cache.setdefault("blocks", [])
    for r, c, w, b in memo:
        if r is rows and c is cols:
            return w, b
    w = el.op.weight
    b = el.bias
    if rows is not None:
        w = w[rows]
        b = None if b is None else b[rows].contiguous()
    if cols is not None:
        w = w[:, cols]
    w = w.contiguous()
    if len(memo) > 8:
        memo.pop(0)
    memo.append((rows, cols, w, b))
    return w, b
