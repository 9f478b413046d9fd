"""Optimised-slope + split-multiplier bounds for ReLU-split sub-problems (β-CROWN) on the bound engine.

Wang, Zhang, Xu, Lin, Jana, Hsieh, Kolter, "Beta-CROWN: Efficient Bound Propagation with
Per-neuron Split Constraints for Neural Network Robustness Verification", NeurIPS 2021.

A sub-problem is the root input box plus a phase per ReLU (``+1``: ``z ≥ 0``, ``−1``: ``z ≤ 0``,
``0``: free), on any graph the engine handles (residual ``Add`` included). Its bound:

1. The root's intermediate bounds (DeepPoly over the graph view, intersected with given bounds,
   then slope-optimised per layer, :mod:`absint.domains.linear_bounds.optimize`) hold on every
   sub-problem. Per sub-problem they are clamped by its splits (active: ``l = max(l, 0)``,
   inactive: ``u = min(u, 0)``) and by its parent's bounds; contradictory bounds (``l > u``) make
   it empty (*infeasible*, proved vacuously).
2. With ``tighten``, the ReLU inputs of the ``tighten_depth`` layers after the newest split (all
   later layers when ``None``) are re-bounded per sub-problem by the engine (DeepPoly slopes over
   the clamped bounds; split ReLUs are exact).
3. Each safety row ``c·y + d`` is bounded by one backward pass per (sub-problem, open row) pair
   with per-row slopes ``α ∈ [0, 1]`` on the root-unstable neurons and split multipliers ``β ≥ 0``
   (:mod:`absint.domains.linear_bounds.params`): every value is sound, so both are optimised by
   projected Adam and the best bound seen is kept. Children warm-start from their parent's ``α``,
   ``β`` (stored packed on the root-unstable neurons, float32) and bounds.
4. With ``opt_dtype="float32"`` the Adam steps run on a float32 copy of the batch's relaxation (the
   same ReLU-input bounds, cast to nearest, with an engine that skips the rounding-error term: its
   values are estimates); they only choose ``α``, ``β``, ``μ``. The bounds reported are those of one
   float64 pass with the best values found, so the speed of float32 (1.2–2.9x the sub-problems in
   the same time on mnistfc, benchmarks/RESULTS.md) costs nothing in rigour.

Sub-problems with no unstable unsplit ReLU left get ``leaf_iters`` more iterations (there the bound
is the Lagrangian dual of an LP, exact at the optimal ``β``) before the search reports them stuck.
Every number is rigorous in real arithmetic (the engine's rounding accounting).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from absint.bab.options import check_tighten_depth
from absint.ir import Affine, Graph, Relu
from absint.domains.linear_bounds import Engine, EngineOptions, GraphView, NodeParams, Params
from absint.domains.linear_bounds.api import deeppoly_view
from absint.domains.linear_bounds.graph import NONLINEAR
from absint.domains.linear_bounds.optimize import SlopeOptimiser, SlopeOptions
from absint.domains.linear_bounds.rows import RowLayout
from absint.domains.relaxations import relu_lower_slope
from absint.optim import RETIRE_AT, Adam

__all__ = ["BetaOptions", "BetaOut", "BetaBounder", "BetaReluSplitting"]


@dataclass(frozen=True)
class BetaOptions:
    """``iters`` Adam steps per batch (``lr_alpha``, ``lr_beta``); ``root_iters`` for the root's
    rows; ``layer_iters`` for the root's slope-optimised intermediate bounds (0: DeepPoly's only);
    ``tighten``: re-bound the intermediate bounds of the layers after each new split per
    sub-problem, at most ``tighten_depth`` layers of them (``None``: every later layer);
    ``leaf_iters`` for sub-problems with every ReLU decided; ``lr_mu``: step of the
    multipliers of extra constraints (k-ReLU hull rows, when the bounder is given some)."""

    iters: int = 20
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    lr_mu: float = 0.05
    root_iters: int = 100
    layer_iters: int = 30
    tighten: bool = True
    leaf_iters: int = 300
    tighten_depth: int | None = None
    opt_dtype: str = "float64"

    def __post_init__(self) -> None:
        check_tighten_depth(self.tighten_depth, "BetaOptions")
        if self.opt_dtype not in ("float32", "float64"):
            raise ValueError(f"BetaOptions.opt_dtype must be 'float32' or 'float64', not {self.opt_dtype!r}")


@dataclass
class BetaOut:
    rows: torch.Tensor  # [k, m] proved lower bounds of C y + d
    infeasible: torch.Tensor  # [k] bool
    A: torch.Tensor  # [k, m, n_in] input coefficients of the last backward pass (heuristics only)
    pre_lo: torch.Tensor  # [k, n_relu] clamped pre-activation bounds
    pre_hi: torch.Tensor
    coef: torch.Tensor  # [k, m, n_relu] coefficient of each post-ReLU value in the last pass
    alpha: torch.Tensor | None = None  # [k, m, U] best slopes on the root-unstable neurons (float32)
    beta: torch.Tensor | None = None  # [k, m, U] best multipliers on them


RootBounds = Mapping[str, tuple[Any, Any]] | tuple[list[torch.Tensor], list[torch.Tensor]]
#: extra constraints on ReLU layers, by ReLU node name: ``(rows, μ0)`` with ``rows`` the k-ReLU hull rows
#: (:class:`absint.domains.krelu.HullRows`, valid on the whole region) and ``μ0`` ``[m, K]`` the
#: multipliers to start from per safety row (e.g. the root's optimised ones) or None
Constraints = Mapping[str, tuple[Any, Any]]


class BetaBounder:
    """β-CROWN-style bounds of ``C y + d`` on ReLU-split sub-problems of one input box."""

    def __init__(self, graph: Graph, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor,
                 d: torch.Tensor, options: BetaOptions = BetaOptions(), *, root_pre: RootBounds | None = None,
                 constraints: Constraints | None = None, deadline: float | None = None) -> None:
        self.opt = options
        self.dtype = torch.float64
        self.graph = graph.to("cpu", self.dtype)
        self.lo_in = lower.reshape(-1).to(self.dtype)
        self.hi_in = upper.reshape(-1).to(self.dtype)
        self.C, self.d = C.to(self.dtype), d.to(self.dtype)
        # the optimisation's own precision (its values only choose α, β, μ; every reported bound
        # comes from a float64 pass with the chosen values)
        self.odtype = self.dtype
        if options.opt_dtype == "float32" and _within_float32(self.graph, self.lo_in, self.hi_in, self.C, self.d):
            self.odtype = torch.float32
        self.ograph = self.graph if self.odtype == self.dtype else graph.to("cpu", self.odtype)
        t0 = time.perf_counter()
        names = [n.inputs[0] for n in self.graph.nodes if isinstance(n, Relu)]
        self.pre_names = names
        if root_pre is not None and not isinstance(root_pre, Mapping):  # (lists per ReLU layer)
            root_pre = {n: (a, b) for n, a, b in zip(names, root_pre[0], root_pre[1])}
        view, engine = deeppoly_view(self.graph, self.lo_in[None], self.hi_in[None],
                                     options=EngineOptions(early_stop=False), given=root_pre)
        if options.layer_iters > 0:
            opt = SlopeOptimiser(view, engine, SlopeOptions(iters=options.layer_iters, final_iters=0))
            opt.run(view.output, self.C[None], self.d[None], deadline=deadline, stop_above=None)
        pre = [view[n] for n in names]
        self.root_lo = [engine.cached(p)[0].detach().reshape(-1).clone() for p in pre]
        self.root_hi = [engine.cached(p)[1].detach().reshape(-1).clone() for p in pre]
        self.sizes = [int(t.numel()) for t in self.root_lo]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        # Only root-unstable neurons ever get an optimised slope or a split: their per-sub-problem
        # α/β are stored (float32, [k, m, U]) to warm-start the children.
        self.unst = [torch.nonzero((l < 0) & (u > 0)).reshape(-1) for l, u in zip(self.root_lo, self.root_hi)]
        self.upos = [sum(int(t.numel()) for t in self.unst[:j]) for j in range(len(self.unst))]
        self.n_unstable = sum(int(t.numel()) for t in self.unst)
        self.root_alpha: list[torch.Tensor | None] = [None] * len(self.sizes)
        self.cons = self._constraints(constraints, self.dtype)
        self.ocons = self.cons if self.odtype == self.dtype else self._constraints(constraints, self.odtype)
        splits0 = torch.zeros(1, sum(self.sizes), dtype=torch.int8)
        out = self.bound(splits0, iters=options.root_iters, deadline=deadline, keep_alpha=True)
        self.root_rows = out.rows[0]
        self.root_out = out
        self.stats = {"root_seconds": time.perf_counter() - t0,
                      "unstable_root": [int(t.numel()) for t in self.unst]}

    def _constraints(self, constraints: Constraints | None, dtype: torch.dtype) -> dict[int, tuple[Any, torch.Tensor]]:
        """Per ReLU layer ``j``: the slot filler of its k-ReLU rows and the multipliers every sub-problem's
        optimisation starts from (``[m, K]``, one row per safety row: the root's, or zeros)."""
        out: dict[int, tuple[Any, torch.Tensor]] = {}
        if not constraints:
            return out
        from absint.domains.krelu.constraints import GroupedConstraints

        names = [n.name for n in self.graph.nodes if isinstance(n, Relu)]
        m = self.C.shape[0]
        for j, name in enumerate(names):
            if name not in constraints:
                continue
            rows, mu0 = constraints[name]
            if rows is None or rows.num_rows == 0:
                continue
            gc = GroupedConstraints(rows, dtype=dtype)
            start = torch.zeros(m, gc.num_rows, dtype=dtype) if mu0 is None else \
                gc.to_grouped(torch.as_tensor(mu0, dtype=dtype).reshape(m, -1)).clamp(min=0)
            out[j] = (gc, start)
        return out

    # ---------------------------------------------------------------------------------------
    def _layer(self, splits: torch.Tensor, j: int):
        s = splits[:, self.offsets[j]:self.offsets[j] + self.sizes[j]].to(self.dtype)
        l = torch.where(s > 0, self.root_lo[j].clamp(min=0)[None], self.root_lo[j][None])
        u = torch.where(s < 0, self.root_hi[j].clamp(max=0)[None], self.root_hi[j][None])
        return s, l, u

    def _view(self, per_layer: list, infeasible: torch.Tensor, from_layer: torch.Tensor | None,
              estimate: bool = False):
        """A graph view for the ``k`` sub-problems with each ReLU input's bounds set (clamped; with
        ``tighten``, re-bounded from ``from_layer`` on and clamped again). ``estimate``: the copy the
        optimisation steps run on, in their dtype (bounds cast to nearest; pass no ``from_layer``) with an
        engine that skips the rounding-error term (its values only steer the steps)."""
        k = per_layer[0][1].shape[0] if per_layer else 1
        dt, graph = (self.odtype, self.ograph) if estimate else (self.dtype, self.graph)
        engine = Engine(EngineOptions(early_stop=True, account_rounding=not estimate), dtype=dt)
        view = GraphView.of(graph, k)
        engine.store(view.input, 2, self.lo_in.to(dt)[None].expand(k, -1).reshape(k, *graph.input_shape),
                     self.hi_in.to(dt)[None].expand(k, -1).reshape(k, *graph.input_shape))
        index = {n: j for j, n in enumerate(self.pre_names)}
        first = None
        if self.opt.tighten and from_layer is not None:
            live = from_layer[~infeasible] if bool((~infeasible).any()) else from_layer
            first = int(live.min()) if live.numel() else None
        for node in view:
            j = index.get(node.name)
            if j is not None:
                s, l, u = per_layer[j]
                shape = (k, *node.shape)
                if first is not None and j >= first and j > 0:
                    # re-bound the unstable, unsplit neurons of the sub-problems split before layer j
                    engine.store(node, 1, l.reshape(shape), u.reshape(shape))
                    near = from_layer <= j
                    if self.opt.tighten_depth is not None:
                        near &= j < from_layer + self.opt.tighten_depth
                    mask = (s == 0) & near[:, None] & ~infeasible[:, None]
                    lo, hi = engine.rebound(node, mask)
                    lo, hi = lo.reshape(k, -1), hi.reshape(k, -1)
                    infeasible |= (lo > hi).any(1)
                    hi = torch.maximum(hi, lo)
                    node.cache["lower"], node.cache["upper"] = lo.reshape(shape), hi.reshape(shape)
                    per_layer[j] = (s, lo, hi)
                else:
                    engine.store(node, 2, l.to(dt).reshape(shape), u.to(dt).reshape(shape))
            if isinstance(node.op, NONLINEAR):
                engine.relax(node)
        return view, engine

    def _unpack(self, packed, j: int, base: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``base`` ``[R, U_j]`` with the entries of layer ``j`` taken from ``packed`` ``[R, U]``."""
        idx = self.unst[j]
        if packed is None or idx.numel() == 0:
            return base
        return packed[:, self.upos[j]:self.upos[j] + idx.numel()].to(dtype)

    def _pack(self, params: dict[int, torch.Tensor], R: int) -> torch.Tensor:
        parts = []
        for j, idx in enumerate(self.unst):
            t = params.get(j)
            parts.append(t.float() if t is not None else torch.zeros(R, idx.numel()))
        return torch.cat(parts, -1)

    def bound(self, splits: torch.Tensor, *, iters: int | None = None, deadline: float | None = None,
              keep_alpha: bool = False, stop_above: float | None = None, init_alpha: torch.Tensor | None = None,
              init_beta: torch.Tensor | None = None, open_rows: torch.Tensor | None = None,
              pre: tuple[torch.Tensor, torch.Tensor] | None = None, from_layer: torch.Tensor | None = None) -> BetaOut:
        """Bounds of the rows on the sub-problems ``splits`` ``[k, n_relu]`` (int8 phases).

        ``init_alpha``/``init_beta`` (``[k, m, U]``, e.g. the parents') warm-start the
        optimisation; ``open_rows`` (``[k, m]`` bool): only these rows are bounded, the others get
        ``−inf`` (the caller keeps the parent's bound for them). ``pre``: bounds ``[k, n_relu]``
        known to hold on each sub-problem (its parent's); ``from_layer`` ``[k]``: re-bound the
        intermediate bounds of the layers from this one on."""
        iters = self.opt.iters if iters is None else iters
        k = splits.shape[0]
        m = self.C.shape[0]
        infeasible = torch.zeros(k, dtype=torch.bool)
        per_layer = []
        for j in range(len(self.sizes)):
            s, l, u = self._layer(splits, j)
            if pre is not None:  # the parent's bounds hold on the child too
                l = torch.maximum(l, pre[0][:, self.offsets[j]:self.offsets[j] + self.sizes[j]])
                u = torch.minimum(u, pre[1][:, self.offsets[j]:self.offsets[j] + self.sizes[j]])
            infeasible |= (l > u).any(1)
            per_layer.append((s, l, torch.maximum(u, l)))  # empty sub-problems: any consistent values
        view, engine = self._view(per_layer, infeasible, from_layer)
        los = torch.cat([p[1] for p in per_layer], 1)
        his = torch.cat([p[2] for p in per_layer], 1)
        if open_rows is None:
            open_rows = torch.ones(k, m, dtype=torch.bool)
        open_rows = open_rows & ~infeasible[:, None]
        uniform = k > 1 and bool(open_rows.float().mean() > 0.5)
        if uniform:  # bound every row of every sub-problem: a [k, m] layout broadcasts, no gathers
            open_rows = torch.ones(k, m, dtype=torch.bool)
        pairs = torch.nonzero(open_rows)
        sub, row = pairs[:, 0], pairs[:, 1]
        R = int(sub.numel())
        U = self.n_unstable
        rows_out = torch.full((k, m), -float("inf"), dtype=self.dtype)
        A_out = torch.zeros(k, m, self.lo_in.numel(), dtype=self.dtype)
        coef_out = torch.zeros(k, m, sum(self.sizes), dtype=self.dtype)
        alpha_out = init_alpha.clone() if init_alpha is not None else torch.zeros(k, m, U)
        beta_out = init_beta.clone() if init_beta is not None else torch.zeros(k, m, U)
        if R == 0:
            return BetaOut(rows_out, infeasible, A_out, los, his, coef_out, alpha_out, beta_out)
        layout = RowLayout.per_member(k, m) if uniform else RowLayout(sub if k > 1 else None, k)
        ia = init_alpha[sub, row] if init_alpha is not None else None
        ib = init_beta[sub, row] if init_beta is not None else None
        masks = []
        for j, (s, l, u) in enumerate(per_layer):
            masks.append(((l < 0) & (u > 0), (l >= 0).to(self.dtype), s))
        exact = _Pass(engine, view, masks, layout, self.C[row], self.d[row], self.cons, self.dtype)
        split32 = iters > 0 and self.odtype != self.dtype and all(
            _small(l) and _small(u) for _, l, u in per_layer)
        if split32:  # optimise on a copy of the view in the optimisation's dtype
            oview, oengine = self._view(per_layer, infeasible, None, estimate=True)
            omasks = [(un, ac.to(self.odtype), s.to(self.odtype)) for un, ac, s in masks]
            run = _Pass(oengine, oview, omasks, layout, self.C[row].to(self.odtype),
                        self.d[row].to(self.odtype), self.ocons, self.odtype)
        else:
            run = exact
        odt = run.dtype
        alphas: dict[int, torch.Tensor] = {}
        betas: dict[int, torch.Tensor] = {}
        for j, (s, l, u) in enumerate(per_layer):
            idx = self.unst[j]
            unstable = masks[j][0]
            if idx.numel() and bool(unstable[:, idx].any()):
                ra = self.root_alpha[j]
                base = ra[row] if ra is not None else layout.gather(relu_lower_slope(l, u)[:, idx], R)
                alphas[j] = self._unpack(ia, j, base.to(odt).clone(), odt).clamp(0, 1).requires_grad_(True)
            if idx.numel() and bool((s[:, idx] != 0).any()):
                base = torch.zeros(R, idx.numel(), dtype=odt)
                betas[j] = self._unpack(ib, j, base, odt).clamp(min=0).requires_grad_(True)
        # multipliers of the k-ReLU rows: every sub-problem starts from the root's (the rows hold on
        # every sub-problem, so any μ ≥ 0 is sound there)
        mus = {j: m0[row].clone().requires_grad_(True) for j, (_, m0) in run.cons.items()}
        record: dict = {}

        with torch.no_grad():
            best = run(self, alphas, betas, mus, record)
        best_alpha = {j: a.detach().clone() for j, a in alphas.items()}
        best_beta = {j: b.detach().clone() for j, b in betas.items()}
        best_mu = {j: mu.detach().clone() for j, mu in mus.items()}
        last_record = dict(record)
        params = list(alphas.values()) + list(betas.values()) + list(mus.values())
        if iters > 0 and params:
            groups = []
            if alphas:
                groups.append({"params": list(alphas.values()), "lr": self.opt.lr_alpha})
            if betas:
                groups.append({"params": list(betas.values()), "lr": self.opt.lr_beta})
            if mus:
                groups.append({"params": list(mus.values()), "lr": self.opt.lr_mu})
            adam = Adam(groups)
            # rows are independent problems (each has its own α, β and μ over fixed intermediate
            # bounds), so a row proved above ``stop_above`` is retired from the later steps: the
            # others' steps are unchanged. ``live``: the rows still optimised (None: all R).
            live: torch.Tensor | None = None
            R0 = R
            for it in range(iters):
                if deadline is not None and time.perf_counter() > deadline:
                    break
                if stop_above is not None and bool((best > stop_above).all()):
                    break
                record.clear()
                val = run(self, alphas, betas, mus, record)
                with torch.no_grad():
                    v = val.detach()
                    cur = best if live is None else best[live]
                    better = v > cur
                    for bests, now in ((best_alpha, alphas), (best_beta, betas), (best_mu, mus)):
                        for j, a in now.items():
                            if live is None:
                                bests[j] = torch.where(better[:, None], a.detach(), bests[j])
                            else:
                                bests[j][live] = torch.where(better[:, None], a.detach(), bests[j][live])
                    if live is None:
                        best = torch.maximum(best, v)
                        last_record = dict(record)
                    else:
                        best[live] = torch.maximum(cur, v)
                        for key, t in record.items():
                            last_record[key][live] = t
                adam.zero_grad()
                (-val.sum()).backward()
                adam.step()
                with torch.no_grad():
                    for a in alphas.values():
                        a.clamp_(0, 1)
                    for b in betas.values():
                        b.clamp_(min=0)
                    for mu in mus.values():
                        mu.clamp_(min=0)
                if stop_above is None or it == iters - 1:
                    continue
                keep = best[live] <= stop_above if live is not None else best <= stop_above
                n_keep = int(keep.sum())
                if n_keep == 0 or n_keep > (1.0 - RETIRE_AT) * keep.numel():
                    continue
                sel = keep.nonzero().squeeze(1)
                if live is None:
                    live = torch.arange(R0)
                    last_record = {key: t.clone() for key, t in last_record.items()}
                live = live[sel]
                adam, new = adam.keep_rows(sel)
                alphas = {j: new[id(a)] for j, a in alphas.items()}
                betas = {j: new[id(b)] for j, b in betas.items()}
                mus = {j: new[id(mu)] for j, mu in mus.items()}
                run = run.keep(sel)
            R = R0
        if split32:  # the reported bounds: one float64 pass with the chosen values
            with torch.no_grad():
                record.clear()
                # (a step that overflowed in float32 may have left NaN: 0 is a sound value of each)
                best = exact(self, *({j: torch.nan_to_num(t.to(self.dtype), nan=0.0) for j, t in chosen.items()}
                                     for chosen in (best_alpha, best_beta, best_mu)), record)
            last_record = dict(record)
        if keep_alpha:
            for j, a in best_alpha.items():
                self.root_alpha[j] = a.clone()  # root: one pair per row, in row order
        best = torch.where(infeasible[sub], torch.full_like(best, -float("inf")), best.detach())
        rows_out[sub, row] = best
        if "input" in last_record:
            A_out[sub, row] = last_record["input"].to(self.dtype)
        coefs = [last_record.get(id(node), torch.zeros(R, self.sizes[j], dtype=self.dtype)).to(self.dtype)
                 for j, node in enumerate(exact.relus)]
        coef_out[sub, row] = torch.cat(coefs, -1) if coefs else coef_out[sub, row]
        alpha_out[sub, row] = self._pack(best_alpha, R)
        beta_out[sub, row] = self._pack(best_beta, R)
        return BetaOut(rows_out, infeasible, A_out, los, his, coef_out, alpha_out, beta_out)


#: values cast to float32 for the optimisation steps stay below this magnitude (float32 ends at 3.4e38;
#: the passes multiply bounds by products of weights, so with headroom); beyond it the steps run in float64
FLOAT32_RANGE = 1e15


def _small(t: torch.Tensor) -> bool:
    return t.numel() == 0 or bool(t.abs().max() < FLOAT32_RANGE)


def _within_float32(graph: Graph, *tensors: torch.Tensor) -> bool:
    """Whether the weights of ``graph`` and ``tensors`` are all below :data:`FLOAT32_RANGE` in magnitude."""
    vals = list(tensors) + [t for n in graph.nodes if isinstance(n, Affine) for t in n.tensors()]
    return all(_small(torch.as_tensor(t)) for t in vals)


class _Pass:
    """Backward passes of the safety rows ``lam0·y + d`` of the sub-problems with given slopes α,
    split multipliers β and hull-row multipliers μ, in one dtype: the engine and view, per ReLU layer
    the masks ``(unstable, active, phase)``, the rows' layout (the rows still optimised)."""

    def __init__(self, engine: Engine, view: GraphView, masks: list, layout: RowLayout, lam0: torch.Tensor,
                 d: torch.Tensor, cons: dict, dtype: torch.dtype) -> None:
        self.engine, self.view, self.masks, self.layout = engine, view, masks, layout
        self.lam0, self.d, self.cons, self.dtype = lam0, d, cons, dtype
        self.relus = view.relus()
        #: per ReLU layer, the parts of the rows' lower slopes that do not depend on α (built at the
        #: first pass): the slopes of the stable neurons, which root-unstable ones are unstable here,
        #: and the slope those of them that are not keep
        self.fixed: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def keep(self, sel: torch.Tensor) -> "_Pass":
        """The same passes on the rows ``sel`` only."""
        out = _Pass(self.engine, self.view, self.masks, self.layout.keep(sel), self.lam0[sel], self.d[sel],
                    self.cons, self.dtype)
        out.fixed = {j: tuple(t[sel] for t in parts) for j, parts in self.fixed.items()}
        return out

    def __call__(self, bb: "BetaBounder", alphas: dict, betas: dict, mus: dict, record: dict | None) -> torch.Tensor:
        R, layout, dt = self.lam0.shape[0], self.layout, self.dtype
        prm = Params()
        for j, node in enumerate(self.relus):
            unstable, active, s = self.masks[j]
            idx = bb.unst[j]
            a, b = alphas.get(j), betas.get(j)
            ls = None
            if a is not None:
                if j not in self.fixed:
                    base = layout.gather(active, R)
                    un = layout.gather(unstable[:, idx].to(dt), R)
                    self.fixed[j] = (base, un, (1 - un) * base[:, idx])
                base, un, keep = self.fixed[j]
                ls = base.index_copy(1, idx, un * a + keep)
            beta = None
            if b is not None:
                beta = (s, torch.zeros(R, bb.sizes[j], dtype=dt).index_copy(1, idx, b))
            mu = (self.cons[j][0], mus[j]) if j in mus else None
            prm.set(node, NodeParams(alpha=ls, beta=beta, mu=mu))
        # d enters as the pass's constant, so the rounding of adding it is accounted too
        return self.engine.run_rows(self.view.output, self.lam0, self.d, layout.bidx, layout=layout, params=prm,
                                    record=record)


# -- the splitting strategy --------------------------------------------------------------------
from absint.bab.common import clause_bounds, worst_rows  # noqa: E402
from absint.bab.relu_split import ReluSplitting  # noqa: E402


class BetaReluSplitting(ReluSplitting):
    """ReLU splitting with sub-problems bounded by :class:`BetaBounder` (built lazily on the first
    batch, within its deadline; ``root_bounds``: bounds of some nodes proved elsewhere, by name).
    ``babsr`` scores use the backward pass's own coefficients: for the worst open row,
    ``max(−c_j, 0)·(−u l/(u − l))`` (the chord intercept the bound pays at neuron ``j``, Bunel et al.
    2020) plus a smaller term for the lower line on ``c_j > 0``."""

    #: sub-problems per look-ahead call of :meth:`BetaBounder.bound` (bounds memory: its outputs
    #: hold ``[k, m, n_in]`` input coefficients)
    FSB_CHUNK = 512

    def __init__(self, bounder, region, C, d, onehot, heuristic: str = "babsr", attack: bool = True,
                 options: BetaOptions = BetaOptions(), root_bounds: RootBounds | None = None,
                 constraints: Constraints | None = None, fsb_candidates: int = 3) -> None:
        super().__init__(bounder, region, C, d, onehot, heuristic, attack)
        self.beta_options = options
        self.root_bounds = root_bounds
        self.constraints = constraints
        self.fsb_candidates = fsb_candidates
        self.beta: BetaBounder | None = None
        self._deadline: float | None = None

    def _ensure(self, deadline):
        if self.beta is None:
            self.beta = BetaBounder(self.b.graph, self.lo, self.hi, self.C, self.d, self.beta_options,
                                    root_pre=self.root_bounds, constraints=self.constraints, deadline=deadline)
            if self.beta.sizes != self.b.sizes:
                raise ValueError("ReLU layers of the engine and of the graph differ")
        return self.beta

    def bound(self, batch, deadline):
        self._deadline = deadline  # the look-ahead of ``fsb`` branching honours it too
        bb = self._ensure(deadline)
        if deadline is not None and time.perf_counter() > deadline:
            raise TimeoutError("time limit reached before bounding the sub-problems")
        # rows of clauses the parent already refuted keep the parent's bound (the engine takes the max)
        rl = batch["row_lb"]
        clause_lb = clause_bounds(rl, self.onehot)
        open_rows = ((clause_lb <= 1e-8)[:, None, :] & self.onehot[None]).any(-1)
        pre = (batch["pre_lo"], batch["pre_hi"]) if "pre_lo" in batch else None
        out = bb.bound(batch["splits"], deadline=deadline, stop_above=1e-6, open_rows=open_rows,
                       init_alpha=batch.get("alpha"), init_beta=batch.get("beta"), pre=pre,
                       from_layer=batch.get("from_layer"))
        rows = out.rows
        # Leaves (no unstable unsplit ReLU left) that are still open: the relaxation is exact there
        # up to the optimisation of β (Lagrangian dual of a linear program), so optimise them longer
        # before the engine reports them stuck.
        leaf = ~((out.pre_lo < 0) & (out.pre_hi > 0) & (batch["splits"] == 0)).any(1) & ~out.infeasible
        rl_new = torch.maximum(rows, rl)
        cl = clause_bounds(rl_new, self.onehot)
        leaf &= (cl <= 1e-8).any(1)
        if bool(leaf.any()) and (deadline is None or time.perf_counter() < deadline):
            idx = torch.nonzero(leaf).reshape(-1)
            sub = bb.bound(batch["splits"][idx], iters=self.beta_options.leaf_iters, deadline=deadline,
                           stop_above=1e-6, init_alpha=out.alpha[idx], init_beta=out.beta[idx],
                           pre=(out.pre_lo[idx], out.pre_hi[idx]), open_rows=open_rows[idx])
            rows = rows.clone()
            rows[idx] = torch.maximum(rows[idx], sub.rows)
        extra = {"A": out.A, "pre_lo": out.pre_lo, "pre_hi": out.pre_hi, "coef": out.coef,
                 "alpha": out.alpha, "beta": out.beta}
        return rows, out.infeasible, extra

    def choose(self, batch, extra, rows, open_clause):
        """``fsb``: filtered smart branching (De Palma et al., "Improved Branch and Bound for Neural
        Network Verification via Lagrangian Decomposition", arXiv 2021; as in β-CROWN). The
        ``fsb_candidates`` neurons with the best ``babsr`` scores are each split for a look-ahead:
        both children are bounded in one batched pass with the parent's α, β and intermediate bounds
        (no optimisation steps, no re-bounding: cheap, and sound like every engine pass), on the rows
        of the parent's worst open clause only. The neuron whose worse child bounds that clause
        highest wins (ties: the better ``babsr`` score). The winner's child bounds are returned, so
        a child the look-ahead already proves is closed without being bounded again."""
        if self.heuristic != "fsb" or extra is None or extra.get("alpha") is None or self.beta is None \
                or (self._deadline is not None and time.perf_counter() > self._deadline):
            return super().choose(batch, extra, rows, open_clause)
        scores = self._scores(batch, extra, rows, open_clause)
        k, n = scores.shape
        K = min(self.fsb_candidates, n)
        top_s, top_j = scores.topk(K, dim=1)  # sorted: column 0 is babsr's choice
        splits = batch["splits"][:, None, None, :].repeat(1, K, 2, 1)  # [k, K, 2, n]
        kk, cc = torch.meshgrid(torch.arange(k), torch.arange(K), indexing="ij")
        splits[kk, cc, 0, top_j] = 1
        splits[kk, cc, 1, top_j] = -1
        splits = splits.reshape(k * K * 2, n)
        parent = torch.arange(k).repeat_interleave(2 * K)
        # only the rows of each parent's worst open clause are looked ahead (the one the split is for)
        worst_clause = clause_bounds(rows, self.onehot).masked_fill(~open_clause, float("inf")).argmin(dim=1)
        open_rows = self.onehot[:, worst_clause].T  # [k, m]
        child = torch.empty(k * K * 2, rows.shape[1], dtype=rows.dtype)
        vacuous = torch.zeros(k * K * 2, dtype=torch.bool)
        for s in range(0, splits.shape[0], self.FSB_CHUNK):
            i = parent[s:s + self.FSB_CHUNK]
            out = self.beta.bound(splits[s:s + self.FSB_CHUNK], iters=0, deadline=self._deadline,
                                  init_alpha=extra["alpha"][i], init_beta=extra["beta"][i],
                                  pre=(extra["pre_lo"][i], extra["pre_hi"][i]), open_rows=open_rows[i])
            child[s:s + self.FSB_CHUNK] = torch.maximum(out.rows, rows[i])
            vacuous[s:s + self.FSB_CHUNK] = out.infeasible
        # each child's bound of the parent's worst open clause (+inf: the child is empty)
        worst = clause_bounds(child, self.onehot).gather(1, worst_clause[parent][:, None]).squeeze(1)
        worst = worst.masked_fill(vacuous, float("inf")).reshape(k, K, 2)
        value = worst.min(dim=2).values.masked_fill(top_s < 0, -float("inf"))  # top_s < 0: not splittable
        pick = value.argmax(dim=1)  # first maximum: the better babsr score breaks ties
        ar = torch.arange(k)
        j = top_j[ar, pick]
        child = child.reshape(k, K, 2, -1)[ar, pick]  # [k, 2, m]
        return j, torch.cat([child[:, 0], child[:, 1]])

    def _scores(self, batch, extra, rows, open_clause):
        if self.heuristic not in ("babsr", "fsb"):
            return super()._scores(batch, extra, rows, open_clause)
        l, u = extra["pre_lo"], extra["pre_hi"]
        unstable = self._unstable(batch, extra)
        r = worst_rows(rows, self.onehot, open_clause)
        c = extra["coef"][torch.arange(rows.shape[0]), r]
        intercept = (-u * l / (u - l).clamp(min=1e-12)).clamp(min=0)
        score = (-c).clamp(min=0) * intercept + 0.25 * c.clamp(min=0) * torch.minimum(u, -l).clamp(min=0) \
            + 1e-6 * intercept
        return torch.where(unstable, score, torch.full_like(score, -1.0))

    def branch(self, batch, extra, rows, open_clause):
        children = super().branch(batch, extra, rows, open_clause)
        if extra is not None and extra.get("alpha") is not None:  # warm start: the parent's α, β
            children["alpha"] = torch.cat([extra["alpha"]] * 2)
            children["beta"] = torch.cat([extra["beta"]] * 2)
            children["pre_lo"] = torch.cat([extra["pre_lo"]] * 2)
            children["pre_hi"] = torch.cat([extra["pre_hi"]] * 2)
            # layer of the new split (the first changed position) + 1: the layers to re-tighten
            new = (children["splits"] != torch.cat([batch["splits"]] * 2)).to(torch.int8).argmax(dim=1)
            layer_of = torch.bucketize(new, torch.tensor(self.b.offsets[1:] + [self.b.n_relu]), right=True)
            children["from_layer"] = layer_of.to(torch.int32) + 1
        return children
