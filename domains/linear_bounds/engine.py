"""The bound engine: concrete bounds of nodes by back-substitution, memoised per node.

:class:`Engine` is DeepPoly's schedule (Singh et al., POPL 2019) over the nodes of
:mod:`~absint.domains.linear_bounds.graph`, for any DAG. The concrete bounds of a node come in
precision levels, computed on demand and memoised in the node (they only ever tighten):

* level 0 — interval arithmetic from the parents' bounds (the Box safety net);
* level 1 — for an input of a ReLU: back-substituted until the sign of each neuron is known
  (rows stop early; neurons whose sign is already known are not back-substituted);
* level 2 — full back-substitution of every neuron to the input, intersected with level 0.

An activation's relaxation is fixed from its input's bounds the first time it is needed
(:meth:`Engine.relax`), with the lower slopes chosen by ``EngineOptions.relu_lower``; optimised
relaxations (α, β, μ) are passed to :meth:`Engine.run_rows` instead (:mod:`.params`).

Every number is rigorous in real arithmetic (issue 15; :mod:`.backward` explains the error terms):
interval bounds add ``e_v`` (the same error weight the backward step uses), concretisation uses
widened bound vectors, and non-finite results become trivial bounds.
"""
from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

import torch

from absint.ir import Add, Affine, Input, MaxPool2d, Relu, Reshape, Sigmoid, Tanh
from absint.linear import ConvOperator, DenseOperator, DiagonalOperator, LinearOperator, PermuteOperator, numel
from absint.domains.relaxations import ReluLowerMode
from absint.domains.linear_bounds.backward import BackwardPass
from absint.domains.linear_bounds.graph import Node
from absint.domains.linear_bounds.patches import unit_patches
from absint.domains.linear_bounds.relax import (Lines, floor, gam, pool_lines, relu_lines, relu_upper, s_shaped_bounds,
                                                s_shaped_lines, safe_down, safe_up, unit, up)
from absint.domains.linear_bounds.rows import MemberCols, RowLayout
from absint.domains.linear_bounds.tangent import TangentFamily

log = logging.getLogger(__name__)

__all__ = ["Engine", "EngineOptions", "inner_length"]


@dataclass(frozen=True)
class EngineOptions:
    """How the engine computes bounds (DeepPoly's options; see :class:`~absint.domains.deeppoly.DeepPolyOptions`).

    ``account_rounding=False`` drops the rounding-error term of back-substituted bounds: the values
    are then estimates, not proofs, for optimisation steps whose chosen parameters are bounded again
    by an accounting engine (``bab``'s float32 steps, :mod:`absint.bab.beta`)."""

    relu_lower: ReluLowerMode = "area"
    early_stop: bool = True
    keep_best: bool = False
    memory_mb: float = 256.0
    max_rows: int | None = None
    account_rounding: bool = True


def select_cols(t: torch.Tensor, cols: "torch.Tensor | MemberCols | None") -> torch.Tensor:
    """Per-member vectors ``t`` (``[B, n(, c)]``) on the columns ``cols``: all (None), a subset shared by
    every member (an index), or each member's own (:class:`~.rows.MemberCols`, zero-padded)."""
    if cols is None:
        return t
    if isinstance(cols, MemberCols):
        return cols.take(t)
    return t[:, cols]


_OPERATOR_MEMO: "weakref.WeakKeyDictionary[LinearOperator, dict]" = weakref.WeakKeyDictionary()


def _operator_memo(op: LinearOperator, key: str, make):
    """A quantity derived from an operator alone (e.g. ``|A|``), computed once per operator object
    (operators are immutable; the DeepPoly domain makes new nodes per image but keeps the graph's)."""
    memo = _OPERATOR_MEMO.get(op)
    if memo is None:
        memo = _OPERATOR_MEMO[op] = {}
    if key not in memo:
        memo[key] = make()
    return memo[key]


def inner_length(op: LinearOperator) -> int:
    """The longest dot product computing ``op`` or its adjoint (for the rounding error γ_n)."""
    if isinstance(op, DenseOperator):
        return int(max(op.weight.shape))
    if isinstance(op, ConvOperator):
        k = int(op.weight.shape[2] * op.weight.shape[3])
        return int(max(op.weight.shape[0], op.weight.shape[1] * op.groups)) * k
    if isinstance(op, (DiagonalOperator, PermuteOperator)):
        return 1
    return numel(op.in_shape) + numel(op.out_shape)


