"""One refinement run on one input box: domain pass + LP/MILP tightening + k-ReLU + final check.

The flow follows ERAN's ``refinepoly``/``refinezono`` for fully connected networks:

1. propagate with the domain (DeepPoly / DeepZ / Box) through :func:`absint.interpreter.propagate`;
   a ``refine`` hook runs after every node:

   * at a node feeding a ReLU (from the ``refine_from``-th ReLU layer on) the unstable neurons are
     tightened by minimising / maximising them over the LP (MILP for the first ``n_milp_refine``
     tightened layers) of the network prefix with the bounds proved so far ("Boosting Robustness
     Certification of Neural Networks", Singh et al., ICLR 2019); the proved bounds go back into the
     element with :meth:`Domain.meet_box`, so the next ReLU relaxation uses them;
   * at a ReLU, k-ReLU hull rows are computed from the domain's octahedral bounds (kPoly,
     NeurIPS 2019) and kept for every later LP;

2. the safety rows are bounded by the domain; rows not yet proved get the final LP (triangle +
   k-ReLU rows), then, if still unproved, a partial MILP (binaries on the widest unstable neurons
   of the last layers, as in PRIMA's refinement) or the complete MILP (``final="milp"``).

Only :attr:`SolveResult.proved_bound` is ever used; any other status keeps the previous bound and
records a note. Time: per-solve limits plus the global ``deadline`` (remaining solves are skipped).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from absint.interpreter import bounds_recorder, propagate
from absint.ir import Add, Affine, Graph, Op, Relu
from absint.refine.encoding import Encoding, KReluRows, NetworkEncoder
from absint.refine.krelu_rows import krelu_rows
from absint.refine.options import RefineOptions
from absint.domains.alpha import AlphaBounder, AlphaOptions, chain_of
from absint.domains.base import Domain
from absint.solvers import SolveOptions, SolveResult, Status, get_backend
from absint.solvers.parallel import solve_objectives

log = logging.getLogger(__name__)

__all__ = ["RefineRun", "RunResult"]


@dataclass
class RunResult:
    """Proved lower bounds of the rows of one sample and what happened on the way."""

    lower: np.ndarray
    candidate: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    bounds: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def _remaining(deadline: float | None) -> float:
    return np.inf if deadline is None else deadline - time.perf_counter()


def _meet(a: tuple[np.ndarray, np.ndarray] | None, b: tuple[np.ndarray, np.ndarray] | None):
    """Intersection of two sound bound pairs (either may be None)."""
    if a is None or b is None:
        return b if a is None else a
    lo, hi = np.maximum(a[0], b[0]), np.minimum(a[1], b[1])
    bad = lo > hi  # only rounding noise can cross sound bounds: keep the hull there
    if bad.any():
        lo[bad], hi[bad] = np.minimum(a[0], b[0])[bad], np.maximum(a[1], b[1])[bad]
    return lo, hi


def _solve_options(time_limit: float, deadline: float | None, backend: str | None) -> SolveOptions | None:
    """Options for one solve: ``time_limit`` capped by the time left before ``deadline`` (None when
    less than 50 ms are left). One thread on Gurobi; HiGHS keeps its default (it refuses to change
    ``threads`` once its global scheduler runs, and the MIP then fails)."""
    left = _remaining(deadline)
    if left <= 0.05:
        return None
    return SolveOptions(time_limit=float(max(0.01, min(time_limit, left))), threads=1 if backend == "gurobi" else None)


def _flat(t: torch.Tensor) -> np.ndarray:
    return t.detach().reshape(-1).cpu().double().numpy().copy()


class RefineRun:
    """Runs :class:`RefineOptions` on one sample (``lower``/``upper`` of shape ``[1, *input]``)."""

    def __init__(self, graph: Graph, domain: Domain, options: RefineOptions, encoder: NetworkEncoder | None = None,
                 *, tolerance: float = 1e-8) -> None:
        self.graph = graph
        self.domain = domain
        self.opt = options
        self.encoder = encoder or NetworkEncoder(graph)
        self.tol = tolerance
        relus = [n for n in graph.nodes if isinstance(n, Relu)]
        #: pre-activation node name -> index of the ReLU layer it feeds
        self.pre_index = {r.inputs[0]: i for i, r in enumerate(relus)}
        self.relu_names = [r.name for r in relus]
        chain = chain_of(graph) if options.alpha_iters > 0 else None
        self.alpha = None if chain is None else AlphaBounder(
            chain, AlphaOptions(iters=options.alpha_iters, final_iters=2 * options.alpha_iters), device=domain.device)
        lp = options.lp_tighten
        #: per-neuron LP tightening (layers not done by MILP): pointless after α unless k-ReLU rows join
        self.lp_tighten = (self.alpha is None or (options.krelu_tighten and options.use_krelu)) if lp is None else lp

    # -- solving ------------------------------------------------------------------------------
    def _solve(self, enc: Encoding, objectives: list[tuple[dict[int, float], str]], time_limit: float,
               deadline: float | None, notes: list[str], what: str) -> list[SolveResult | None]:
        """Solve objectives one by one (chunks of ``workers`` processes), each within ``time_limit`` and
        the time left before ``deadline``; results are None where skipped because of the deadline."""
        out: list[SolveResult | None] = [None] * len(objectives)
        keep = what.startswith("final") or what.startswith("partial")
        workers = max(1, int(self.opt.workers))
        chunk = 1 if workers == 1 else 4 * workers
        session = None
        backend = self._backend_for(enc)
        if backend == "gurobi" and self.opt.solve_threads > 1:
            return self._solve_threaded(enc, objectives, time_limit, deadline, notes, what, keep)
        try:
            if workers == 1:
                session = get_backend(backend).session(enc.model)
            for s0 in range(0, len(objectives), chunk):
                opts = _solve_options(time_limit, deadline, backend)
                if opts is None:
                    notes.append(f"{what}: {len(objectives) - s0} solve(s) skipped, time limit reached")
                    break
                part = objectives[s0:s0 + chunk]
                if session is not None:
                    c, sense = part[0]
                    session.set_objective(c, sense)
                    res = session.solve(opts)
                    out[s0] = res if keep else res.without_arrays()
                else:
                    for j, res in enumerate(solve_objectives(enc.model, part, backend=backend, options=opts,
                                                             workers=workers, keep_solutions=keep)):
                        out[s0 + j] = res
        except Exception as exc:  # noqa: BLE001 - a failing solver never crashes the analysis
            log.warning("%s: solver failed (%s: %s); keeping the previous bounds", what, type(exc).__name__, exc)
            notes.append(f"{what}: solver failed ({type(exc).__name__}: {exc})")
        finally:
            if session is not None:
                session.close()
        return out

    def _solve_threaded(self, enc: Encoding, objectives: list[tuple[dict[int, float], str]], time_limit: float,
                        deadline: float | None, notes: list[str], what: str, keep: bool) -> list[SolveResult | None]:
        """Gurobi solves in ``solve_threads`` threads (gurobipy releases the GIL while optimising;
        each thread has its own environment), in order, each within the time left."""
        from concurrent.futures import ThreadPoolExecutor

        from absint.solvers.gurobi_backend import GurobiBackend

        out: list[SolveResult | None] = [None] * len(objectives)
        _ = enc.model.A  # assemble the shared constraint matrix once, before the threads read it
        skipped = 0

        def one(j: int) -> None:
            nonlocal skipped
            opts = _solve_options(time_limit, deadline, "gurobi")
            if opts is None:
                skipped += 1
                return
            c, sense = objectives[j]
            res = GurobiBackend().solve(enc.model.with_objective(c, sense), opts)
            out[j] = res if keep else res.without_arrays()

        try:
            with ThreadPoolExecutor(max_workers=int(self.opt.solve_threads)) as pool:
                list(pool.map(one, range(len(objectives))))
        except Exception as exc:  # noqa: BLE001 - a failing solver never crashes the analysis
            log.warning("%s: solver failed (%s: %s); keeping the previous bounds", what, type(exc).__name__, exc)
            notes.append(f"{what}: solver failed ({type(exc).__name__}: {exc})")
        if skipped:
            notes.append(f"{what}: {skipped} solve(s) skipped, time limit reached")
        return out

    def _backend_for(self, enc: Encoding) -> str | None:
        """The backend for ``enc``: the chosen one, or (auto) Gurobi when licensed for the model's
        size (it solves the small per-neuron MILPs ~5x faster than HiGHS here), else HiGHS."""
        if self.opt.backend is not None:
            return self.opt.backend
        from absint.solvers.gurobi_backend import fits_licence

        return "gurobi" if fits_licence(enc.model) else None

    @staticmethod
    def _proved(res: SolveResult | None) -> float | None:
        if res is None or res.proved_bound is None or not np.isfinite(res.proved_bound):
            return None
        return float(res.proved_bound)

    # -- tightening of one layer ----------------------------------------------------------------
    def _tighten(self, node: Op, lo: np.ndarray, hi: np.ndarray, in_lo: np.ndarray, in_hi: np.ndarray,
                 bounds: dict, krelu: dict[str, KReluRows], layer: int, deadline: float | None,
                 notes: list[str], stats: dict, use_milp: bool,
                 check: "Callable[[np.ndarray, np.ndarray], bool] | None" = None) -> tuple[np.ndarray, np.ndarray]:
        """Tighten the unstable neurons of ``node`` (widest first) by LP/MILP; ``check(lo, hi)`` is
        called after every ``check_every`` neurons and stops the layer when it returns True."""
        opt = self.opt
        unstable = np.flatnonzero((lo < 0) & (hi > 0))
        if unstable.size == 0:
            return lo, hi
        # widest first (−l·u, the triangle's area up to a factor): a deadline cuts the least useful
        unstable = unstable[np.argsort(lo[unstable] * hi[unstable], kind="stable")]
        if opt.max_refine_neurons is not None and unstable.size > opt.max_refine_neurons:
            unstable = unstable[: opt.max_refine_neurons]
        enc = self.encoder.build(in_lo, in_hi, bounds, upto=node.name, binaries=use_milp,
                                 krelu=krelu if opt.krelu_tighten else None, name=f"tighten:{node.name}")
        z = enc.vars[node.name]
        objs: list[tuple[dict[int, float], str]] = []
        for i in unstable:
            objs.append(({int(z[i]): 1.0}, "min"))
            objs.append(({int(z[i]): 1.0}, "max"))
        t0 = time.perf_counter()
        limit = opt.timeout_milp if (use_milp and enc.model.is_mip) else opt.timeout_lp
        lo, hi = lo.copy(), hi.copy()
        failed = 0
        step = len(unstable) if check is None or opt.check_every <= 0 else int(opt.check_every)
        for s0 in range(0, len(unstable), step):
            part = unstable[s0:s0 + step]
            res = self._solve(enc, objs[2 * s0:2 * (s0 + len(part))], limit, deadline, notes, f"tighten {node.name}")
            for j, i in enumerate(part):
                pl, pu = self._proved(res[2 * j]), self._proved(res[2 * j + 1])
                if pl is None or pu is None:
                    failed += int(pl is None) + int(pu is None)
                if pl is not None:
                    lo[i] = max(lo[i], pl)
                if pu is not None:
                    hi[i] = min(hi[i], pu)
            crossed = lo > hi
            if crossed.any():  # rounding noise on near-degenerate neurons: keep the hull of both
                lo[crossed], hi[crossed] = np.minimum(lo, hi)[crossed], np.maximum(lo, hi)[crossed]
            if _remaining(deadline) <= 0.05 or (check is not None and check(lo, hi)):
                break
        if failed:
            notes.append(f"tighten {node.name}: {failed} solve(s) without a proved bound (kept the old bounds)")
        st = stats.setdefault("tighten", [])
        st.append({"node": node.name, "milp": bool(use_milp and enc.model.is_mip), "neurons": int(unstable.size),
                   "seconds": time.perf_counter() - t0,
                   "unstable_after": int(((lo < 0) & (hi > 0)).sum()), "vars": enc.model.num_vars,
                   "rows": enc.model.num_rows})
        return lo, hi

    # -- the run ------------------------------------------------------------------------------
    def run(self, lower: torch.Tensor, upper: torch.Tensor, C: np.ndarray, d: np.ndarray,
            deadline: float | None = None) -> RunResult:
        """Bounds of the rows ``C y + d`` (``C``: ``[m, n_out]``) on the box ``[lower, upper]`` (``[1, *in]``)."""
        opt, dom, g = self.opt, self.domain, self.graph
        in_lo, in_hi = _flat(lower), _flat(upper)
        self._in_lo, self._in_hi = in_lo, in_hi
        notes: list[str] = []
        stats: dict[str, Any] = {}
        bounds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        elements: dict[str, Any] = {}
        krelu: dict[str, KReluRows] = {}
        pending: list[tuple] = []
        t_start = time.perf_counter()
        # tightening stops early enough to leave the final LP/MILP its share of the time
        t_deadline = None if deadline is None else t_start + opt.tighten_share * (deadline - t_start)

        early: dict[str, Any] = {}  # "rows": proved rows once every row is proved mid-way

        def hook(node: Op, element: Any) -> Any:
            if early:
                return element  # everything is proved: no more refinement work
            if isinstance(node, (Affine, Add)) and node.name in self.pre_index:
                lo_t, hi_t = dom.bounds(element)
                lo, hi = _flat(lo_t), _flat(hi_t)
                layer = self.pre_index[node.name]
                changed = False
                if self.alpha is not None and layer > 0 and _remaining(t_deadline) > 0.1:
                    t0 = time.perf_counter()
                    lo, hi = _meet(first_bounds.get(node.name), self._alpha_layer(layer, lo, hi, bounds, t_deadline))
                    changed = True
                    st = stats.setdefault("alpha", [])
                    st.append({"node": node.name, "seconds": time.perf_counter() - t0,
                               "unstable_after": int(((lo < 0) & (hi > 0)).sum())})
                use_milp = opt.tighten and (layer - opt.refine_from) < opt.n_milp_refine
                if opt.tighten and layer >= opt.refine_from and (use_milp or self.lp_tighten) \
                        and _remaining(t_deadline) > 0.1:
                    def rows_proved(lo_, hi_, layer=layer):
                        self._early_check(layer, lo_, hi_, bounds, first_bounds, C, d, lower, upper, early,
                                          t_deadline)
                        return bool(early)
                    check = rows_proved if self.alpha is not None else None
                    lo, hi = self._tighten(node, lo, hi, in_lo, in_hi, bounds, krelu, layer, t_deadline, notes,
                                           stats, use_milp, check)
                    changed = True
                if changed:
                    shape = lo_t.shape
                    element = dom.meet_box(element, torch.as_tensor(lo, dtype=dom.dtype).reshape(shape),
                                           torch.as_tensor(hi, dtype=dom.dtype).reshape(shape))
                bounds[node.name] = (lo, hi)
            elif isinstance(node, Relu) and opt.use_krelu and node.inputs[0] in bounds:
                if not opt.krelu_tighten:  # only the final LP uses them: compute them when needed
                    pending.append((node.name, elements[node.inputs[0]], *bounds[node.inputs[0]]))
                elif _remaining(t_deadline) > 0.5:
                    plo, phi = bounds[node.inputs[0]]
                    t0 = time.perf_counter()
                    rows, st = krelu_rows(dom, elements[node.inputs[0]], plo, phi, opt.krelu, t_deadline)  # type: ignore[arg-type]
                    krelu[node.name] = rows
                    stats.setdefault("krelu", []).append({"node": node.name, "rows": rows.num_rows,
                                                          "seconds": time.perf_counter() - t0, **st})
                else:
                    notes.append(f"k-ReLU {node.name}: skipped, time limit reached")
            elements[node.name] = element
            return element

        refine = opt.tighten or opt.use_krelu
        Ct = torch.as_tensor(C, dtype=dom.dtype, device=dom.device)[None]
        dt = torch.as_tensor(d, dtype=dom.dtype, device=dom.device)[None]
        if refine:
            # Cheap first: the plain domain pass may already prove every row.
            first_bounds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            first = propagate(g, dom, lower, upper, refine=self._record(first_bounds, dom))
            first_rows = dom.linear_bounds(first.output, Ct, dt)[0].detach().cpu().double().numpy().copy()
            if np.all(first_rows > self.tol):
                stats["domain_pass_s"] = time.perf_counter() - t_start
                stats["domain_lower"] = first_rows.copy()
                return RunResult(first_rows, notes=notes, stats=stats, bounds=bounds)
            if self.alpha is not None:
                # optimised slopes over the whole network: ~0.5 s on 6x100, proves many rows outright
                t0 = time.perf_counter()
                res = self.alpha.run(lower, upper, *self._layer_lists(first_bounds, len(self.relu_names)),
                                     torch.as_tensor(C, dtype=torch.float64), torch.as_tensor(d, dtype=torch.float64),
                                     deadline=t_deadline)
                first_rows = np.maximum(first_rows, res.rows.detach().cpu().numpy())
                for n, a, b in zip(self.alpha.chain.pre_names, res.pre_lo, res.pre_hi):
                    first_bounds[n] = (a.cpu().numpy().copy(), b.cpu().numpy().copy())
                stats["alpha_pass_s"] = time.perf_counter() - t0
                if np.all(first_rows > self.tol):
                    stats["domain_lower"] = first_rows.copy()
                    return RunResult(first_rows, notes=notes, stats=stats, bounds=first_bounds)
            if opt.give_up_below is not None and float(first_rows.min()) < opt.give_up_below:
                stats["domain_lower"] = first_rows.copy()
                notes.append(f"refinement skipped: bound {float(first_rows.min()):.3g} below give_up_below="
                             f"{opt.give_up_below:g}")
                return RunResult(first_rows, notes=notes, stats=stats, bounds=first_bounds)
        else:
            first_bounds = {}
        prop = propagate(g, dom, lower, upper, keep_all=False, refine=hook if refine else self._record(bounds, dom))
        stats["domain_pass_s"] = time.perf_counter() - t_start
        lower_rows = dom.linear_bounds(prop.output, Ct, dt)[0].detach().cpu().double().numpy().copy()
        if refine:  # both passes are sound: keep the better bound of each row
            lower_rows = np.maximum(lower_rows, first_rows)
        if early:
            lower_rows = np.maximum(lower_rows, early["rows"])
            stats["early_exit_layer"] = early["layer"]
        stats["domain_lower"] = lower_rows.copy()
        result = RunResult(lower_rows, notes=notes, stats=stats, bounds=bounds)
        todo = np.flatnonzero(lower_rows <= self.tol)
        if todo.size == 0:
            return result
        out_lo, out_hi = dom.bounds(prop.output)
        bounds[g.output] = (_flat(out_lo), _flat(out_hi))
        for name, element, plo, phi in pending:
            if _remaining(deadline) <= 0.5:
                notes.append(f"k-ReLU {name}: skipped, time limit reached")
                break
            t0 = time.perf_counter()
            rows, st = krelu_rows(dom, element, plo, phi, opt.krelu, deadline)  # type: ignore[arg-type]
            krelu[name] = rows
            stats.setdefault("krelu", []).append({"node": name, "rows": rows.num_rows,
                                                  "seconds": time.perf_counter() - t0, **st})
        if self.alpha is not None:  # optimised slopes over the final bounds: cheap, often enough
            t0 = time.perf_counter()
            res = self.alpha.run(lower, upper, *self._layer_lists(bounds, len(self.relu_names)),
                                 torch.as_tensor(C[todo], dtype=torch.float64), torch.as_tensor(d[todo], dtype=torch.float64),
                                 layers=False, deadline=deadline)
            result.lower[todo] = np.maximum(result.lower[todo], res.rows.detach().cpu().numpy())
            stats["alpha_final_s"] = time.perf_counter() - t0
            todo = todo[result.lower[todo] <= self.tol]
            if todo.size == 0:
                stats["total_s"] = time.perf_counter() - t_start
                return result
        self._final(result, todo, C, d, in_lo, in_hi, bounds, krelu, deadline)
        stats["total_s"] = time.perf_counter() - t_start
        return result

    def _early_check(self, layer: int, lo: np.ndarray, hi: np.ndarray, bounds: dict, first_bounds: dict,
                     C: np.ndarray, d: np.ndarray, lower: torch.Tensor, upper: torch.Tensor, early: dict,
                     deadline: float | None) -> None:
        """After tightening ``layer``: re-bound the later layers (from the first pass's bounds, met with
        nothing new, so sound) and the rows with optimised slopes; if every row is proved, record
        them in ``early`` so the remaining (expensive) refinement is skipped."""
        assert self.alpha is not None
        names = self.alpha.chain.pre_names
        merged = {n: _meet(first_bounds.get(n), bounds.get(n)) for n in names}
        merged[names[layer]] = _meet(first_bounds.get(names[layer]), (lo, hi))
        if any(v is None for v in merged.values()):
            return
        res = self.alpha.run(lower, upper, *self._layer_lists(merged, len(names)),
                             torch.as_tensor(C, dtype=torch.float64), torch.as_tensor(d, dtype=torch.float64),
                             from_layer=layer + 1, deadline=deadline)
        rows = res.rows.detach().cpu().numpy()
        if np.all(rows > self.tol):
            early.update(rows=rows, layer=layer)

    def _layer_lists(self, bounds: dict, upto: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Bounds of ReLU layers ``< upto`` as float64 tensors (from ``bounds``, keyed by pre-activation name)."""
        names = self.alpha.chain.pre_names[:upto]  # type: ignore[union-attr]
        return ([torch.as_tensor(bounds[n][0], dtype=torch.float64) for n in names],
                [torch.as_tensor(bounds[n][1], dtype=torch.float64) for n in names])

    def _alpha_layer(self, layer: int, lo: np.ndarray, hi: np.ndarray, bounds: dict,
                     deadline: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Layer ``layer``'s bounds tightened with optimised slopes over the bounds proved before it."""
        assert self.alpha is not None
        los, his = self._layer_lists(bounds, layer)
        los.append(torch.as_tensor(lo, dtype=torch.float64))
        his.append(torch.as_tensor(hi, dtype=torch.float64))
        mid = torch.as_tensor((self._in_lo + self._in_hi) / 2, dtype=torch.float64)
        rad = torch.as_tensor((self._in_hi - self._in_lo) / 2, dtype=torch.float64)
        l1, u1 = self.alpha.layer_bounds(layer, los, his, mid, rad, deadline=deadline)
        return l1.detach().cpu().numpy().copy(), u1.detach().cpu().numpy().copy()

    @staticmethod
    def _record(bounds: dict, dom: Domain):
        return bounds_recorder(dom, lambda node: isinstance(node, (Affine, Add)), bounds, _flat)

    # -- final check --------------------------------------------------------------------------
    def _row_objectives(self, enc: Encoding, C: np.ndarray, rows: np.ndarray) -> list[tuple[dict[int, float], str]]:
        y = enc.vars[self.graph.output]
        objs = []
        for r in rows:
            nz = np.flatnonzero(C[r])
            objs.append(({int(y[j]): float(C[r, j]) for j in nz}, "min"))
        return objs

    def _check_candidate(self, x: np.ndarray, C: np.ndarray, d: np.ndarray, r: int) -> np.ndarray | None:
        """The solver's input clipped into the box, kept only if it violates row ``r`` on the network."""
        x = np.clip(x, self._in_lo.reshape(x.shape), self._in_hi.reshape(x.shape))
        with torch.no_grad():
            y = self.graph.forward(torch.as_tensor(x[None], dtype=self.graph.dtype)).reshape(-1).cpu().numpy()
        return x if float(C[r] @ y + d[r]) < 0 else None

    def _apply_rows(self, result: RunResult, enc: Encoding, rows: np.ndarray, res: list, C: np.ndarray,
                    d: np.ndarray, what: str, exact: bool) -> None:
        missing = 0
        for r, s in zip(rows, res):
            p = self._proved(s)
            if p is None:
                missing += 1
                continue
            result.lower[r] = max(result.lower[r], p + float(d[r]))
            if s is not None and s.x is not None and s.objective is not None and s.objective + d[r] < 0 \
                    and result.candidate is None and (exact or s.status is Status.OPTIMAL):
                result.candidate = self._check_candidate(enc.input_values(s.x, self.graph), C, d, r)
        if missing:
            result.notes.append(f"{what}: {missing} row(s) without a proved bound")

    def _final(self, result: RunResult, todo: np.ndarray, C: np.ndarray, d: np.ndarray, in_lo, in_hi,
               bounds: dict, krelu: dict[str, KReluRows], deadline: float | None) -> None:
        opt = self.opt
        t0 = time.perf_counter()
        complete = opt.final == "milp"
        enc = self.encoder.build(in_lo, in_hi, bounds, binaries=complete, krelu=krelu, name="final")
        limit = opt.timeout_final_milp if complete else opt.timeout_final_lp
        if complete:
            # one row at a time: stop as soon as one row is refuted with a concrete optimum
            for r in todo:
                res = self._solve(enc, self._row_objectives(enc, C, np.array([r])), limit, deadline, result.notes,
                                  "final")
                self._apply_rows(result, enc, np.array([r]), res, C, d, "final MILP", exact=True)
                if result.candidate is not None:
                    break  # a concrete optimum below zero: verify re-checks it as a counterexample
        else:
            res = self._solve(enc, self._row_objectives(enc, C, todo), limit, deadline, result.notes, "final")
            self._apply_rows(result, enc, todo, res, C, d, "final LP", exact=False)
        result.stats["final_s"] = time.perf_counter() - t0
        result.stats["final_size"] = (enc.model.num_vars, enc.model.num_rows, enc.model.num_integer)
        todo = todo[result.lower[todo] <= self.tol]
        if todo.size and not complete and opt.final_bab and self.alpha is not None:
            left = min(opt.final_bab_share * _remaining(deadline), opt.final_bab_timeout)
            bab_deadline = time.perf_counter() + left
            self._final_bab(result, todo, C, d, in_lo, in_hi, bounds, bab_deadline)
            todo = todo[result.lower[todo] <= self.tol]
        if todo.size == 0 or complete or opt.partial_milp_layers <= 0 or opt.max_milp_neurons <= 0:
            return
        # PRIMA-style partial MILP: binaries for the widest unstable neurons of the last layers. While
        # time is left and the MILP was solved (not cut by the clock), escalate: one more layer and
        # twice the binaries per layer, until every unstable neuron of the network is binary.
        t1 = time.perf_counter()
        n_layers, n_neurons, total = opt.partial_milp_layers, opt.max_milp_neurons, 0
        while todo.size and _remaining(deadline) > 1.0:
            sel = self._partial_selection(bounds, n_layers, n_neurons)
            if not sel or int(sum(v.size for v in sel.values())) <= total:
                break  # nothing new to make binary
            total = int(sum(v.size for v in sel.values()))
            enc = self.encoder.build(in_lo, in_hi, bounds, binaries=sel, krelu=krelu, name="partial-milp")
            cut = False
            for r in todo:
                res = self._solve(enc, self._row_objectives(enc, C, np.array([r])), opt.timeout_final_milp,
                                  deadline, result.notes, "partial MILP")
                cut = cut or res[0] is None or res[0].status is not Status.OPTIMAL
                self._apply_rows(result, enc, np.array([r]), res, C, d, "partial MILP", exact=False)
                if result.lower[r] <= self.tol:
                    # Rows are treated as a conjunction (robustness): once one stays unproved the
                    # rest keep their LP bounds (still sound) instead of spending more MILP time.
                    break
            todo = todo[result.lower[todo] <= self.tol]
            result.stats.setdefault("partial_milp_rounds", []).append(total)
            if cut:
                break
            n_layers, n_neurons = n_layers + 1, 2 * n_neurons
        result.stats["partial_milp_s"] = time.perf_counter() - t1
        result.stats["partial_milp_binaries"] = total

    def _final_bab(self, result: RunResult, todo: np.ndarray, C: np.ndarray, d: np.ndarray, in_lo: np.ndarray,
                   in_hi: np.ndarray, bounds: dict, deadline: float | None) -> None:
        """ReLU-split branch and bound with α/β bounding (β-CROWN style, :mod:`absint.bab.beta`) over the
        refined intermediate bounds; only a *verified* search (every leaf closed) raises the rows."""
        from absint.bab.analysis import BabAnalysis
        from absint.bab.beta import BetaBounder, BetaOptions
        from absint.bab.options import BabOptions
        from absint.specs import InputBox

        t0 = time.perf_counter()
        try:
            an = BabAnalysis(options=BabOptions(split="relu", bounding="alpha-beta"))
            region = InputBox(in_lo.reshape(self.graph.input_shape), in_hi.reshape(self.graph.input_shape))
            Cs, ds = C[todo], d[todo]
            search = an.make_search(self.graph, region, Cs, ds, np.arange(len(todo)))
            strat = search.s
            los, his = self._layer_lists(bounds, len(self.relu_names))
            strat.beta = BetaBounder(strat.b.graph, strat.lo, strat.hi, strat.C, strat.d, BetaOptions(),
                                     root_pre=(los, his), deadline=deadline)
            res = search.run(deadline=deadline)
        except Exception as exc:  # noqa: BLE001 - an optional stage never crashes the analysis
            log.warning("final BaB failed (%s: %s)", type(exc).__name__, exc)
            result.notes.append(f"final BaB failed ({type(exc).__name__}: {exc})")
            return
        result.stats["final_bab"] = {"status": res.status, "proved": res.proved, "seconds": time.perf_counter() - t0,
                                     "bounded": res.stats.get("bounded", 0)}
        if res.status == "verified" and res.row_min is not None:
            result.lower[todo] = np.maximum(result.lower[todo], res.row_min)
        elif res.status == "falsified" and res.counterexample is not None and result.candidate is None:
            result.candidate = np.asarray(res.counterexample).reshape(self.graph.input_shape)

    def _partial_selection(self, bounds: dict, n_layers: int, n_neurons: int) -> dict[str, np.ndarray]:
        """The ``n_neurons`` widest unstable neurons of each of the last ``n_layers`` ReLU layers."""
        sel: dict[str, np.ndarray] = {}
        for name in self.relu_names[-n_layers:]:
            pre = self.graph.node(name).inputs[0]
            if pre not in bounds:
                continue
            lo, hi = bounds[pre]
            un = np.flatnonzero((lo < 0) & (hi > 0))
            if un.size:
                sel[name] = un[np.argsort(lo[un] * hi[un], kind="stable")[:n_neurons]]
        return sel
