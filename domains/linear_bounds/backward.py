"""The backward pass: bound ``R`` linear functions of one node by back-substitution to the input.

Rows ``λ_r · x + c_r`` of a start node are pushed backwards through the graph, one node at a time,
deepest first (over a DAG a node's coefficients are summed from all its consumers before it is
expanded), until only the input box remains, where they are concretised. Lower bounds only (an
upper bound of ``λ·x`` is minus the lower bound of ``−λ·x``). Each op's step is one entry of
:data:`RULES` (Singh et al., POPL 2019, §3; Zhang et al., NeurIPS 2018, CROWN; Xu et al., NeurIPS
2020, auto_LiRPA's per-op bound rules):

* ``Affine`` ``y = A x + b``: ``λ_x = Aᵀλ`` (``op.transpose``: conv_transpose2d for convolutions,
  never a dense matrix), ``c += λ·b``;
* activation lines ``ls·z + lo ≤ y ≤ us·z + uo``: ``λ_z = λ⁺·ls + λ⁻·us``, ``c += λ⁺·lo + λ⁻·uo``;
  with optimisable parameters (:class:`~absint.domains.linear_bounds.params.Params`) ``ls = α`` per
  row, split multipliers ``β`` add ``−β⊙s`` to ``λ_z`` and constraint multipliers ``μ`` add
  ``μA_post`` to ``λ_y``, ``μA_pre`` to ``λ_z`` and ``−μ·b`` to ``c``;
* ``MaxPool2d``: each output maps to one input (or a constant upper bound), scatter-added;
* ``Reshape``: nothing; ``Add``: ``λ`` goes to both operands.

**Rounding (issue 15).** Every coefficient and constant is a float computation; the pass keeps a
rigorous bound ``E_r`` of how far the real function of the computed coefficients can lie above the
target on the input box. A step through node ``v`` adds ``|λ_v| · e_v`` (:meth:`Engine.err_weight`:
``e_v = 2γ_n·|A|·max|x| + 2γ_{n+K}·|b|`` for an affine map with dot products of length ``n``, the
analogue for relaxation lines), where ``K`` bounds the number of terms the pass adds to its
constant, so ``e_v`` also covers the rounding of those additions; a sum at a join node adds
``2u·|λ|·max|x|``. An activation step pays its own error and, in advance, the error of the affine
step that follows it (``|λ_z| ≤ |λ|·|ls| + |λ⁻|·|ds|``), so the affine step needs no extra work.
Concretisation over a box ``[l, u]`` uses pre-widened vectors (:meth:`Engine.conc`), so ``λ·l' + λ⁻·w'``
is itself a rigorous lower bound. Every returned number is ``c − E`` rounded down; NaN and +inf
(overflow) become ``−inf``.

Speed-ups that keep (or improve) DeepPoly's precision:

* *intermediate concretisation* (GPUPoly, Müller et al., MLSys 2021): after an affine step the
  whole frontier is concretised with its nodes' concrete bounds (fused into the next activation
  step when the frontier is that one node); the best bound seen is kept. It runs with a
  threshold (while it keeps deciding rows) or with ``keep_best``;
* *early stopping*: with a ``threshold``, a row (and its partner: ``pair`` ids, or the other half
  of the rows with ``halves``) is dropped once its bound reaches the threshold;
* *pruning*: a node may carry coefficients on a subset ``cols`` of its neurons only (the neurons of
  a ReLU that are not stably inactive, and the matching rows of the dense layer before it). With
  several batch members (and no autograd) each member's rows carry only *its own* live neurons
  (:class:`~.rows.MemberCols`, zero-padded to the widest member of the row block): a dense step is
  one product per member with its block ``W[idx_b][:, pidx_b]`` (:func:`_affine_members`) and an
  activation step works on each member's ``k_b`` columns. The dropped columns are neurons whose
  output is exactly 0 in that member, so the function is the same and the per-member sums are those
  of a single-member run (summation order aside). Before, rows carried the union of the members'
  live neurons (ERAN 6x200: 193 columns against 55-75 in the first hidden layer), and every step
  gathered each member's columns (``lam[s:e][:, idx]``). ERAN MNIST, 100 images in one call, one
  thread, CPU ms per image (min of 3, the machine's other core busy): 6x100 4.17 → 3.34, 6x200
  9.95 → 7.83, 9x100 8.24 → 7.29;
* *fused first layer*: a dense step into a box-like node is concretised at once, for several batch
  members block by block while the coefficients are in the cache (:func:`_dense_to_box`);
* *windows* (:mod:`.patches`): rows of convolution outputs stay local; a convolution step on small
  windows is one product with the window map, and the activation step right after a convolution's
  unit rows sums by one convolution of the per-neuron vectors (:func:`~.patches.kernel_dots`).
"""
from __future__ import annotations

