"""Per-neuron LP/MILP tightening of the activation inputs, layer by layer (ERAN's refinement).

"Boosting Robustness Certification of Neural Networks" (Singh et al., ICLR 2019): walking the
network with the domain, at every node that feeds an activation (from the ``refine_from``-th on),
each unstable neuron is minimised and maximised over the LP — a MILP with binaries for the
unstable ReLUs before it, for the first ``milp_layers`` tightened layers — of the network prefix
with the bounds proved so far. The proved bounds go back into the domain's element
(:meth:`Domain.meet_box`), so every later relaxation uses them. Before the solves, the layer's
bounds are tightened by optimised slopes where the slope engine applies; the per-neuron *LP*
(without k-ReLU rows) is then skipped unless asked for, since the slopes reach the triangle LP's
bound. Every ``check_every`` neurons the later layers and the rows are re-bounded with optimised
slopes, and the run stops as soon as every row is proved.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from absint.interpreter import propagate
from absint.ir import Relu
from absint.refine.pipeline import Context, Stage, flat, share_deadline
from absint.refine.solving import RowSolver
from absint.refine.stages import _tensor, add_krelu_rows, pass_fits
from absint.refine.state import RefineState
from absint.domains.krelu import KReluOptions

__all__ = ["Tighten"]


class _AllProved(Exception):
    """Raised inside the domain pass once every row is proved (ends the pass early)."""


@dataclass(frozen=True)
class Tighten(Stage):
    """Per-neuron tightening (see the module docstring).

    * ``refine_from`` — index of the first activation layer whose inputs are tightened (ERAN: 1,
      the first layer's bounds are exact already for box inputs).
    * ``milp_layers`` — the first this-many tightened layers use a MILP, the rest an LP.
    * ``lp`` — per-neuron LP tightening of the other layers: ``None`` (auto: only where the slopes
      do not apply, or with k-ReLU rows), True, False.
    * ``timeout_lp`` / ``timeout_milp`` — per-solve time limits (seconds).
    * ``max_neurons`` — per layer, at most this many unstable neurons, widest first (None: all).
    * ``slope_iters`` / ``slope_final_iters`` — optimised slopes per layer and for the early-exit
      checks (0: none).
    * ``check_every`` — re-bound the rows after every this-many neurons and stop once all are proved
      (0: never).
    * ``krelu`` — also put k-ReLU hull rows into the tightening LPs (ERAN does; tighter, but each LP
      gets ~100 rows per group larger); None: only the final LP/MILP gets them (:class:`KRelu`).
    * ``share`` — the stage uses at most this share of the time left, so the final stages still run.
    """

    key: str = field(default="tighten", init=False)
    refine_from: int = 1
    milp_layers: int = 3
    lp: bool | None = None
    timeout_lp: float = 1.0
    timeout_milp: float = 1.0
    max_neurons: int | None = None
    slope_iters: int = 30
    slope_final_iters: int = 60
    check_every: int = 10
    krelu: KReluOptions | None = None
    share: float = 0.8

    def deadline(self, state: RefineState) -> float | None:
        return share_deadline(state, self.share, None)

    def run(self, state: RefineState, ctx: Context, deadline: float | None) -> None:
        if not pass_fits(state, deadline):
            state.note("tighten: skipped, no time for another domain pass")
            return
        dom, p = ctx.domain, state.problem
        sb = ctx.slopes(self.slope_iters, self.slope_final_iters) if self.slope_iters > 0 else None
        use_krelu = self.krelu is not None and self.krelu.k > 1
        lp = (sb is None or use_krelu) if self.lp is None else self.lp
        solver = ctx.row_solver(state)
        layer_of = {name: i for i, name in enumerate(ctx.refinable)}
        elements: dict[str, object] = {}

        def left() -> float:
            return np.inf if deadline is None else deadline - time.perf_counter()

        def hook(node, element):
            if node.name in ctx.recorded:
                lo_t, hi_t = dom.bounds(element)
                lo, hi = state.meet(node.name, flat(lo_t), flat(hi_t))
                k = layer_of.get(node.name)
                if k is not None:
                    if sb is not None and node.name in sb.nodes[1:] and left() > 0.1:
                        t0 = time.perf_counter()
                        lo, hi = state.meet(node.name, *sb.node_bounds(node.name, state.bounds, p.in_lo, p.in_hi,
                                                                       deadline))
                        state.record("slopes_layer", node=node.name, seconds=time.perf_counter() - t0,
                                     unstable_after=int(((lo < 0) & (hi > 0)).sum()))
                    use_milp = (k - self.refine_from) < self.milp_layers
                    if k >= self.refine_from and (use_milp or lp) and left() > 0.1:
                        check = self._checker(state, ctx, sb, node.name, deadline) if sb is not None else None
                        lo, hi = self._layer(state, ctx, solver, node.name, use_milp, deadline, check)
                    shape = lo_t.shape
                    element = dom.meet_box(element, torch.as_tensor(lo, dtype=dom.dtype, device=dom.device).reshape(shape),
                                           torch.as_tensor(hi, dtype=dom.dtype, device=dom.device).reshape(shape))
                elements[node.name] = element
            elif isinstance(node, Relu) and use_krelu and node.inputs[0] in elements and node.name not in state.krelu:
                if left() > 0.5:
                    add_krelu_rows(state, ctx, node, elements[node.inputs[0]], self.krelu, deadline)  # type: ignore[arg-type]
                else:
                    state.note(f"k-ReLU {node.name}: skipped, time limit reached")
            return element

        try:
            prop = propagate(p.graph, dom, p.lower, p.upper, refine=hook, deadline=deadline)
        except _AllProved:
            return
        rows = dom.linear_bounds(prop.output, _tensor(ctx, p.C), _tensor(ctx, p.d))[0]
        state.raise_rows(rows.detach().cpu().double().numpy())

    # -- one layer ---------------------------------------------------------------------------------
    def _checker(self, state: RefineState, ctx: Context, sb, name: str, deadline: float | None):
        """``check(lo, hi)``: re-bound the later layers and the rows with ``name``'s new bounds (sound:
        every other bound is a proved one); raise :class:`_AllProved` once every row is proved."""
        nodes = sb.nodes
        if name not in nodes or not sb.has_all(state.bounds):
            return None
        nxt = nodes.index(name) + 1
        later = nxt < len(nodes)  # after the last layer only the rows are re-bounded
        p = state.problem

        def check(lo: np.ndarray, hi: np.ndarray) -> None:
            bounds = dict(state.bounds)
            bounds[name] = (lo, hi)
            todo = state.todo
            rows, _ = sb.rows(bounds, p.in_lo, p.in_hi, p.C[todo], p.d[todo], layers=later,
                              from_node=nodes[nxt] if later else None, deadline=deadline)
            if np.all(rows > state.tolerance):
                state.raise_rows(rows, todo)
                state.meet(name, lo, hi)
                state.stats["early_exit"] = name
                raise _AllProved
        return check

    def _layer(self, state: RefineState, ctx: Context, solver: RowSolver, name: str, use_milp: bool,
               deadline: float | None, check) -> tuple[np.ndarray, np.ndarray]:
        """Tighten the unstable neurons of node ``name`` (widest first); returns its proved bounds."""
        p = state.problem
        lo, hi = state.bounds[name]
        unstable = np.flatnonzero((lo < 0) & (hi > 0))
        if unstable.size == 0:
            return lo, hi
        # widest first (−l·u, the triangle's area up to a factor): a deadline cuts the least useful
        unstable = unstable[np.argsort(lo[unstable] * hi[unstable], kind="stable")]
        if self.max_neurons is not None:
            unstable = unstable[: self.max_neurons]
        if not ctx.encoder.fits(deadline, upto=name):
            state.note(f"tighten {name}: no time left to build its LP/MILP")
            return lo, hi
        t0 = time.perf_counter()
        enc = ctx.encoder.build(p.in_lo, p.in_hi, state.bounds, upto=name, binaries=use_milp,
                                krelu=state.krelu if self.krelu is not None else None, name=f"tighten:{name}")
        z = enc.vars[name]
        milp = use_milp and enc.model.is_mip
        limit = self.timeout_milp if milp else self.timeout_lp
        step = len(unstable) if check is None or self.check_every <= 0 else int(self.check_every)
        failed = 0
        for s0 in range(0, len(unstable), step):
            part = unstable[s0:s0 + step]
            objs = [obj for i in part for obj in (({int(z[i]): 1.0}, "min"), ({int(z[i]): 1.0}, "max"))]
            res = solver.solve(enc, objs, limit, deadline, f"tighten {name}")
            new_lo, new_hi = lo.copy(), hi.copy()
            for j, i in enumerate(part):
                pl, pu = _proved(res[2 * j]), _proved(res[2 * j + 1])
                failed += int(pl is None and res[2 * j] is not None) + int(pu is None and res[2 * j + 1] is not None)
                if pl is not None:
                    new_lo[i] = max(lo[i], pl)
                if pu is not None:
                    new_hi[i] = min(hi[i], pu)
            lo, hi = state.meet(name, new_lo, new_hi)
            if deadline is not None and deadline - time.perf_counter() <= 0.05:
                break
            if check is not None and s0 + step < len(unstable):
                check(lo, hi)
        if failed:
            state.note(f"tighten {name}: {failed} solve(s) without a proved bound (kept the old bounds)")
        state.record("tighten", node=name, milp=bool(milp), neurons=int(unstable.size),
                     seconds=time.perf_counter() - t0, unstable_after=int(((lo < 0) & (hi > 0)).sum()),
                     vars=enc.model.num_vars, rows=enc.model.num_rows)
        if check is not None and (deadline is None or deadline - time.perf_counter() > 0.05):
            check(lo, hi)
        return lo, hi


def _proved(res) -> float | None:
    if res is None or res.proved_bound is None or not np.isfinite(res.proved_bound):
        return None
    return float(res.proved_bound)
