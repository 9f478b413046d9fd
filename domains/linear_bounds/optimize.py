"""Optimised slopes over the whole graph: α-CROWN (Xu et al., "Fast and Complete: Enabling Complete
Neural Network Verification with Rapid and Massively Parallel Incomplete Verifiers", ICLR 2021).

Every ``α ∈ [0, 1]`` gives a sound ReLU lower line ``y ≥ α z``, so any slopes give sound bounds and
projected gradient ascent on them only searches for good ones (with fixed intermediate bounds the
optimum equals the triangle LP's: Salman et al., NeurIPS 2019). :class:`SlopeOptimiser` optimises
**jointly**: each iteration recomputes the bounds of every unstable pre-activation neuron (rows
``±e_i`` of each ReLU input, with their own slopes ``α_{s,r}`` per start node ``s``, row and ReLU
``r``), relaxes the later ReLUs with these bounds (the chord depends on them) and bounds the target
rows ``C y + d``; the loss is minus the sum of the target rows, and gradients reach every slope
through the intermediate bounds. Then ``final_iters`` more iterations optimise the target rows'
slopes alone over the best intermediate bounds found. The default schedule is layer by layer
instead (each start node's slopes optimised for its own bounds, in topological order, as in
DeepPoly-with-α refinements), which measured tighter at equal budgets on the ERAN, mnistfc and
ACAS Xu networks; ``schedule="joint"`` selects the α-CROWN one.

Sigmoid and tanh nodes are optimised the same way (α-CROWN's general activations): per start node,
row and node, the tangent points of their lower and upper lines (:mod:`.tangent`), starting from
DeepPoly's lines; their inputs' bounds are recomputed as start nodes too (every neuron of non-zero
width, not only sign-unknown ones). Gradients do not pass through the ranges of tangent points
(functions of the intermediate bounds, detached), only through the points themselves.

All bounds are intersected with the DeepPoly bounds the optimisation starts from (so they only
tighten, and the rounding-error weights computed from the starting bounds stay valid); every
number reported is the best proved one seen over the iterations.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from absint.ir import Relu, Sigmoid, Tanh
from absint.domains.linear_bounds.engine import Engine
from absint.domains.linear_bounds.graph import Node, GraphView
from absint.domains.linear_bounds.params import NodeParams, Params
from absint.domains.linear_bounds.relax import safe_down
from absint.domains.relaxations import relu_lower_slope
from absint.domains.linear_bounds.rows import RowLayout
from absint.optim import Adam, ExponentialDecay

__all__ = ["SlopeOptions", "SlopeOptimiser"]


@dataclass(frozen=True)
class SlopeOptions:
    """``schedule``: ``layerwise`` — ``iters`` iterations per start node on its own bounds, in order,
    then ``final_iters`` on the target rows; ``joint`` — ``iters`` iterations on all slopes at once
    (loss: the target rows plus every intermediate bound's tightness), then ``final_iters`` on the
    target rows alone. Adam with step ``lr`` (``joint``: decayed by ``decay`` per iteration).
    ``intermediate``: optimise the intermediate bounds at all (False: DeepPoly's are kept).
    ``s_shaped``: also optimise the tangent points of sigmoid/tanh lines (False: DeepPoly's lines);
    ``s_shaped_max``: the most entries of one node's tangent parameters for one set of rows (``R·2n``;
    larger ones keep DeepPoly's lines there: every neuron has parameters, which wide convolutional
    layers could not hold in memory per row)."""

    iters: int = 30
    final_iters: int = 60
    lr: float = 0.25
    decay: float = 0.98
    intermediate: bool = True
    schedule: str = "layerwise"
    s_shaped: bool = True
    s_shaped_max: int = 1 << 21

    def __post_init__(self) -> None:
        if self.schedule not in ("layerwise", "joint"):
            raise ValueError(f"schedule must be 'layerwise' or 'joint', not {self.schedule!r}")


class _Start:
    """One node whose bounds the optimiser recomputes: its rows and per-activation parameters.
    ``smooth``: it feeds a sigmoid/tanh (every neuron of non-zero width is re-bounded; else only
    those of unknown sign)."""

    def __init__(self, engine: Engine, node: Node, acts: list[Node], smooth: bool = False) -> None:
        self.node = node
        lo, hi = engine.cached(node)
        b = node.batch
        unstable = ((lo < hi) if smooth else ((lo < 0) & (hi > 0))).reshape(b, -1)
        self.flat = unstable.reshape(-1).nonzero().squeeze(1)
        k = int(self.flat.numel())
        self.k = k
        self.start, self.lam, self.const, self.bidx, self.cols, self.perm = engine.unit_rows(node, self.flat)
        self.layout = RowLayout(self.bidx, b)
        self.lo0, self.hi0 = lo.detach().reshape(b, -1), hi.detach().reshape(b, -1)
        self.acts = [r for r in acts if r.index < node.index and _is_ancestor(r, node)]


def _is_ancestor(a: Node, b: Node) -> bool:
    return id(a) in b.ancestor_ids()


class SlopeOptimiser:
    """α-CROWN on a :class:`GraphView` whose pre-activation bounds are set (see the module docstring)."""

    def __init__(self, view: GraphView, engine: Engine, options: SlopeOptions = SlopeOptions(), *,
                 only: set[str] | None = None) -> None:
        """``only``: recompute the bounds of these start nodes only (default: every ReLU input that
        is not an affine map of the input box)."""
        self.view, self.engine, self.opt = view, engine, options
        self.relus = view.relus()
        #: every activation with parameters: ReLUs (slopes α) and, if asked, sigmoid/tanh (tangent points)
        self.acts = view.activations((Relu, Sigmoid, Tanh) if options.s_shaped else (Relu,))
        for n in view:  # error weights from the starting (widest) bounds stay valid while bounds tighten
            if engine.cached(n) is not None:
                engine.freeze_magnitude(n)
        self.unstable_idx: dict[int, torch.Tensor] = {}
        for r in self.relus:
            lo, hi = engine.cached(r.parents[0])
            un = ((lo < 0) & (hi > 0)).reshape(r.batch, -1).any(0)
            self.unstable_idx[id(r)] = un.nonzero().squeeze(1)
        self.starts: list[_Start] = []
        if options.intermediate:
            pres = {id(r.parents[0]): r.parents[0] for r in self.acts}
            smooth = {id(r.parents[0]) for r in self.acts if not isinstance(r.op, Relu)}
            for p in sorted(pres.values(), key=lambda n: n.index):
                if (p.parents and p.parents[0].boxlike) or (only is not None and p.name not in only):
                    continue  # exact already (an affine map of the input box), or not asked for
                st = _Start(engine, p, self.acts, id(p) in smooth)
                if st.k and st.acts:
                    self.starts.append(st)
        self.alpha: dict[tuple[int, int], torch.Tensor] = {}
        for st in self.starts:
            rows = st.layout
            for r in st.acts:
                a = self._init_alpha(r, rows, st.lam.shape[0])
                if a is not None:
                    self.alpha[(id(st.node), id(r))] = a

    def _init_alpha(self, relu: Node, rows: RowLayout, R: int) -> torch.Tensor | None:
        """DeepPoly's slopes of ``relu``'s unstable neurons, one copy per row ``[R, U]``; for a
        sigmoid/tanh node the tangent points of DeepPoly's lines ``[R, 2n]`` (:meth:`TangentFamily.init`),
        or None when that exceeds ``s_shaped_max`` entries (DeepPoly's fixed lines are used)."""
        if not isinstance(relu.op, Relu):
            if R * 2 * relu.numel > self.opt.s_shaped_max:
                return None
            return self.engine.tangent_family(relu).init(R).requires_grad_(True)
        idx = self.unstable_idx[id(relu)]
        ls = self.engine.lines(relu).ls[:, idx]
        return rows.gather(ls, R).clone().requires_grad_(True)

    def _slopes(self, relu: Node, alpha: torch.Tensor, rows: RowLayout, R: int) -> torch.Tensor:
        """Per-row lower slopes ``[R, n]``: α on the neurons unstable now, exact on stable ones."""
        lo, hi = self.engine.cached(relu.parents[0])
        b = relu.batch
        lo, hi = lo.reshape(b, -1), hi.reshape(b, -1)
        active = (lo >= 0).to(lo.dtype)
        unstable = (lo < 0) & (hi > 0)
        idx = self.unstable_idx[id(relu)]
        base = rows.gather(active, R)
        un = rows.gather(unstable[:, idx].to(lo.dtype), R)
        part = un * alpha + (1 - un) * base[:, idx]
        return base.index_copy(1, idx, part)

    def _params(self, key_node: Node, relus: list[Node], rows: RowLayout, R: int,
                alphas: dict[tuple[int, int], torch.Tensor]) -> Params:
        prm = Params()
        for r in relus:
            a = alphas.get((id(key_node), id(r)))
            if a is not None and not isinstance(r.op, Relu):
                prm.set(r, NodeParams(tangent=a))
            elif a is not None:
                prm.set(r, NodeParams(alpha=self._slopes(r, a, rows, R)))
        return prm

    def _bound_start(self, st: _Start, best: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """New (differentiable) bounds of one start node, stored in it and folded into ``best``;
        returns their tightness ``Σ (l_i − u_i)`` over its unstable neurons (a loss term)."""
        R = st.lam.shape[0]
        prm = self._params(st.node, st.acts, st.layout, R, self.alpha)
        vals = self.engine.run_rows(st.start, st.lam, st.const, st.bidx, cols=st.cols, layout=st.layout, params=prm)
        if st.perm is not None:
            vals = torch.empty_like(vals).index_copy(0, st.perm, vals)
        k = st.k
        lo = st.lo0.reshape(-1).index_put((st.flat,), torch.maximum(st.lo0.reshape(-1)[st.flat], vals[:k]))
        hi = st.hi0.reshape(-1).index_put((st.flat,), torch.minimum(st.hi0.reshape(-1)[st.flat], -vals[k:]))
        b = st.node.batch
        lo, hi = lo.reshape(b, *st.node.shape), hi.reshape(b, *st.node.shape)
        hi = torch.maximum(hi, lo)  # crossing bounds only from rounding on an empty set: keep a point
        c = st.node.cache
        c["lower"], c["upper"] = lo, hi
        old = best.get(id(st.node))
        if old is None:
            best[id(st.node)] = (lo.detach(), hi.detach())
        else:
            best[id(st.node)] = (torch.maximum(old[0], lo.detach()), torch.minimum(old[1], hi.detach()))
        return vals.sum()

    def tighten(self, deadline: float | None = None) -> None:
        """Optimise the start nodes' own bounds layer by layer (no target rows); the best bounds
        are left in the view."""
        self._layerwise({}, deadline)

    def _layerwise(self, best: dict[int, tuple[torch.Tensor, torch.Tensor]], deadline: float | None) -> None:
        """Optimise each start's slopes for its own bounds, in topological order (earlier starts'
        best bounds fixed); the slopes start from DeepPoly's at the bounds known by then."""
        opt = self.opt
        for st in self.starts:
            params = []
            for r in st.acts:
                if not isinstance(r.op, Relu):  # tangent points: DeepPoly's, whatever the bounds
                    a = self._init_alpha(r, st.layout, st.lam.shape[0])
                    if a is not None:
                        self.alpha[(id(st.node), id(r))] = a
                        params.append(a)
                    continue
                lo, hi = self.engine.cached(r.parents[0])
                b = r.batch
                ls = relu_lower_slope(lo.reshape(b, -1), hi.reshape(b, -1))[:, self.unstable_idx[id(r)]]
                a = st.layout.gather(ls.detach(), st.lam.shape[0]).clone().requires_grad_(True)
                self.alpha[(id(st.node), id(r))] = a
                params.append(a)
            adam = Adam(params, lr=opt.lr) if params else None
            for _ in range(opt.iters if adam is not None else 0):
                if deadline is not None and time.perf_counter() > deadline:
                    break
                tight = self._bound_start(st, best)
                adam.zero_grad()
                (-tight).backward()
                adam.step()
                with torch.no_grad():
                    for p in params:
                        p.clamp_(0, 1)
            with torch.no_grad():
                self._bound_start(st, best)
            st.node.cache["lower"], st.node.cache["upper"] = best[id(st.node)]

    def run(self, target: Node, C: torch.Tensor, d: torch.Tensor | None = None, *,
            deadline: float | None = None, stop_above: float | None = 0.0) -> torch.Tensor:
        """Best proved lower bounds ``[B, m]`` of ``C·target + d`` (``C``: ``[B or 1, m, numel]``);
        afterwards the view's start nodes hold the best intermediate bounds found (detached).
        Stops early once every row's bound exceeds ``stop_above`` (None: never)."""
        eng, opt = self.engine, self.opt
        Cr = eng.rows_for(target, C)
        b, m = target.batch, Cr.shape[1]
        lam = Cr.reshape(b * m, -1)
        rows = RowLayout.per_member(b, m, lam.device)
        dd = torch.zeros(b, m, dtype=lam.dtype, device=lam.device) if d is None else \
            torch.as_tensor(d, dtype=lam.dtype, device=lam.device).expand(b, m)
        relus = [r for r in self.acts if _is_ancestor(r, target)]
        final = {(id(target), id(r)): a for r in relus if (a := self._init_alpha(r, rows, b * m)) is not None}
        saved = {id(st.node): (st.node.cache["lower"], st.node.cache["upper"]) for st in self.starts}
        best_bounds: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        best = None

        def target_rows() -> torch.Tensor:
            prm = self._params(target, relus, rows, b * m, final)
            v = eng.run_rows(target, lam, lam.new_zeros(b * m), None if rows.bidx is None else rows.bidx,
                             layout=rows, params=prm)
            return safe_down(v.reshape(b, m) + dd)

        if opt.schedule == "layerwise" and self.starts:
            self._layerwise(best_bounds, deadline)
            phases = [(opt.final_iters, False)]
        elif self.starts:
            phases = [(opt.iters, True), (opt.final_iters, False)]
        else:
            phases = [(opt.iters + opt.final_iters, False)]
        for iters, joint in phases:
            params = list(final.values()) + (list(self.alpha.values()) if joint else [])
            if not joint and self.starts:  # the best intermediate bounds, fixed
                for st in self.starts:
                    lo, hi = best_bounds.get(id(st.node), saved[id(st.node)])
                    st.node.cache["lower"], st.node.cache["upper"] = lo, hi
            if iters <= 0 or not params:
                continue
            adam = Adam(params, lr=opt.lr)
            sched = ExponentialDecay(adam, opt.decay)
            for _ in range(iters):
                if deadline is not None and time.perf_counter() > deadline:
                    break
                tight = sum(self._bound_start(st, best_bounds) for st in self.starts) if joint else 0.0
                val = target_rows()
                v = val.detach()
                best = v if best is None else torch.maximum(best, v)
                if stop_above is not None and bool((best > stop_above).all()):
                    break
                adam.zero_grad()
                # the target rows, and every intermediate bound for its own sake (each start's slopes
                # mostly act through its own bounds, like layer-by-layer optimisation, but jointly)
                (-(val.sum() + tight)).backward()
                adam.step()
                sched.step()
                with torch.no_grad():
                    for p in params:
                        p.clamp_(0, 1)
            if stop_above is not None and best is not None and bool((best > stop_above).all()):
                break
        for st in self.starts:  # leave the best (detached) bounds in the view
            lo, hi = best_bounds.get(id(st.node), saved[id(st.node)])
            st.node.cache["lower"], st.node.cache["upper"] = lo, hi
        with torch.no_grad():
            last = target_rows()
        best = last if best is None else torch.maximum(best, last)
        return best