import heapq
import itertools
from typing import Any

import torch
import torch.nn.functional as F

from absint.ir import Add, Affine, MaxPool2d, Relu, Reshape, Sigmoid, Tanh
from absint.linear import ConvOperator, DenseOperator, DiagonalOperator
from absint.domains.linear_bounds.graph import Node
from absint.domains.linear_bounds.patches import (KERNEL_ROWS_MIN, Patches, Windows, conv_step, conv_transpose_rows,
                                                fast_transpose, kernel_dots)
from absint.domains.linear_bounds.relax import floor, gam, safe_down, unit
from absint.domains.linear_bounds.rows import MemberCols, RowLayout


__all__ = ["BackwardPass", "RULES", "full"]


def full(lam: "torch.Tensor | Patches", cols: "torch.Tensor | MemberCols | None", n: int,
         rows: RowLayout | None = None) -> torch.Tensor:
    """Dense coefficients over all ``n`` neurons from coefficients over the subset ``cols``, over
    each member's own neurons (:class:`~.rows.MemberCols`; needs the ``rows``), or from windows
    (:class:`~absint.domains.linear_bounds.patches.Patches`)."""
    if isinstance(lam, Patches):
        return lam.dense()
    if cols is None:
        return lam
    if isinstance(cols, MemberCols):
        return cols.full(lam, rows)
    return lam.new_zeros(lam.shape[0], n).index_copy(1, cols, lam)


