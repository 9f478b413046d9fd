"""Layer-by-layer bounds with optimised slopes α and k-ReLU multipliers μ, no LP (GCP-CROWN style).

For the ReLU nodes ``r_0, r_1, …`` of a :class:`~absint.domains.linear_bounds.GraphView` in topological
order, :class:`MultiNeuronBounds` alternates two steps:

1. **tighten** the input ``z_i`` of ``r_i`` (unless it is an affine map of the input box, exact
   already): every unstable neuron's rows ``±e_j`` are back-substituted with per-row slopes
   ``α ∈ [0, 1]`` on every earlier ReLU (α-CROWN, Xu et al. ICLR 2021) and multipliers ``μ ≥ 0`` on
   the hull rows of every earlier ReLU (the engine's multiplier slot; GCP-CROWN, Zhang et al.
   NeurIPS 2022), both optimised by projected Adam; the best proved bound of each row is kept and
   intersected with the previous bounds;
2. **rows** of ``r_i``: its k-ReLU hull rows (kPoly, Singh et al. NeurIPS 2019; PRIMA, Müller et al.
   POPL 2022) from octahedral bounds over the tightened bounds (one batched engine pass with the
   current bounds' heuristic slopes), kept as engine constraints for every later step.

:meth:`MultiNeuronBounds.bound_rows` then bounds target rows ``C·x`` of any node with α and μ over
every ReLU. With the intermediate bounds fixed, the optimal ``(α, μ)`` bound equals the LP optimum
with the triangle relaxation plus the hull rows (strong duality); the gain over α alone compounds
through the layers because each layer's bounds use the rows of all layers before it (what the rows
buy in certified images: benchmarks/RESULTS.md, "k-ReLU group selection ablation").

Soundness: every bound comes from an engine pass, proved for the stored parameter values (α is
clamped to ``[0, 1]``, μ to ``≥ 0``, rounding accounted for by the engine); the rows hold on the
region, hence in every sub-region (branch and bound may reuse them). Bounds only ever tighten.
Works for a batch of one region (``view.batch == 1``).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from absint.domains.krelu.constraints import GroupedConstraints
from absint.domains.krelu.grouping import KReluOptions
from absint.domains.krelu.layer import HullRows, layer_hull_rows
from absint.domains.linear_bounds import Engine, GraphView, Node, NodeParams, Params
from absint.optim import RETIRE_AT, Adam, ExponentialDecay
from absint.rounding import sum_lower

log = logging.getLogger(__name__)

__all__ = ["TightenOptions", "MultiNeuronBounds", "start_region", "rows_deadline", "KPOLY_KRELU"]

#: kpoly's default grouping: triples (k=3) in windows of 20 of the widest unstable neurons, sharing
#: at most one neuron (s=−2), at most 100 groups per layer (the widest neurons' first); the certified
#: fast hull. Windows of 20 instead of 10 (Dec 7): about twice the groups on the MLPs, which the
#: longer per-layer optimisation now has time for; the cap keeps wide layers (6x200) from trading
#: their optimisation steps for rows (benchmarks/RESULTS.md, "Larger k-ReLU windows"; the 30 s
#: ablation that chose 10 is in "k-ReLU group selection ablation").
KPOLY_KRELU = KReluOptions(k=3, s=-2, sparse_n=20, cutoff=0.05, hull="auto", max_groups=100)


@dataclass(frozen=True)
class TightenOptions:
    """``iters`` Adam steps per tightened layer (fewer when the layer's equal share of a deadline runs
    out); up to ``max_iters`` when the time left covers the later layers' projected cost (see
    :meth:`MultiNeuronBounds.run`, the projection scaled by ``reserve_factor``; ``max_iters <= iters``:
    never more than ``iters``);
    ``final_iters`` for target rows; step sizes ``lr_alpha`` / ``lr_mu`` decayed by ``decay`` per
    step; ``rows_from``: the first ReLU (index in topological order) that gets hull rows;
    ``query_rows``: rows per octahedral engine pass."""

    #: 70, not 30: on hard MNIST 6x100 images the root margins rose by 0.2–0.5 and branch and bound
    #: proved more in less time (benchmarks/RESULTS.md, "More steps per layer in the multineuron stage")
    iters: int = 70
    #: 150 steps with a reserve of twice the projection (Dec 7): a layer takes more steps only while
    #: the time left covers twice the later layers' projected cost, so a stage with time to spare
    #: (6x100: 14 of its 30 s) spends it, and one short of time (6x200, 9x100) is left as it was
    #: (benchmarks/RESULTS.md, "Extra steps where the stage has time to spare"). 150 steps everywhere
    #: lost margin on 6x200; a reserve of once the projection lost some on 9x100.
    max_iters: int = 150
    reserve_factor: float = 2.0
    final_iters: int = 100
    lr_alpha: float = 0.1
    lr_mu: float = 0.05
    decay: float = 0.96
    rows_from: int = 0
    query_rows: int = 4096


@dataclass
class _Layer:
    relu: Node
    rows: HullRows | None = None
    constraints: GroupedConstraints | None = None


@dataclass
class TightenStats:
    tighten_s: float = 0.0
    rows_s: float = 0.0
    groups: int = 0
    rows: int = 0
    unstable_before: list[int] = field(default_factory=list)
    unstable_after: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)  # bound evaluations per tightened layer
    complete: bool = True


class MultiNeuronBounds:
    """See the module docstring. The view's pre-activation bounds must be computable by ``engine``."""

    def __init__(self, view: GraphView, engine: Engine, krelu: KReluOptions | None,
                 options: TightenOptions = TightenOptions()) -> None:
        if view.batch != 1:
            raise ValueError("MultiNeuronBounds bounds one region at a time (view.batch == 1)")
        self.view, self.engine, self.krelu, self.opt = view, engine, krelu, options
        self.layers = [_Layer(r) for r in view.relus()]
        self.stats = TightenStats()
        for L in self.layers:  # DeepPoly's bounds to start from
            engine.bounds(L.relu.parents[0], 2)

    # -- helpers ------------------------------------------------------------------------------
    def _ancestors(self, node: Node) -> list[_Layer]:
        ids = node.cache.get("kpoly_anc")
        if ids is None:
            ids = node.cache["kpoly_anc"] = {id(n) for n in node.ancestors()}
        return [L for L in self.layers if L.relu is not node and id(L.relu) in ids]

    def _bounds(self, node: Node) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.engine.cached(node) or self.engine.bounds(node, 2)
        return lo.reshape(-1), hi.reshape(-1)

    def _heuristic_alpha(self, relu: Node, R: int) -> torch.Tensor:
        """Per-row lower slopes ``[R, n]``: 1 where ``u > −l`` (or active), else 0 (DeepPoly's area rule)."""
        lo, hi = self._bounds(relu.parents[0])
        return (hi > -lo).to(lo.dtype)[None].expand(R, -1)

    def _params(self, layers: list[_Layer], alphas: list[torch.Tensor], mus: list[torch.Tensor | None]) -> Params:
        prm = Params()
        for L, a, m in zip(layers, alphas, mus):
            prm.set(L.relu, NodeParams(alpha=a, mu=None if m is None else (L.constraints, m)))
        return prm

    def _optimise(self, start: Node, lam: torch.Tensor, iters: int, deadline: float | None,
                  stop_above: float | None = None, settled=None, more=None, max_iters: int = 0) -> torch.Tensor:
        """Best proved lower bounds ``[R]`` of ``lam·start`` over ``iters`` Adam steps on (α, μ), and
        on up to ``max_iters`` steps while ``more(steps_done)`` says the time allows.

        Every row has its own α and μ, so the rows are independent problems that share only the
        backward passes: a row that ``settled(best)`` (``[R]`` → bool) says needs no more work, or
        that passed ``stop_above``, is retired (its parameters and Adam state dropped from the later
        steps; the other rows' steps are unchanged). Retiring happens once at least
        :data:`RETIRE_AT` of the rows still optimised are settled, so each compaction pays off."""
        eng, opt = self.engine, self.opt
        R = lam.shape[0]
        layers = self._ancestors(start)
        const = lam.new_zeros(R)
        alphas = [self._heuristic_alpha(L.relu, R).clone().requires_grad_(True) for L in layers]
        mus = [None if L.constraints is None else
               torch.zeros(R, L.constraints.num_rows, dtype=lam.dtype, device=lam.device, requires_grad=True)
               for L in layers]
        prm = self._params(layers, alphas, mus)
        self._last = (layers, mus)
        self._steps = 1
        if not layers or iters <= 0:
            with torch.no_grad():
                return eng.run_rows(start, lam, const, None, params=prm if layers else None)
        groups = [{"params": alphas, "lr": opt.lr_alpha}]
        if any(m is not None for m in mus):
            groups.append({"params": [m for m in mus if m is not None], "lr": opt.lr_mu})
        adam = Adam(groups)
        sched = ExponentialDecay(adam, opt.decay)
        best = torch.full((R,), -math.inf, dtype=lam.dtype, device=lam.device)
        live = torch.arange(R, device=lam.device)  # the rows still optimised (indices into best)
        mus_out = [None if m is None else m.detach().clone() for m in mus]  # every row's last μ
        cap = max(iters, max_iters) if more is not None else iters
        for it in range(cap):
            self._steps = it + 1
            last = it == cap - 1 or (deadline is not None and time.perf_counter() > deadline) or (
                it >= iters - 1 and not more(it + 1))
            with torch.set_grad_enabled(not last):
                val = eng.run_rows(start, lam, const, None, params=prm)
            best[live] = torch.maximum(best[live], val.detach())
            if last or (stop_above is not None and bool((best > stop_above).all())):
                break
            adam.zero_grad()
            (-val.sum()).backward()
            adam.step()
            sched.step()
            with torch.no_grad():
                for a in alphas:
                    a.clamp_(0, 1)
                for m in mus:
                    if m is not None:
                        m.clamp_(min=0)
            done = torch.zeros(R, dtype=torch.bool, device=lam.device)
            if settled is not None:
                done |= settled(best)
            if stop_above is not None:
                done |= best > stop_above
            keep = ~done[live]
            n_keep = int(keep.sum())
            if n_keep == 0:
                break
            if n_keep <= (1.0 - RETIRE_AT) * live.numel():
                with torch.no_grad():
                    for out, m in zip(mus_out, mus):
                        if m is not None:
                            out[live] = m.detach()
                sel = keep.nonzero().squeeze(1)
                live, lam, const = live[sel], lam[sel], const[sel]
                adam, new = adam.keep_rows(sel)
                alphas = [new[id(a)] for a in alphas]
                mus = [None if m is None else new[id(m)] for m in mus]
                prm = self._params(layers, alphas, mus)
                sched = ExponentialDecay(adam, opt.decay)
        with torch.no_grad():
            for out, m in zip(mus_out, mus):
                if m is not None:
                    out[live] = m.detach()
        self._last = (layers, mus_out)
        return best

    def _tighten(self, pre: Node, deadline: float | None, more=None) -> None:
        lo, hi = self._bounds(pre)
        unstable = ((lo < 0) & (hi > 0)).nonzero().squeeze(1)
        k = int(unstable.numel())
        if k == 0:
            return
        lam = lo.new_zeros(2 * k, pre.numel)
        r = torch.arange(k)
        lam[r, unstable] = 1.0
        lam[r + k, unstable] = -1.0
        def stable(best: torch.Tensor) -> torch.Tensor:
            """Both rows of a neuron whose proved bounds make it stable (``l ≥ 0`` or ``u ≤ 0``): its
            relaxation is exact whatever the other bound, so neither row needs more steps."""
            s = (best[:k] >= 0) | (best[k:] >= 0)
            return torch.cat([s, s])

        best = self._optimise(pre, lam, self.opt.iters, deadline, settled=stable, more=more,
                              max_iters=self.opt.max_iters)
        self.stats.steps.append(self._steps)
        nlo, nhi = lo.clone(), hi.clone()
        nlo[unstable] = torch.maximum(lo[unstable], best[:k])
        nhi[unstable] = torch.minimum(hi[unstable], -best[k:])
        nhi = torch.maximum(nhi, nlo)  # crossing only from rounding on an (almost) empty set
        self.engine.store(pre, 2, nlo.reshape(1, *pre.shape), nhi.reshape(1, *pre.shape))

    def _query(self, pre: Node):
        """Octahedral query of ``pre``: upper bounds of rows ``C·z`` with heuristic slopes over the
        current bounds (the engine's plain pass would reuse relaxations fixed from older bounds)."""
        layers = self._ancestors(pre)

        def upper(C: np.ndarray) -> np.ndarray:
            lam = -torch.as_tensor(C, dtype=self.engine.dtype, device=self.engine.device)
            R = lam.shape[0]
            prm = self._params(layers, [self._heuristic_alpha(L.relu, R) for L in layers], [None] * len(layers))
            with torch.no_grad():
                lb = self.engine.run_rows(pre, lam, lam.new_zeros(R), None, params=prm if layers else None)
            return (-lb).cpu().double().numpy()

        return upper

    def _rows(self, L: _Layer, deadline: float | None) -> None:
        pre = L.relu.parents[0]
        lo, hi = self._bounds(pre)
        rows = layer_hull_rows(lo.cpu().double().numpy(), hi.cpu().double().numpy(), self._query(pre), self.krelu,
                               deadline=deadline, max_query_rows=self.opt.query_rows)
        L.rows = rows
        if rows.num_rows:
            L.constraints = GroupedConstraints(rows, dtype=self.engine.dtype, device=self.engine.device)
            self.stats.groups += len(rows.groups)
            self.stats.rows += rows.num_rows

    # -- the schedule ---------------------------------------------------------------------------
    def _layer_deadline(self, i: int, deadline: float | None) -> float | None:
        """Layer ``i``'s share of the time left: an equal part for it and each layer after it, so a
        deadline never leaves the deeper layers with DeepPoly's bounds (what one layer does not use
        passes on to the next ones)."""
        if deadline is None:
            return None
        now = time.perf_counter()
        return now + max(deadline - now, 0.0) / max(len(self.layers) - i, 1)

    def _cost_weights(self) -> list[float]:
        """Projected relative cost of each layer's tightening: its unstable neurons (current bounds,
        so DeepPoly's, an over-count, for the layers not yet tightened) times the ReLU layers its rows
        pass back through."""
        out = []
        for L in self.layers:
            pre = L.relu.parents[0]
            lo, hi = self._bounds(pre)
            out.append(float(((lo < 0) & (hi > 0)).sum()) * max(len(self._ancestors(pre)), 1))
        return out

    def _more_steps(self, i: int, started: float, deadline: float | None):
        """The test that lets layer ``i`` run past ``iters`` steps (up to ``max_iters``): only with a
        deadline, and only while the time left after this step covers the later layers at ``iters``
        steps each, projected from this layer's time per step, scaled by the cost weights and by the
        hull-row time measured so far (rows of this layer and the target rows counted as one more
        layer's worth). A stage that runs short of time thus never trades later layers' steps for
        extra ones here; one with time to spare spends it where the earliest layers' gains compound."""
        if deadline is None or self.opt.max_iters <= self.opt.iters:
            return None
        w = self._cost_weights()
        if w[i] <= 0:
            return None
        later = sum(w[i + 1:]) / w[i]
        st = self.stats

        def more(steps: int) -> bool:
            now = time.perf_counter()
            per_step = (now - started) / max(steps, 1)
            rows_factor = 1.0 + st.rows_s / (st.tighten_s + now - started)  # hull-row time per tightening second
            reserve = per_step * self.opt.iters * (later + 1.0) * rows_factor * self.opt.reserve_factor
            return now + per_step + reserve < deadline

        return more

    def run(self, deadline: float | None = None) -> TightenStats:
        """Tighten every ReLU input and build every ReLU's rows, in topological order (see module docstring).

        Stops (``stats.complete = False``) at ``deadline``; everything done so far stays valid."""
        st = self.stats
        for i, L in enumerate(self.layers):
            pre = L.relu.parents[0]
            lo, hi = self._bounds(pre)
            st.unstable_before.append(int(((lo < 0) & (hi > 0)).sum()))
            if deadline is not None and time.perf_counter() > deadline:
                st.complete = False
                break
            t0 = time.perf_counter()
            if not (pre.parents and pre.parents[0].boxlike) and self._ancestors(pre):
                self._tighten(pre, self._layer_deadline(i, deadline), more=self._more_steps(i, t0, deadline))
            lo, hi = self._bounds(pre)
            self.engine.store(L.relu, 2, lo.clamp(min=0).reshape(1, *L.relu.shape),
                              hi.clamp(min=0).reshape(1, *L.relu.shape))
            st.unstable_after.append(int(((lo < 0) & (hi > 0)).sum()))
            t1 = time.perf_counter()
            st.tighten_s += t1 - t0
            if self.krelu is not None and self.krelu.k >= 2 and i >= self.opt.rows_from:
                self._rows(L, deadline)
            st.rows_s += time.perf_counter() - t1
        return st

    def bound_rows(self, target: Node, C: torch.Tensor, *, iters: int | None = None, deadline: float | None = None,
                   stop_above: float | None = 0.0) -> torch.Tensor:
        """Best proved lower bounds ``[m]`` of ``C·target`` (``C``: ``[m, numel]``) with α and μ on every ReLU."""
        lam = torch.as_tensor(C, dtype=self.engine.dtype, device=self.engine.device).reshape(-1, target.numel)
        return self._optimise(target, lam, self.opt.final_iters if iters is None else iters, deadline, stop_above)

    def bound_safety_rows(self, target: Node, C: np.ndarray, d: np.ndarray, deadline: float | None) -> np.ndarray:
        """Proved lower bounds of ``C·target + d`` (numpy, float64), each row optimised until it is above
        0 or ``deadline``: :meth:`bound_rows`, then ``+ d`` rounded down, a proved bound of the real
        sum (not only of its sign)."""
        lower = self.bound_rows(target, C, deadline=deadline, stop_above=float(-np.min(d)))
        return sum_lower(lower.detach().cpu().double(), torch.as_tensor(d, dtype=torch.float64)).numpy()

    def active_rows(self, tol: float = 0.0) -> dict[str, tuple[HullRows, np.ndarray]]:
        """After :meth:`bound_rows`: per ReLU node name, the hull rows some target row put a multiplier
        ``> tol`` on, and those multipliers ``[m, K']`` (a warm start for sub-problems: typically 5–20 %
        of the rows carry all the weight)."""
        out: dict[str, tuple[HullRows, np.ndarray]] = {}
        layers, mus = getattr(self, "_last", ([], []))
        for L, mu in zip(layers, mus):
            if mu is None or L.rows is None or L.constraints is None:
                continue
            cons = L.constraints
            m = cons.from_grouped(mu.detach().clamp(min=0))
            keep = (m > tol).any(0).cpu().numpy()
            if keep.any():
                out[L.relu.name] = (L.rows.select(keep), m[:, torch.as_tensor(keep, device=m.device)].cpu().numpy())
        return out

    def preactivation_bounds(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Current (tightened) bounds of every ReLU input, flat, by node name."""
        out = {}
        for L in self.layers:
            pre = L.relu.parents[0]
            lo, hi = self._bounds(pre)
            out[pre.name] = (lo.detach().cpu().double().numpy().copy(), hi.detach().cpu().double().numpy().copy())
        return out

    def constraints(self) -> dict[str, HullRows]:
        """The hull rows of every ReLU node that has some, by node name."""
        return {L.relu.name: L.rows for L in self.layers if L.rows is not None and L.rows.num_rows}


def start_region(view: GraphView, engine: Engine, lower: torch.Tensor, upper: torch.Tensor,
                 krelu: KReluOptions | None, options: TightenOptions = TightenOptions(),
                 known: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> MultiNeuronBounds:
    """A :class:`MultiNeuronBounds` over the box ``[lower, upper]`` (shaped like the view's input; no
    hull rows when ``krelu`` is None or has ``k < 2``), DeepPoly-style bounds to start from, with the
    bounds ``known`` (proved elsewhere: node name → flat ``(lower, upper)``) stored first, in
    topological order, so every relaxation is fixed from the tightest bounds known."""
    shape = (1, *view.input.shape)
    engine.store(view.input, 2, lower.reshape(shape).to(engine.dtype), upper.reshape(shape).to(engine.dtype))
    for node in view:
        if known and node.parents and node.name in known:
            engine.bounds(node, 2)  # its ancestors first, in topological order
            lo, hi = known[node.name]
            engine.store(node, 2, torch.as_tensor(lo, dtype=engine.dtype, device=engine.device).reshape(1, *node.shape),
                         torch.as_tensor(hi, dtype=engine.dtype, device=engine.device).reshape(1, *node.shape))
    return MultiNeuronBounds(view, engine, krelu if krelu is not None and krelu.k >= 2 else None, options)


#: the target rows get at least this part of the time left after the tightening
ROWS_MIN_SHARE = 0.1


def rows_deadline(share_end: float | None, end: float | None, now: float) -> float | None:
    """When bounding the target rows stops, after the tightening had until ``share_end``: at least
    :data:`ROWS_MIN_SHARE` of the time left to ``end`` (the run's limit) whatever the tightening
    used, never beyond ``end``; ``None`` (no limit) without an ``end``."""
    if end is None:
        return None
    if share_end is None:
        return end
    return min(end, max(share_end, now + ROWS_MIN_SHARE * (end - now)))