class Engine:
    """Bounds of nodes (see the module docstring); one instance serves any number of graphs."""

    #: neurons per chunk of window rows (:mod:`.patches`) when several members are bounded together:
    #: the activation step gathers 8 vectors per row and window (``[2·chunk, 8, C·h·w]``), and for
    #: ~100 members at once that block left the cache (ERAN ConvSmall, 100 images in one call:
    #: 4096 neurons per chunk 16.5 ms per image, 256 neurons 12.5 ms; one thread). One member keeps
    #: its rows together (4096), so single-region bounds are unchanged.
    PATCH_CHUNK_BATCHED = 256

    def __init__(self, options: EngineOptions | None = None, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float64) -> None:
        self.options = options or EngineOptions()
        self.device = torch.device(device)
        self.dtype = dtype
        #: rows of convolution outputs are back-substituted as local windows (:mod:`.patches`)
        self.patches = True

    # -- concrete bounds ------------------------------------------------------------------------
    @staticmethod
    def level(node: Node) -> int:
        """Precision level of the memoised bounds (-1: none yet)."""
        return int(node.cache.get("level", -1))

    @staticmethod
    def cached(node: Node) -> tuple[torch.Tensor, torch.Tensor] | None:
        c = node.cache
        return (c["lower"], c["upper"]) if "lower" in c else None

    @staticmethod
    def store(node: Node, level: int, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Memoise sound bounds ``[B, *shape]`` (intersected with any already known)."""
        c = node.cache
        if "lower" in c:  # both are sound: keep the intersection
            lo, hi = torch.maximum(lo, c["lower"]), torch.minimum(hi, c["upper"])
            level = max(level, int(c["level"]))
        c.update(level=level, lower=lo, upper=hi)

    def bounds(self, node: Node, level: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        """Concrete bounds ``[B, *shape]`` of ``node`` at precision ``level`` or better (memoised)."""
        if self.level(node) >= level:
            return node.cache["lower"], node.cache["upper"]
        op = node.op
        if isinstance(op, (Affine, Add)):
            ilo, ihi = self.interval(node)
            exact = isinstance(op, Affine) and node.parents[0].boxlike
            if exact or level == 0:
                self.store(node, 2 if exact else 0, ilo, ihi)
            else:
                self.store(node, 0, ilo, ihi)
                lo, hi = self.backsub_bounds(node, level)
                self.store(node, level, lo, hi)
        elif isinstance(op, (Relu, Sigmoid, Tanh, MaxPool2d)):
            self.relax(node)
            if self.level(node) < level:  # relaxed earlier from coarser bounds: redo the image
                plo, phi = self.bounds(node.parents[0], level)
                self.store(node, level, *self.image(node, plo, phi))
        elif isinstance(op, Reshape):
            plo, phi = self.bounds(node.parents[0], level)
            self.store(node, max(level, self.level(node.parents[0])), plo.reshape(node.batch, *node.shape),
                       phi.reshape(node.batch, *node.shape))
        else:  # the input's bounds are stored when it is created
            raise RuntimeError(f"{node!r} has no bounds")
        return node.cache["lower"], node.cache["upper"]

    def image(self, node: Node, plo: torch.Tensor, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounds of a monotone activation's output from its input's bounds (real-sound)."""
        op = node.op
        if isinstance(op, Relu):
            return plo.clamp(min=0), phi.clamp(min=0)
        if isinstance(op, MaxPool2d):
            _, lo, hi = pool_lines(plo, phi, op.kernel, op.stride, op.padding)
            return lo, hi
        return s_shaped_bounds("sigmoid" if isinstance(op, Sigmoid) else "tanh", plo, phi)

    def interval(self, node: Node) -> tuple[torch.Tensor, torch.Tensor]:
        """Interval propagation from the parents' bounds, widened by the rounding error weight:
        ``c ± (r + e)`` with ``c = A·mid + b``, ``r = |A|·rad`` (``rad`` encloses the parent's box
        around the float ``mid``) and ``e`` the step's error weight (:meth:`err_weight`)."""
        b = node.batch
        if isinstance(node.op, Add):
            (l1, u1), (l2, u2) = (self.bounds(p, 0) if self.level(p) < 0 else self.cached(p) for p in node.parents)
            return safe_down(l1 + l2), safe_up(u1 + u2)
        parent = node.parents[0]
        if self.level(parent) < 0:
            self.bounds(parent, 0)
        lo, hi = self.cached(parent)
        lo, hi = lo.reshape(b, -1), hi.reshape(b, -1)
        mag = self.magnitude(parent, None)
        mid = (hi + lo) * 0.5
        u = unit(lo.dtype)
        # |fl(mid) − mid| ≤ u·mag and fl(hi − lo) ≥ (hi − lo)(1 − u): this radius encloses the box
        rad = torch.add((hi - lo) * (0.5 + 4 * u), mag, alpha=4 * u).add_(floor(lo.dtype))
        op = node.op.operator
        c = op.forward(mid.reshape(b, *parent.shape)).reshape(b, -1)
        bias = node.flat_bias()
        if bias is not None:
            c = c + bias
        r = self.abs_op(node).forward(rad.reshape(b, *parent.shape)).reshape(b, -1)
        re = r + self.err_weight(node, None, self.term_budget(node))
        return safe_down(c - re).reshape(b, *node.shape), safe_up(c + re).reshape(b, *node.shape)

    @staticmethod
    def abs_op(node: Node) -> LinearOperator:
        """``|A|`` of an affine node (memoised with the operator, so shared by every node using it)."""
        a = node.cache.get("abs_op")
        if a is None:
            a = node.cache["abs_op"] = _operator_memo(node.op.operator, "abs", node.op.operator.abs)
        return a

    # -- per-node vectors for rigorous rounding -----------------------------------------------
    def magnitude(self, node: Node, cols: torch.Tensor | None) -> torch.Tensor:
        """``max(|l|, |u|) ≥ |x|`` ``[B, k]`` for the neurons ``cols`` (all if None) of ``node`` (exact)."""
        if self.level(node) < 0:
            self.bounds(node, 0)
        c = node.cache
        frozen = c.get("mag_frozen")
        if frozen is not None:
            return select_cols(frozen, cols)
        memo = c.get("mag")
        if memo is None or memo[0] is not c["lower"]:
            lo, hi = c["lower"].reshape(node.batch, -1), c["upper"].reshape(node.batch, -1)
            memo = c["mag"] = (c["lower"], torch.maximum(lo.abs(), hi.abs()).detach())
        return select_cols(memo[1], cols)

    def freeze_magnitude(self, node: Node) -> None:
        """Keep the current magnitude (and so the rounding-error weights derived from it) while the
        node's bounds change, e.g. during slope optimisation; valid as long as the bounds only
        tighten (the optimisers intersect with the bounds they started from)."""
        node.cache["mag_frozen"] = self.magnitude(node, None)

    def conc(self, node: Node, cols: torch.Tensor | None, K: int = 64) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Vectors ``(l', w')`` (``[B, k]``) with ``λ·l' + λ⁻·w'`` a rigorous lower bound of
        ``min λ·x = λ·l + λ⁻·(u − l)`` over the node's memoised box — the float errors of both dot
        products, of the vectors themselves and of adding the result to a sum of at most ``K``
        terms included (``l' = l − e``, ``w' = (u − l) + 2e``, ``e = 2γ_{n+K+4}·(max|x| + (u − l))``);
        None if the node has no bounds yet."""
        c = node.cache
        if "lower" not in c:
            return None
        memo = c.get("conc")
        if memo is None or memo[0] is not c["lower"] or memo[1] != K:
            lo, hi = c["lower"].reshape(node.batch, -1), c["upper"].reshape(node.batch, -1)
            w = hi - lo
            n = node.numel + K + 4
            e = torch.add(self.magnitude(node, None), w).mul_(2 * gam(n, lo.dtype)).add_(n * floor(lo.dtype))
            memo = c["conc"] = (c["lower"], K, lo - e, torch.add(w, e, alpha=2), {})
        if cols is None:
            return memo[2], memo[3]
        sub = memo[4]
        if sub.get("cols") is not cols:
            sub.update(cols=cols, v=(select_cols(memo[2], cols), select_cols(memo[3], cols)))
        return sub["v"]

    @staticmethod
    def term_budget(node: Node) -> int:
        """A bound on the number of terms a backward pass from ``node`` adds to its constant
        (≤ 2 per node it visits plus 2 per frontier node), rounded up to a power of two (≥ 64)."""
        need, K = 4 * len(node.ancestor_ids()) + 8, 64
        while K < need:
            K *= 2
        return K

    def err_weight(self, node: Node, cols: torch.Tensor | None, K: int = 64, params: bool = False) -> torch.Tensor:
        """``e_v`` ``[B, k]``: a step through ``node`` with coefficients ``λ`` errs by at most ``|λ|·e_v``
        in real terms on the box, the rounding of adding its constant term to a sum of at most ``K``
        terms included. ``params``: for the ReLU step with per-row α, β (:mod:`.params`)."""
        parent = node.parents[0]
        pmag = self.magnitude(parent, None)
        key = ("errp" if params else "err", K)
        memo = node.cache.get(key)
        if memo is None or memo[0] is not pmag:
            with torch.no_grad():
                memo = node.cache[key] = (pmag, self._err_weight(node, pmag, K, params), {})
        if cols is None:
            return memo[1]
        sub = memo[2]
        if sub.get("cols") is not cols:
            sub.update(cols=cols, v=select_cols(memo[1], cols))
        return sub["v"]

    def _err_weight(self, node: Node, pmag: torch.Tensor, K: int, params: bool) -> torch.Tensor:
        """``2γ_{n+8}·(coefficient part) + 2γ_{n+8+K}·(constant part) + (n + K)·floor`` of one step
        (see :mod:`.backward`); the ``+8`` in ``γ`` also covers the few roundings of computing this
        vector and of sums of such vectors (relative ``≤ 8u ≪ 8/n``)."""
        op, b = node.op, node.batch
        dt = pmag.dtype
        const = None
        if isinstance(op, Affine):
            n = inner_length(op.operator) + 2
            main = self.abs_op(node).forward(pmag.reshape(b, *node.parents[0].shape)).reshape(b, -1)
            bias = node.flat_bias()
            const = None if bias is None else bias.abs()
        elif isinstance(op, MaxPool2d):
            n = int(op.kernel[0] * op.kernel[1]) + 2
            pl = self.pool(node)
            main, const = pmag.gather(1, pl.index), pl.upper.abs()
        elif params:  # α ∈ [0, 1], chord slope ∈ [0, 1]: |λ_z| ≤ |λ|; plus the λ⁻·uo dot
            n = node.numel + 4
            main, const = 2 * pmag, self.upper_line(node)[1].abs()
        else:
            n = node.numel + 3
            ln = self.lines(node)
            main = (ln.ls.abs() + ln.ds.abs()) * pmag
            const = ln.do.abs() if ln.lo is None else ln.do.abs() + ln.lo.abs()
        w = main * (2 * gam(n + 8, dt))
        if const is not None:
            w = torch.add(w, const, alpha=2 * gam(n + 8 + K, dt))
        return w.add_((n + K) * floor(dt))

    @staticmethod
    def prepaid(node: Node) -> bool:
        """True if an activation step through ``node`` pays the error of its input's affine step."""
        return isinstance(node.parents[0].op, Affine)

    def act_vectors(self, node: Node, cols: torch.Tensor | None, K: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member matrices ``P``, ``Q`` (``[B, k, 3]``) for one activation step with fixed lines,
        so that the step needs only ``λ @ P + λ⁻ @ Q`` (:meth:`RowLayout.pair_dots`), whose columns are

        0. the error increment ``λ·a − λ⁻·c``: this step's error and, when :meth:`prepaid`, the next
           affine step's (``|λ_z| ≤ (|λ||ls| + |λ⁻||ds|)(1 + 2u)``; ``|λ| = λ − 2λ⁻``);
        1. the constant term ``λ⁻·do`` (+ ``λ·lo``) of the lines;
        2. ``λ·l' + λ⁻·w'``: the concretisation at the node's own box (:meth:`conc`)."""
        fast = node.cache.get("act_vec_last")  # the last answer, valid while both nodes' bounds stand
        pc, c_ = node.parents[0].cache, node.cache
        if fast is not None and fast[0] is cols and fast[1] == K and fast[2] is c_.get("lower") \
                and fast[3] is (pc.get("mag_frozen") if "mag_frozen" in pc else pc.get("lower")):
            return fast[4]
        out = self._act_vectors(node, cols, K)
        c_["act_vec_last"] = (cols, K, c_.get("lower"), pc.get("mag_frozen") if "mag_frozen" in pc else pc.get("lower"),
                              out)
        return out

    def _act_vectors(self, node: Node, cols: torch.Tensor | None, K: int) -> tuple[torch.Tensor, torch.Tensor]:
        pmag = self.magnitude(node.parents[0], None)
        low, wid = self.conc(node, None, K)
        key = ("act_vec", K)
        memo = node.cache.get(key)
        if memo is None or memo[0] is not pmag or memo[1] is not low:
            a = self.err_weight(node, None, K)
            ln = self.lines(node)
            c = 2 * a
            if self.prepaid(node):  # (1 + 2u) and these few roundings are within the weights' slack
                ez = self.err_weight(node.parents[0], None, K)
                a = torch.addcmul(a, ln.ls.abs(), ez)
                c = torch.addcmul(2 * a, ln.ds.abs(), ez)
            lo = torch.zeros_like(a) if ln.lo is None else ln.lo
            P = torch.stack([a, lo, low], 2)
            Q = torch.stack([-c, ln.do, wid], 2)
            memo = node.cache[key] = (pmag, low, P, Q, {})
        if cols is None:
            return memo[2], memo[3]
        sub = memo[4]
        if sub.get("cols") is not cols:
            if isinstance(cols, MemberCols):  # views of the memoised full-width columns (rows contiguous)
                sub.update(cols=cols, v=(cols.take(memo[2]), cols.take(memo[3])))
            else:
                sub.update(cols=cols, v=(memo[2][:, cols].contiguous(), memo[3][:, cols].contiguous()))
        return sub["v"]

    def patch_vectors(self, node: Node, K: int) -> torch.Tensor:
        """The activation step's per-member vectors stacked ``[B, 8, n]`` for windows
        (:mod:`.patches`): ``ls, ds, a, l', −c, do, w', lo`` (:meth:`act_vectors`, the lines)."""
        P, Q = self.act_vectors(node, None, K)
        memo = node.cache.get("patch_vec")
        if memo is None or memo[0] is not P:
            ln = self.lines(node)
            lo = torch.zeros_like(ln.ls) if ln.lo is None else ln.lo
            M = torch.stack([ln.ls, ln.ds, P[:, :, 0], P[:, :, 2], Q[:, :, 0], Q[:, :, 1], Q[:, :, 2], lo], 1)
            memo = node.cache["patch_vec"] = (P, M.contiguous())
        return memo[1]

    # -- relaxations ----------------------------------------------------------------------------
    def relax(self, node: Node, level: int | None = None) -> None:
        """Fix the relaxation of an activation / max-pool node from its input's bounds."""
        if "relaxed" in node.cache:
            return
        op = node.op
        parent = node.parents[0]
        if level is None:
            level = 1 if (isinstance(op, Relu) and self.options.early_stop) else 2
        if not isinstance(op, Relu):
            level = 2
        l, u = self.bounds(parent, level)
        b = node.batch
        if isinstance(op, MaxPool2d):
            pl, lo, hi = pool_lines(l, u, op.kernel, op.stride, op.padding)
            node.cache["pool"] = pl
            self.store(node, 2, lo, hi)
        else:
            lf, uf = l.reshape(b, -1), u.reshape(b, -1)
            if isinstance(op, Relu):
                lines = relu_lines(lf, uf, self.options.relu_lower)
                self._prune(node, parent, uf, lines)
            else:
                lines = s_shaped_lines("sigmoid" if isinstance(op, Sigmoid) else "tanh", lf, uf)
            node.cache["lines"] = lines
            self.store(node, max(level, self.level(parent)), *self.image(node, l, u))
        node.cache["relaxed"] = True

    def _prune(self, node: Node, parent: Node, uf: torch.Tensor, lines: Lines) -> None:
        """Only neurons that are not stably inactive in some member are carried (dense inputs); with
        several members, also each member's own live neurons (:class:`~.rows.MemberCols`)."""
        if not (isinstance(parent.op, Affine) and isinstance(parent.op.operator, DenseOperator)):
            return
        b = node.batch
        live = uf > 0
        alive = live.any(0).nonzero().squeeze(1)
        if alive.numel() < node.numel or (b > 1 and not bool(live.all())):
            node.cache["prune"] = (alive, lines.select(alive))
            if b > 1:  # per batch member: positions (within alive) of its own live neurons
                parent.cache["members"] = (alive, [row.nonzero().squeeze(1) for row in live[:, alive]])
                node.cache["member_cols"] = MemberCols(live, alive)

    def lines(self, node: Node) -> Lines:
        self.relax(node)
        return node.cache["lines"]

    def pool(self, node: Node):
        self.relax(node)
        return node.cache["pool"]

    def prune(self, node: Node):
        """``(alive, lines of alive)`` of a ReLU node, or None."""
        self.relax(node)
        return node.cache.get("prune")

    def alive(self, node: Node) -> torch.Tensor | None:
        """The carried neurons of ``node`` if it is a pruned ReLU (else None: all)."""
        if isinstance(node.op, Relu) and "relaxed" in node.cache:
            pr = node.cache.get("prune")
            return None if pr is None else pr[0]
        return None

    @staticmethod
    def members(node: Node):
        return node.cache.get("members")

    def member_cols(self, node: Node) -> MemberCols | None:
        """Each member's live neurons of a pruned ReLU bounded for several members (else None)."""
        if isinstance(node.op, Relu) and "relaxed" in node.cache:
            return node.cache.get("member_cols")
        return None

    def member_lines(self, node: Node, mc: MemberCols) -> Lines:
        """The relaxation lines of a ReLU on each member's own neurons ``[B, k]`` (memoised)."""
        ln = self.lines(node)
        return Lines(mc.take(ln.ls), None if ln.lo is None else mc.take(ln.lo), mc.take(ln.ds), mc.take(ln.do))

    #: at most this many bytes of per-member weight blocks (:meth:`member_block`) per node
    MEMBER_BLOCK_BYTES = 64 << 20

    def member_blocks(self, node: Node, mc: MemberCols, pmc: MemberCols) -> list:
        """Per-member weight blocks ``W[idx_b][:, pidx_b]`` ``[k_b, k'_b]`` of a dense node from its
        output neurons ``mc`` to its input neurons ``pmc`` (``None`` where not built yet:
        :meth:`member_block`), memoised while both stand."""
        mc, pmc = mc.root, pmc.root
        memo = node.cache.get("member_block")
        if memo is None or memo[0] is not mc or memo[1] is not pmc:
            memo = node.cache["member_block"] = (mc, pmc, [None] * mc.batch, [0])
        return memo[2]

    def member_block(self, node: Node, mc: MemberCols, pmc: MemberCols, b: int) -> torch.Tensor:
        """Member ``b``'s block of :meth:`member_blocks` (built on first use; at most
        :data:`MEMBER_BLOCK_BYTES` per node are kept)."""
        blocks = self.member_blocks(node, mc, pmc)
        blk = blocks[b]
        if blk is None:
            mc, pmc = mc.root, pmc.root
            w = node.op.operator.weight
            blk = w.index_select(0, mc.index[b, :mc.counts[b]]).index_select(1, pmc.index[b, :pmc.counts[b]])
            used = node.cache["member_block"][3]
            size = blk.numel() * blk.element_size()
            if used[0] + size <= self.MEMBER_BLOCK_BYTES:
                blocks[b] = blk
                used[0] += size
        return blk

    def member_bias(self, node: Node, mc: MemberCols) -> torch.Tensor | None:
        """The bias of a dense node on each member's own output neurons ``[B, k]`` (None: no bias)."""
        bias = node.flat_bias()
        if bias is None:
            return None
        memo = node.cache.get("member_bias")
        if memo is None or memo[0] is not mc.root:
            memo = node.cache["member_bias"] = (mc.root, mc.root.take(bias.unsqueeze(0).expand(mc.batch, -1)))
        return memo[1][:, :mc.width]

    @staticmethod
    def signed_padded(node: Node) -> torch.Tensor:
        """``[W; −W]`` of a dense node with a zero column appended (the sentinel of
        :class:`~.rows.MemberCols`; memoised with the operator): exact rows."""
        w = node.op.operator.weight
        return _operator_memo(node.op.operator, "signed_padded",
                              lambda: torch.nn.functional.pad(torch.cat([w, -w]), (0, 1)).contiguous())

    def upper_line(self, node: Node) -> tuple[torch.Tensor, torch.Tensor]:
        """ReLU's real-sound upper line ``(slope, offset)`` ``[B, n]`` from its input's current bounds."""
        parent = node.parents[0]
        l, u = self.cached(parent) or self.bounds(parent, 2)
        memo = node.cache.get("upper_line")
        if memo is None or memo[0] is not l:
            b = node.batch
            memo = node.cache["upper_line"] = (l, *relu_upper(l.reshape(b, -1), u.reshape(b, -1)))
        return memo[1], memo[2]

    def tangent_family(self, node: Node) -> TangentFamily:
        """A sigmoid/tanh node's ranges of tangent points (:mod:`.tangent`) for its input's current
        bounds (memoised while they stand)."""
        parent = node.parents[0]
        l, u = self.cached(parent) or self.bounds(parent, 2)
        memo = node.cache.get("tangent_family")
        if memo is None or memo[0] is not l or memo[1] is not u:
            b = node.batch
            fam = TangentFamily.of("sigmoid" if isinstance(node.op, Sigmoid) else "tanh",
                                   l.reshape(b, -1), u.reshape(b, -1))
            memo = node.cache["tangent_family"] = (l, u, fam)
        return memo[2]

    # -- dense blocks -----------------------------------------------------------------------------
    @staticmethod
    def dense_block(node: Node, rows: torch.Tensor | None,
                    cols: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``W[rows][:, cols]`` and ``b[rows]`` of a dense affine node (memoised per index pair)."""
        w, b = node.op.operator.weight, node.flat_bias()
        if rows is None and cols is None:
            return w, b
        memo = node.cache.setdefault("blocks", [])
        for r, c, wb, bb in memo:
            if r is rows and c is cols:
                return wb, bb
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

    def signed_rows(self, node: Node, cols: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[W; −W]`` (columns ``cols``) and ``[b; −b]`` of a dense node (memoised): exact rows."""
        memo = node.cache.get("signed_rows")
        if memo is not None and memo[0] is cols:
            return memo[1], memo[2]
        w, bias = self.dense_block(node, None, cols)
        if cols is None:  # the same for every node of this operator
            wpm = _operator_memo(node.op.operator, "signed", lambda: torch.cat([w, -w]).contiguous())
        else:
            wpm = torch.cat([w, -w]).contiguous()
        bpm = None if bias is None else torch.cat([bias, -bias])
        node.cache["signed_rows"] = (cols, wpm, bpm)
        return wpm, bpm

    # -- back-substitution ----------------------------------------------------------------------
    def rebound(self, node: Node, mask: torch.Tensor, level: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Back-substitute only the neurons ``mask`` (``[B, n]`` bool) of ``node`` at ``level`` (they
        must have bounds already, e.g. given ones); the result is intersected with those bounds."""
        if self.level(node) < 0:
            self.bounds(node, 0)
        lo, hi = self.backsub_bounds(node, level, mask)
        self.store(node, self.level(node), lo, hi)
        return self.cached(node)

    def backsub_bounds(self, node: Node, level: int, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Back-substitute ``±e_i`` for the neurons of ``node`` that need it; best of that and interval.

        Level 1 (for a ReLU): only neurons whose sign the known bounds leave open, and a neuron
        stops as soon as its sign is proved. Level 2: every neuron, to the input.
        """
        ilo, ihi = node.cache["lower"], node.cache["upper"]
        b, n = node.batch, node.numel
        flo, fhi = ilo.reshape(b, n), ihi.reshape(b, n)
        need = (flo < 0) & (fhi > 0) if level == 1 else flo < fhi
        if mask is not None:
            need = need & mask.reshape(b, n)
        flat = need.reshape(-1).nonzero().squeeze(1)  # flat index b·n + i
        p = int(flat.numel())
        lo, hi = flo.clone().reshape(-1), fhi.clone().reshape(-1)
        if p == 0:
            return lo.reshape(ilo.shape), hi.reshape(ihi.shape)
        chunk = max(1, self.chunk_rows(node, fused=b > 1 and not torch.is_grad_enabled()) // 2)
        if self.uses_patches(node):  # local windows: the rows are small, keep them together
            chunk = max(chunk, 4096 if b == 1 else self.PATCH_CHUNK_BATCHED)
        for s in range(0, p, chunk):
            cf = flat[s:s + chunk]
            k = int(cf.numel())
            start, lam, const, bidx, cols, perm = self.unit_rows(node, cf)
            pair = None
            if level == 1 and b > 1:
                pair = torch.arange(k, device=lo.device).repeat(2)
                pair = pair if perm is None else pair[perm]
            best = self.run_rows(start, lam, const, bidx, threshold=0.0 if level == 1 else None,
                                 pair=pair, halves=level == 1 and b == 1, cols=cols)
            if perm is not None:
                best = torch.empty_like(best).index_copy_(0, perm, best)
            lo.scatter_reduce_(0, cf, best[:k], "amax")
            hi.scatter_reduce_(0, cf, -best[k:], "amin")
        return lo.reshape(ilo.shape), hi.reshape(ihi.shape)

    def uses_patches(self, node: Node) -> bool:
        """Whether rows of ``node``'s neurons start as local windows (:mod:`.patches`)."""
        return self.patches and isinstance(node.op, Affine) and isinstance(node.op.operator, ConvOperator)

    def unit_rows(self, node: Node, flat: torch.Tensor):
        """Rows ``+e_i`` then ``−e_i`` for the flat indices ``flat`` (``b·n + i``) of ``node``, grouped by
        batch member. Returns ``(start, λ, c, bidx, cols, perm)``: a dense node starts at its parent
        with the exact rows ``±W_i`` and constants ``±b_i`` (over the parent's carried neurons
        ``cols``: with several members and no autograd, each row's own member's live neurons, a
        :class:`~.rows.MemberCols` narrowed to the widest member present, gathered in one
        ``index_select`` from ``[W; −W]`` with a zero column); ``perm[j]`` is the original position
        of row ``j`` (None: unchanged order)."""
        b, n = node.batch, node.numel
        k = int(flat.numel())
        cn = flat if b == 1 else flat % n
        bidx = None if b == 1 else (flat // n).repeat(2)
        perm, perm_done = None, False
        if bidx is not None:  # rows grouped by batch member (lower and upper rows interleaved)
            perm = torch.argsort(bidx, stable=True)
            bidx = bidx[perm]
        cols = None
        mc = self.member_cols(node.parents[0]) if bidx is not None and not torch.is_grad_enabled() else None
        if mc is not None and isinstance(node.op, Affine) and isinstance(node.op.operator, DenseOperator):
            # several members: each row on its own member's live input neurons (rows.MemberCols)
            mc = mc.narrow(int(mc.counts_t.index_select(0, bidx).max()))
            rows = torch.cat([cn, cn + n])[perm]  # rows of [W; −W]
            wx = self.signed_padded(node)
            lin = mc.index.index_select(0, bidx).add_((rows * wx.shape[1]).unsqueeze(1))
            lam = wx.reshape(-1).index_select(0, lin.reshape(-1)).reshape(lin.shape)
            bias = node.flat_bias()
            const = lam.new_zeros(2 * k) if bias is None else torch.cat([bias, -bias]).index_select(0, rows)
            return node.parents[0], lam, const, bidx, mc, perm
        if isinstance(node.op, Affine) and isinstance(node.op.operator, DenseOperator):
            parent = node.parents[0]
            cols = self.alive(parent)
            wpm, bpm = self.signed_rows(node, cols)
            rows = torch.cat([cn, cn + n])
            if perm is not None:  # gather the rows in member order at once (one copy, not two)
                rows, perm_done = rows[perm], True
            lam = wpm.index_select(0, rows)
            const = bpm.index_select(0, rows) if bpm is not None else lam.new_zeros(2 * k)
            start = parent
        elif self.uses_patches(node):
            lam = unit_patches(tuple(node.shape), cn, self.dtype)  # local windows, not dense rows
            const, start = torch.zeros(2 * k, dtype=self.dtype, device=flat.device), node
        else:
            lam = torch.zeros(2 * k, n, dtype=self.dtype, device=flat.device)
            r = torch.arange(k, device=flat.device)
            lam[r, cn] = 1.0
            lam[r + k, cn] = -1.0
            const, start = lam.new_zeros(2 * k), node
        if perm is not None and not perm_done:
            lam, const = lam[perm], const[perm]
        return start, lam, const, bidx, cols, perm

    def chunk_rows(self, node: Node, fused: bool = False) -> int:
        """Rows per back-substitution chunk: memory budget (≈4 live ``[R, width]`` blocks) and cap.

        ``fused``: rows of several batch members, where a dense step into a box-like node (an MLP's
        first layer) is concretised block by block (:func:`.backward._dense_to_box`), so the widest
        node that is not box-like sets the budget."""
        width = max(self.inner_width(node) if fused else node.max_width, 1)
        rows = int(self.options.memory_mb * 2**20 / (8 * 4 * width))
        cap = self.options.max_rows
        if cap is None:
            cap = 2**21 // (8 * width) if self.device.type == "cpu" else rows
        return max(64, min(rows, cap))

    @staticmethod
    def inner_width(node: Node) -> int:
        """The largest flat size among ``node`` and its ancestors that are not box-like (memoised)."""
        w = node.cache.get("inner_width")
        if w is None:
            w = node.cache["inner_width"] = max([a.numel for a in node.ancestors() if not a.boxlike] or [1])
        return w

    def run_rows(self, start: Node, lam: torch.Tensor, const: torch.Tensor, bidx: torch.Tensor | None, *,
                 threshold: float | None = None, pair: torch.Tensor | None = None, halves: bool = False,
                 cols: torch.Tensor | None = None, layout: RowLayout | None = None, params=None,
                 keep_best: bool | None = None, record: dict | None = None) -> torch.Tensor:
        """Proved lower bounds ``[R]`` of ``lam·start[cols] + const`` (rows chunked by the memory budget)."""
        r = lam.shape[0]
        chunk = self.chunk_rows(start)
        keep_best = self.options.keep_best if keep_best is None else keep_best
        if pair is not None or halves or r <= chunk or layout is not None or params is not None or record is not None:
            return self._run(start, lam, const, bidx, threshold, pair, halves, cols, layout, params, keep_best, record)
        outs = [self._run(start, lam[s:s + chunk], const[s:s + chunk], None if bidx is None else bidx[s:s + chunk],
                          threshold, None, False, cols, None, None, keep_best, None)
                for s in range(0, r, chunk)]
        return torch.cat(outs)

    def _run(self, start, lam, const, bidx, threshold, pair, halves, cols, layout, params, keep_best,
             record) -> torch.Tensor:
        rows = layout if layout is not None else RowLayout(bidx, start.batch)
        bs = BackwardPass(self, const, rows, keep_best=keep_best, threshold=threshold, pair=pair,
                          halves=halves, params=params, record=record)
        bs.push(start, lam, cols)
        out = bs.run()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("back-substitution from %r: %d rows, %d steps, %d rows stopped early",
                      start, lam.shape[0], bs.steps, bs.dropped)
        return out

    def rows_for(self, node: Node, C: torch.Tensor) -> torch.Tensor:
        """``C`` as ``[B, m, numel]`` (a 2-D ``C`` or batch 1 is shared by all members)."""
        C = torch.as_tensor(C, dtype=self.dtype, device=self.device)
        if C.dim() == 2:
            C = C.unsqueeze(0)
        b = node.batch
        if C.shape[0] == 1 and b > 1:
            C = C.expand(b, -1, -1)
        C = C.reshape(C.shape[0], C.shape[1], -1)
        if C.shape[0] != b or C.shape[2] != node.numel:
            raise ValueError(f"C has shape {tuple(C.shape)}, expected [{b}, m, {node.numel}]")
        return C

    def linear_bounds_at(self, node: Node, C: torch.Tensor, *, stop_at: float | None = None) -> torch.Tensor:
        """Proved lower bounds ``[B, m]`` of ``C·x`` for any node ``x`` (``C``: ``[B or 1, m, numel]``),
        never looser than the interval bound over ``x``'s concrete bounds. With ``stop_at`` a row
        stops being refined once its bound reaches that value."""
        C = self.rows_for(node, C)
        b, m = node.batch, C.shape[1]
        lam = C.reshape(b * m, node.numel)
        bidx = None if b == 1 else torch.arange(b, device=lam.device).repeat_interleave(m)
        out = self.run_rows(node, lam, lam.new_zeros(b * m), bidx, threshold=stop_at).reshape(b, m)
        if self.level(node) < 0:
            self.bounds(node, 0)
        low, wid = self.conc(node, None, 4)
        rows = RowLayout(bidx, b)
        box = safe_down(rows.dot(lam, low) + rows.dot(lam.clamp(max=0), wid))
        return torch.maximum(out, box.reshape(b, m))

    def input_linear_bounds(self, node: Node, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Symbolic lower bounds over the input: ``C·x ≥ A·x_in + c`` for every input in the box,
        in real arithmetic (``c`` includes the pass's rounding error). Returns ``A``
        ``[B, m, *input_shape]`` and ``c`` ``[B, m]``; concretise ``A`` with :func:`concretize_box`."""
        C = self.rows_for(node, C)
        b, m = node.batch, C.shape[1]
        lam = C.reshape(b * m, node.numel)
        bidx = None if b == 1 else torch.arange(b, device=lam.device).repeat_interleave(m)
        bs = BackwardPass(self, lam.new_zeros(b * m), RowLayout(bidx, b), symbolic=True)
        bs.push(node, lam)
        bs.run()
        A, c = bs.symbolic_result()
        inp = node.input_node()
        if A is None:
            A = lam.new_zeros(b * m, inp.numel)
        return A.reshape(b, m, *inp.shape), c.reshape(b, m)


def concretize_box(A: torch.Tensor, c: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Proved lower bounds ``[..., m]`` of ``A·x + c`` over the boxes ``[lo, hi]`` (``A``: ``[..., m, n]``,
    ``lo``/``hi``: ``[..., n]``), with the float error of the dot products accounted for."""
    lo, hi = lo.unsqueeze(-2), hi.unsqueeze(-2)
    n = A.shape[-1]
    v = c + (A.clamp(min=0) * lo + A.clamp(max=0) * hi).sum(-1)
    mag = torch.maximum(lo.abs(), hi.abs())
    err = (A.abs() * mag).sum(-1) + c.abs()
    g = gam(n + 3, A.dtype)
    return safe_down(v - up(err * (2 * g) + (n + 3) * floor(A.dtype), 2))