class BackwardPass:
    """One back-substitution run over ``R`` rows (see the module docstring)."""

    def __init__(self, engine: Any, const: torch.Tensor, rows: RowLayout, *, threshold: float | None = None,
                 keep_best: bool = False, pair: torch.Tensor | None = None, halves: bool = False,
                 symbolic: bool = False, params: Any = None, record: dict | None = None) -> None:
        self.engine = engine
        self.const = const
        self.rows = rows
        self.account = engine.options.account_rounding  # False: estimates only (EngineOptions)
        self.threshold = threshold
        # Intermediate concretisation: always with keep_best; with a threshold, as long as it
        # keeps deciding rows (it costs a pass over the frontier each time).
        self.early = (keep_best or threshold is not None) and not symbolic
        self.keep_best = keep_best
        self.pair = pair
        self.halves = halves  # rows r and r + R/2 are partners (kept so by symmetric dropping)
        self.symbolic = symbolic
        self.params = params
        #: if a dict: the coefficients reaching each ReLU output (before its relaxation, keyed by node
        #: identity) and the input ("input"), for branching heuristics and attacks
        self.record = record
        n = const.shape[0]
        self.err = const.new_zeros(n)  # rounding-error bound E_r accumulated so far
        self.c0 = const.abs()  # the initial constant (its later sums are paid by the error weights)
        self.K = 64  # bound on the number of terms added to the constant (set at the first push)
        self.best = const.new_full((n,), float("-inf"))
        self.pos: torch.Tensor | None = None  # original row of each current row (None: identity)
        self.out: torch.Tensor | None = None
        self.pending: dict[int, list] = {}
        self.heap: list[tuple[int, int, int]] = []
        self._seq = itertools.count()
        self.input_lam: torch.Tensor | None = None
        self.steps = 0
        self.dropped = 0
        self.conc_due = False
        self.width = 1
        self.started = False

    # -- bookkeeping --------------------------------------------------------------------------
    def push(self, node: Node, lam: torch.Tensor, cols: torch.Tensor | None = None, paid: bool = False) -> None:
        """Add ``lam`` (``[R, n]``, or ``[R, k]`` over neurons ``cols``) to ``node``'s coefficients;
        ``paid``: the rounding error of ``node``'s own step on ``lam`` is already in ``E``."""
        if not self.started:
            self.started = True
            self.K = self.engine.term_budget(node)
        key = id(node)
        self.width = max(self.width, node.numel)
        entry = self.pending.get(key)
        if entry is None:
            self.pending[key] = [node, lam, cols, paid]
            heapq.heappush(self.heap, (-node.index, next(self._seq), key))
            return
        if isinstance(lam, Patches) or isinstance(entry[1], Patches):
            if isinstance(lam, Patches) and isinstance(entry[1], Patches) and lam.same_windows(entry[1]):
                entry[1] = Patches(entry[1].data + lam.data, lam.y0, lam.x0, lam.grid)
                entry[3] = entry[3] and paid
                self.err = self.err + entry[1].abs_dot(Windows(lam, self.rows.bidx).take(
                    self.engine.magnitude(node, None))) * (2 * unit(lam.data.dtype))
                return
            lam, entry[1] = full(lam, None, node.numel), full(entry[1], entry[2], node.numel, self.rows)
            cols = entry[2] = None
        if entry[2] is cols:
            total = entry[1] + lam
        else:
            total = full(entry[1], entry[2], node.numel, self.rows) + full(lam, cols, node.numel, self.rows)
            entry[2] = cols = None
        entry[1] = total
        entry[3] = entry[3] and paid
        # the sum is rounded: |fl(a + b) − (a + b)| ≤ u|fl(a + b)|, times max|x|
        if self.account:
            self.err = self.err + self.rows.dot(total.abs(), self.engine.magnitude(node, cols)) * (
                2 * unit(total.dtype))

    def add_const(self, *terms: torch.Tensor) -> None:
        """``c += Σ terms`` (each term's magnitude is part of its step's error weight, which covers
        the rounding of these additions)."""
        for t in terms:
            self.const = self.const + t

    def add_err(self, lam: torch.Tensor, weight: torch.Tensor, neg: torch.Tensor | None = None) -> None:
        """``E += |λ|·weight`` (per member ``weight`` ``[B, k]``; ``|λ| = λ − 2λ⁻`` when ``neg`` is given)."""
        if not self.account:
            return
        if neg is None:
            self.err = self.err + self.rows.dot(lam.abs(), weight)
        else:
            self.err = self.err + (self.rows.dot(lam, weight) - 2 * self.rows.dot(neg, weight))

    def safe(self, value: torch.Tensor) -> torch.Tensor:
        """``value − E`` (plus the initial constant's share of rounding) rounded down: a proved lower bound."""
        if not self.account:  # an estimate (EngineOptions.account_rounding)
            return value
        dt = value.dtype
        scale = (1 + 4 * gam(self.width + 8, dt)) * (1 + 8 * unit(dt))  # E's own roundings
        return safe_down(value - torch.add(self.err * scale, self.c0, alpha=4 * gam(self.K + 2, dt)))

    def concretize(self, node: Node, lam, cols: torch.Tensor | None, scratch: bool = False):
        """Terms ``min λ·x`` over ``node``'s concrete bounds (already widened), or None. ``scratch``:
        ``lam`` is a temporary the caller owns, so ``λ⁻`` overwrites it (one ``[R, n]`` block less to
        allocate and fill: ERAN 6x100 and 6x200, one image, 6 % less CPU, the same numbers)."""
        cw = self.engine.conc(node, cols, self.K)
        if cw is None:
            return None
        low, wid = cw
        if isinstance(lam, Patches):
            win = Windows(lam, self.rows.bidx)
            return lam.dot(win.take(low)), (lam.data.clamp(max=0) * win.take(wid)).sum((1, 2, 3))
        t_low = self.rows.dot(lam, low)
        return t_low, self.rows.dot(lam.clamp_(max=0) if scratch else lam.clamp(max=0), wid)

    # -- main loop ----------------------------------------------------------------------------
    def run(self) -> torch.Tensor:
        """Expand the frontier down to the input; returns the best lower bound of every row ``[R]``."""
        while self.heap:
            _, _, key = heapq.heappop(self.heap)
            node, lam, cols, paid = self.pending.pop(key)
            self.steps += 1
            # boxlike nodes with parents (Reshape / diagonal Affine of the input) are concretised
            # where they are reached, unless the input's own coefficients are wanted (symbolic, or
            # ``record``: the candidate points of the search minimise them over the input box)
            if node.boxlike and (not node.parents or not (self.symbolic or self.record is not None)):
                if self.record is not None and not node.parents:
                    self.record["input"] = full(lam, cols, node.numel, self.rows).detach()
                if self.symbolic:
                    lam = full(lam, cols, node.numel, self.rows)
                    self.input_lam = lam if self.input_lam is None else self.input_lam + lam
                else:
                    self.add_const(*self.concretize(node, lam, cols))
                continue
            fuse = False
            if self.conc_due:  # concretise the frontier left by the last affine step
                self.conc_due = False
                if isinstance(node.op, (Relu, Sigmoid, Tanh)) and not self.pending and \
                        self.engine.conc(node, None, self.K) is not None:
                    fuse = True  # done inside the activation step, nearly for free
                else:
                    self.pending[key] = [node, lam, cols, paid]
                    self._concretize_frontier()
                    entry = self.pending.pop(key, None)
                    if entry is None or self.const.shape[0] == 0:
                        break
                    lam = entry[1]
            rule = RULES.get(type(node.op))
            if rule is None:  # pragma: no cover - GraphView.of and the domain check ops first
                raise TypeError(f"no backward rule for {node.op.kind}")
            rule(self, node, lam, cols, fuse, paid)
            if isinstance(node.op, Affine):
                self.conc_due = self.early and bool(self.heap)
            if fuse and self.const.shape[0] == 0:
                break
        best = torch.maximum(self.best, self.safe(self.const)) if not self.symbolic else self.best
        if self.pos is None:
            return best
        out = self.out
        out[self.pos] = best
        return out

    def symbolic_result(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        """After :meth:`run` in symbolic mode: input coefficients and a safe constant ``c − E``."""
        return self.input_lam, self.safe(self.const)

    # -- intermediate concretisation and early stopping ---------------------------------------
    def _concretize_frontier(self) -> None:
        total = self.const
        for node, lam, cols, _ in self.pending.values():
            c = self.concretize(node, lam, cols)
            if c is None:
                return
            total = total + c[0] + c[1]
        self.update_best(self.safe(total))

    def update_best(self, value: torch.Tensor) -> None:
        """Keep the better (safe) bound per row; with a threshold, drop rows it decides."""
        self.best = torch.maximum(self.best, value)
        if self.threshold is None:
            return
        decided = self.best >= self.threshold
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
            self.out = self.best.clone()
            self.pos = keep
        else:
            self.out[self.pos[decided]] = self.best[decided]
            self.pos = self.pos[keep]
        self.dropped += n_dec
        self.best = self.best[keep]
        self.const = self.const[keep]
        self.err = self.err[keep]
        self.c0 = self.c0[keep]
        self.rows = self.rows.keep(keep)
        if self.pair is not None:
            self.pair = self.pair[keep]
        for entry in self.pending.values():
            entry[1] = entry[1][keep]
        if keep.numel() == 0:
            self.pending.clear()
            self.heap.clear()


# -- the per-op rules ---------------------------------------------------------------------------
def _affine(p: BackwardPass, node: Node, lam: torch.Tensor, cols: torch.Tensor | None, fuse: bool,
            paid: bool) -> None:
    parent = node.parents[0]
    op = node.op.operator
    eng = p.engine
    if isinstance(lam, Patches):
        if isinstance(op, (ConvOperator, DiagonalOperator)):
            _affine_patches(p, node, lam, paid)
            return
        lam = lam.dense()
    if not paid:
        p.add_err(lam, eng.err_weight(node, cols, p.K))
    if isinstance(cols, MemberCols):
        if isinstance(op, DenseOperator) and _affine_members(p, node, lam, cols):
            return
        lam, cols = full(lam, cols, node.numel, p.rows), None
    if isinstance(op, DenseOperator):
        pcols = eng.alive(parent)
        weight, bias = eng.dense_block(node, cols, pcols)
        members = eng.members(node) if cols is not None and p.rows.bidx is not None else None
        if _concretized_next(p, parent):
            _dense_to_box(p, node, parent, lam, cols, weight, bias, members)
            return
        if members is not None and members[0] is cols and p.rows.segmented(lam):
            # batch members have different dead neurons: skip each member's zero columns
            lam_p = lam.new_empty(lam.shape[0], weight.shape[1])
            for b, s, e in p.rows.segments:
                idx = members[1][b]
                if idx.numel() == lam.shape[1]:
                    torch.mm(lam[s:e], weight, out=lam_p[s:e])
                else:
                    torch.mm(lam[s:e][:, idx], _member_rows(node, weight, members, b), out=lam_p[s:e])
        else:
            lam_p = lam @ weight
        if bias is not None:
            p.add_const(lam @ bias)
        p.push(parent, lam_p, pcols)
        return
    lam = full(lam, cols, node.numel, p.rows)
    r = lam.shape[0]
    if p.rows.bidx is not None and isinstance(op, ConvOperator) and fast_transpose(op):
        # rows of several members: one product for all rows (op.transpose's sums, maybe reordered)
        lam_p = conv_transpose_rows(lam.reshape(r, *node.shape), op, tuple(op.in_shape[1:]),
                                    tuple(op.padding)).reshape(r, -1)
    else:
        lam_p = op.transpose(lam.reshape(r, *node.shape)).reshape(r, -1)
    bias = node.flat_bias()
    if bias is not None:
        p.add_const(lam @ bias)
    p.push(parent, lam_p)


def _affine_members(p: BackwardPass, node: Node, lam: torch.Tensor, mc: MemberCols) -> bool:
    """A dense step on member-compact rows (:class:`~.rows.MemberCols`): member ``b``'s rows times its
    own block ``W[idx_b][:, pidx_b]`` (one product per member over its ``k_b`` columns; the padding
    columns of ``lam`` are exact zeros and skipped), into the parent's member-compact layout, or
    concretised at once at a box-like parent. False if not applicable (the caller goes dense)."""
    eng = p.engine
    parent = node.parents[0]
    rows = p.rows
    weight, bias = node.op.operator.weight, node.flat_bias()
    if _concretized_next(p, parent):
        if bias is not None:
            p.add_const(rows.dot(lam, eng.member_bias(node, mc)))
        p.width = max(p.width, parent.numel)  # as push() does: safe()'s error factor depends on it
        low, wid = eng.conc(parent, None, p.K)
        r, n_in = lam.shape[0], weight.shape[1]
        t_low, t_wid = lam.new_empty(r), lam.new_empty(r)
        step = max(2, BOX_BLOCK_BYTES // (8 * n_in))
        buf, buf_neg = lam.new_empty(step + 2, n_in), lam.new_empty(step + 2, n_in)  # reused blocks
        for b, s, e in rows.segments:
            kb = mc.counts[b]
            lam_b, w_b = lam[s:e, :kb], _member_rows_of(node, weight, mc, b)
            for s2 in range(0, e - s, step):
                e2 = e - s if e - s - s2 < step + 2 else s2 + step  # no block of one row
                block, neg = buf[:e2 - s2], buf_neg[:e2 - s2]
                torch.mm(lam_b[s2:e2], w_b, out=block)
                torch.mv(block, low[b], out=t_low[s + s2:s + e2])
                torch.clamp(block, max=0, out=neg)
                torch.mv(neg, wid[b], out=t_wid[s + s2:s + e2])
                if e2 == e - s:
                    break
        p.add_const(t_low, t_wid)
        return True
    pmc = eng.member_cols(parent)
    if pmc is None:
        return False
    bias = eng.member_bias(node, mc)
    if bias is not None:
        p.add_const(rows.dot(lam, bias))
    pmc = pmc.for_rows(rows)
    w = pmc.width
    lam_p = lam.new_zeros(lam.shape[0], w)  # the padding: exact zeros
    blocks = eng.member_blocks(node, mc, pmc)
    counts, pcounts = mc.counts, pmc.counts
    for b, lam_b, out_b in zip(rows.members, lam.split(rows.sizes), lam_p.split(rows.sizes)):
        kb = pcounts[b]
        blk = blocks[b]
        if blk is None:
            blk = eng.member_block(node, mc, pmc, b)
        if kb < w:
            out_b = out_b[:, :kb]
        torch.mm(lam_b[:, :counts[b]], blk, out=out_b)
    p.push(parent, lam_p, pmc)
    return True


def _member_rows_of(node: Node, weight: torch.Tensor, mc: MemberCols, b: int) -> torch.Tensor:
    """``weight[idx_b]`` for member ``b``'s live output neurons (memoised per node while the
    members stand, at most :data:`MEMBER_ROWS_BYTES`)."""
    mc = mc.root
    memo = node.cache.get("member_rows_of")
    if memo is None or memo[0] is not mc:
        memo = node.cache["member_rows_of"] = (mc, {}, [0])
    rows = memo[1].get(b)
    if rows is None:
        rows = weight[mc.index[b, :mc.counts[b]]]
        if memo[2][0] + rows.numel() * rows.element_size() <= MEMBER_ROWS_BYTES:
            memo[1][b] = rows
            memo[2][0] += rows.numel() * rows.element_size()
    return rows


def _concretized_next(p: BackwardPass, parent: Node) -> bool:
    """True if ``parent`` is a box-like node that :meth:`BackwardPass.run` would concretise as soon
    as it is reached, with nothing else left to reach it (no pending node between them)."""
    return (parent.boxlike and not p.symbolic and p.record is None and id(parent) not in p.pending
            and (not p.heap or -p.heap[0][0] <= parent.index))


def _dense_to_box(p: BackwardPass, node: Node, parent: Node, lam: torch.Tensor, cols: torch.Tensor | None,
                  weight: torch.Tensor, bias: torch.Tensor | None, members) -> None:
    """A dense step straight into the box of a box-like parent (the first layer of an MLP): what
    :meth:`BackwardPass.push` and the concretisation at the parent's turn would do.

    One member (or rows too few for per-member segments): the same operations on the same
    tensors, so the same numbers. Several members: each member's rows in blocks of
    :data:`BOX_BLOCK_BYTES`, each block's ``[rows, n_in]`` coefficients concretised while they are
    in the cache (the per-member dot products of :meth:`RowLayout.dot`, row by row). Before, a
    ``[chunk, 784]`` block was written and read back three times, and the row chunks of a batched
    back-substitution were sized by that one wide step (334 rows); :meth:`Engine.chunk_rows` now
    sizes them by the widest node that is not box-like (ERAN 6x100, 100 images in one call:
    6.0-7.3 → 4.3-4.9 ms per image, one thread)."""
    eng = p.engine
    rows = p.rows
    if bias is not None:
        p.add_const(lam @ bias)
    p.width = max(p.width, parent.numel)  # as push() does: safe()'s error factor depends on it
    r, n_in = lam.shape[0], weight.shape[1]
    if rows.bidx is None or not rows.segmented_shape(r, n_in):  # exactly push + concretize
        p.add_const(*p.concretize(parent, lam @ weight, None, scratch=True))
        return
    low, wid = eng.conc(parent, None, p.K)
    per_member = members is not None and members[0] is cols and rows.segmented(lam)
    t_low, t_wid = lam.new_empty(r), lam.new_empty(r)
    step = max(2, BOX_BLOCK_BYTES // (8 * n_in))
    for b, s, e in rows.segments:
        idx = members[1][b] if per_member else None
        if idx is None or idx.numel() == lam.shape[1]:
            lam_b, w_b = lam[s:e], weight
        else:
            lam_b, w_b = lam[s:e][:, idx], _member_rows(node, weight, members, b)
        for s2 in range(0, e - s, step):
            e2 = e - s if e - s - s2 < step + 2 else s2 + step  # no block of one row
            block = lam_b[s2:e2] @ w_b
            torch.mv(block, low[b], out=t_low[s + s2:s + e2])
            torch.mv(block.clamp(max=0), wid[b], out=t_wid[s + s2:s + e2])
            if e2 == e - s:
                break
    p.add_const(t_low, t_wid)


#: bytes of one block of input coefficients in :func:`_dense_to_box` (kept in the cache)
BOX_BLOCK_BYTES = 1 << 19
#: at most this many bytes of per-member weight rows are kept (:func:`_member_rows`)
MEMBER_ROWS_BYTES = 64 << 20


def _member_rows(node: Node, weight: torch.Tensor, members, b: int) -> torch.Tensor:
    """``weight[idx_b]`` for batch member ``b``'s live neurons (memoised per node while the
    members and the weight block stand; every backward chunk needs the same rows)."""
    idx = members[1][b]
    memo = node.cache.get("member_rows")
    if memo is None or memo[0] is not members or memo[1] is not weight:
        memo = node.cache["member_rows"] = (members, weight, {}, [0])
    rows = memo[2].get(b)
    if rows is None:
        rows = weight[idx]
        if memo[3][0] + rows.numel() * rows.element_size() <= MEMBER_ROWS_BYTES:
            memo[2][b] = rows
            memo[3][0] += rows.numel() * rows.element_size()
    return rows


def _affine_patches(p: BackwardPass, node: Node, lam: Patches, paid: bool) -> None:
    """A convolution or element-wise affine map applied to windows (:mod:`.patches`)."""
    eng = p.engine
    op = node.op.operator
    win = Windows(lam, p.rows.bidx)
    if not paid:
        p.err = p.err + lam.abs_dot(win.take(eng.err_weight(node, None, p.K)))
    bias = node.flat_bias()
    if bias is not None:
        p.add_const(lam.dot(win.take(bias)))
    if isinstance(op, ConvOperator):
        out = conv_step(lam, op, many=p.rows.bidx is not None)
    else:
        scale = node.cache.get("scale_full")
        if scale is None:
            scale = node.cache["scale_full"] = torch.broadcast_to(op.scale, node.shape).reshape(-1).contiguous()
        out = Patches(lam.data * win.take(scale), lam.y0, lam.x0, lam.grid)
    p.push(node.parents[0], out)


def _act_patches(p: BackwardPass, node: Node, lam: Patches, fuse: bool) -> None:
    """The activation step on windows: the per-member vectors are gathered at each row's window (one
    gather for all of them) and the step's sums are two batched products over the windows."""
    eng = p.engine
    win = Windows(lam, p.rows.bidx)
    # columns: 0 ls, 1 ds, 2 a, 3 l', 4 −c, 5 do, 6 w', 7 lo (see Engine.patch_vectors)
    M = eng.patch_vectors(node, p.K)
    R = lam.data.shape[0]
    data = lam.data.reshape(R, 1, -1)
    neg = data.clamp(max=0)
    if lam.kernel is not None and lam.kernel.op is not None and p.rows.bidx is None and R >= KERNEL_ROWS_MIN:
        # rows ±W[c] of a convolution's unit rows: the sums are one convolution of the vectors
        td, tn = kernel_dots(lam, M, tuple(range(2, 8)))  # columns 2-7 (0, 1 are only gathered below)
        td, tn = F.pad(td, (2, 0)), F.pad(tn, (2, 0))
        G = win.take_stack(M[:, :2])
    else:
        G = win.take_stack(M)
        td = torch.bmm(data, G.transpose(1, 2)).reshape(R, -1)
        tn = torch.bmm(neg, G.transpose(1, 2)).reshape(R, -1)
    p.err = p.err + (td[:, 2] + tn[:, 4])
    value = p.safe(p.const + td[:, 3] + tn[:, 6]) if fuse else None
    p.add_const(tn[:, 5] + td[:, 7])
    out = (data[:, 0] * G[:, 0] + neg[:, 0] * G[:, 1]).reshape(lam.data.shape)
    p.push(node.parents[0], Patches(out, lam.y0, lam.x0, lam.grid), paid=eng.prepaid(node))
    if value is not None:
        p.update_best(value)


def _act(p: BackwardPass, node: Node, lam: torch.Tensor, cols: torch.Tensor | None, fuse: bool,
         paid: bool) -> None:
    eng = p.engine
    params = p.params.at(node) if p.params is not None else None
    if params is not None:
        if params.tangent is not None:
            _tangent_params(p, node, lam, cols, params.tangent)
        else:
            _act_params(p, node, lam, cols, params)
        return
    if isinstance(lam, Patches):
        if eng.prune(node) is None:
            _act_patches(p, node, lam, fuse)
            return
        lam = lam.dense()
    pr = eng.prune(node)
    mc = eng.member_cols(node) if p.rows.bidx is not None and not torch.is_grad_enabled() else None
    if mc is not None:  # several members: each member's rows on its own live neurons only
        if not (isinstance(cols, MemberCols) and cols.root is mc):
            mc = mc.for_rows(p.rows)
            lam = mc.rows_from(full(lam, cols, node.numel, p.rows) if isinstance(cols, MemberCols) else lam,
                               None if isinstance(cols, MemberCols) else cols, p.rows)
        else:
            mc = cols
        cols = mc
        lines = eng.member_lines(node, mc)
    elif pr is not None:
        if cols is not pr[0]:
            lam = full(lam, cols, node.numel, p.rows)[:, pr[0]]
            cols = pr[0]
        lines = pr[1]
    else:
        lam = full(lam, cols, node.numel, p.rows)
        cols = None
        lines = eng.lines(node)
    rows = p.rows
    if isinstance(cols, MemberCols) and rows.segmented(lam):
        # the same operations per member, on its own k_b columns only (the padding stays zero)
        views = _member_act_views(eng, node, cols, p.K)
        t = lam.new_empty(lam.shape[0], 3)
        lam_p = torch.zeros_like(lam)  # the padding: exact zeros
        w = cols.width
        for b, lam_b, t_b, out_b in zip(rows.members, lam.split(rows.sizes), t.split(rows.sizes),
                                        lam_p.split(rows.sizes)):
            kb, P_b, Q_b, ls_b, ds_b = views[b]
            if kb < w:
                lam_b, out_b = lam_b[:, :kb], out_b[:, :kb]
            neg_b = lam_b.clamp(max=0)
            torch.addmm(torch.mm(lam_b, P_b), neg_b, Q_b, out=t_b)
            torch.mul(lam_b, ls_b, out=out_b)
            out_b.addcmul_(neg_b, ds_b)
        t_err, t_const, t_conc = t.unbind(1)
        p.err = p.err + t_err
        value = p.safe(p.const + t_conc) if fuse else None
    else:
        P, Q = eng.act_vectors(node, cols, p.K)
        neg = lam.clamp(max=0)
        # columns: error increment, constant term, concretisation at this node's own box
        t_err, t_const, t_conc = rows.pair_dots(lam, P, neg, Q).unbind(1)
        p.err = p.err + t_err
        value = p.safe(p.const + t_conc) if fuse else None  # min of λ·y over y's own box
        # λ_z = λ⁺·ls + λ⁻·(ls + ds) = λ·ls + λ⁻·ds;  c += λ·lo + λ⁻·do
        lam_p = rows.scale(lam, lines.ls, (neg, lines.ds))
    p.add_const(t_const)
    p.push(node.parents[0], lam_p, cols, paid=eng.prepaid(node))
    if value is not None:
        p.update_best(value)


def _member_act_views(eng: Any, node: Node, mc: MemberCols, K: int) -> list:
    """Per member ``b``: ``(k_b, P_b, Q_b, ls_b, ds_b)``, the activation step's vectors on its own
    ``k_b`` neurons (views of the full-width member-compact vectors; memoised while they stand)."""
    root = mc.root
    P, Q = eng.act_vectors(node, root, K)
    memo = node.cache.get("act_views")
    if memo is None or memo[0] is not P:
        ln = eng.member_lines(node, root)
        views = [(k, P[b, :k], Q[b, :k], ln.ls[b, :k], ln.ds[b, :k]) for b, k in enumerate(root.counts)]
        memo = node.cache["act_views"] = (P, views)
    return memo[1]


def _act_params(p: BackwardPass, node: Node, lam: torch.Tensor, cols: torch.Tensor | None, prm: Any) -> None:
    """ReLU step with per-row slopes α, split multipliers β and constraint multipliers μ
    (:mod:`.params`); every parameter is projected to its sound range here."""
    eng = p.engine
    rows = p.rows
    lam = full(lam, cols, node.numel, p.rows)
    pre = node.parents[0]
    if prm.mu is not None:  # λ_y += μ A_post (before relaxing y)
        lam = lam + prm.mu[0].post_term(prm.mu[1], rows)
    if p.record is not None:
        p.record[id(node)] = lam.detach()
    us, uo = eng.upper_line(node)
    neg = lam.clamp(max=0)
    if prm.alpha is None:
        lam_p = rows.scale(lam - neg, eng.lines(node).ls) + rows.scale(neg, us)
    else:
        lam_p = (lam - neg) * prm.alpha.clamp(0, 1) + rows.scale(neg, us)
    p.add_const(rows.dot(neg, uo))
    if prm.beta is not None:
        sign, beta = prm.beta
        lam_p = lam_p - rows.scale(beta.clamp(min=0), sign)
    if prm.mu is not None:
        cons, mu = prm.mu
        lam_p = lam_p + cons.pre_term(mu, rows)
        p.add_const(-cons.const_term(mu, rows))
        if p.account:
            p.err = p.err + cons.err_term(mu, rows, eng, node, p.K)
    # |λ_z − fl(λ_z)| ≤ γ·(|λ|·max(α, us) + |β|) with α, us ∈ [0, 1]; plus the λ⁻·uo dot
    p.add_err(lam, eng.err_weight(node, None, p.K, params=True))
    if prm.beta is not None:
        p.add_err(prm.beta[1].clamp(min=0), eng.magnitude(pre, None) * (4 * gam(4, lam.dtype)))
    p.push(pre, lam_p)


def _tangent_params(p: BackwardPass, node: Node, lam: torch.Tensor, cols: torch.Tensor | None,
                    t: torch.Tensor) -> None:
    """Sigmoid/tanh step with per-row tangent points ``t`` ``[R, 2n]`` (:mod:`.tangent`): each row has
    its own lines ``ls·z + lo ≤ y ≤ us·z + uo``; ``λ_z = λ⁺·ls + λ⁻·us``, ``c += λ⁺·lo + λ⁻·uo``."""
    eng = p.engine
    rows = p.rows
    if isinstance(lam, Patches):
        lam = lam.dense()
    lam = full(lam, cols, node.numel, p.rows)
    R, n = lam.shape
    ls, lo, us, uo = eng.tangent_family(node).lines(lambda x: rows.gather(x, R), t[:, :n], t[:, n:])
    neg = lam.clamp(max=0)
    pos = lam - neg
    p.add_const((pos * lo + neg * uo).sum(1))
    # |λ_z − fl(λ_z)| ≤ 2u·|λ|·(|ls| + |us|) (one of λ⁺, λ⁻ is 0), times max|z|; the constant is a dot
    # product of length n added to a sum of at most K terms (as in Engine._err_weight)
    dt = lam.dtype
    k = n + 4
    pmag = rows.gather(eng.magnitude(node.parents[0], None), R)
    w = torch.add((ls.abs() + us.abs()) * pmag * (2 * gam(k + 8, dt)), lo.abs() + uo.abs(),
                  alpha=2 * gam(k + 8 + p.K, dt)).add((k + p.K) * floor(dt))
    p.err = p.err + (lam.abs() * w).sum(1)
    p.push(node.parents[0], pos * ls + neg * us)


def _maxpool(p: BackwardPass, node: Node, lam: torch.Tensor, cols: torch.Tensor | None, fuse: bool,
             paid: bool) -> None:
    eng = p.engine
    lam = full(lam, cols, node.numel, p.rows)
    pl = eng.pool(node)
    r = lam.shape[0]
    index, exact = p.rows.gather(pl.index, r), p.rows.gather(pl.exact, r)
    neg = lam.clamp(max=0)
    # y ≥ x_j* always; y ≤ x_j* where exact, else y ≤ max u (a constant).
    coef = torch.where(exact, lam, lam - neg)
    loose = torch.where(exact, torch.zeros_like(neg), neg)
    p.add_err(lam, eng.err_weight(node, None, p.K))
    p.add_const(p.rows.dot(loose, pl.upper))
    lam_p = lam.new_zeros(r, pl.in_numel).scatter_add(1, index, coef)
    p.push(node.parents[0], lam_p)


def _reshape(p: BackwardPass, node: Node, lam: torch.Tensor, cols: torch.Tensor | None, fuse: bool,
             paid: bool) -> None:
    p.push(node.parents[0], lam.dense() if isinstance(lam, Patches) else lam, cols)


def _add(p: BackwardPass, node: Node, lam: torch.Tensor, cols: torch.Tensor | None, fuse: bool,
         paid: bool) -> None:
    p.push(node.parents[0], lam, cols)
    p.push(node.parents[1], lam, cols)


#: op type → backward rule ``rule(pass, node, λ, cols, fuse, paid)``
RULES = {Affine: _affine, Relu: _act, Sigmoid: _act, Tanh: _act, MaxPool2d: _maxpool, Reshape: _reshape,
         Add: _add}
