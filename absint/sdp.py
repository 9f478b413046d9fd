"""The ``sdp`` analysis: SDP-cert (Raghunathan, Steinhardt & Liang, NeurIPS 2018).

For each input box and each safety row ``C y + d`` the analysis

1. writes the network (any DAG of affine maps, ReLUs and residual sums) as dense blocks over the
   input and the ReLU outputs (:func:`relu_network`, on the engine's graph view) and computes
   pre-activation bounds of every ReLU layer with a domain (default ``"deeppoly"``: the linear-bound
   engine; ``bounds="box"``, ... — any registered domain, via
   :func:`absint.interpreter.propagate`),
2. removes stably inactive neurons and substitutes stably active ones
   (:func:`absint.solvers.sdp_problem.build_problem`),
3. solves the semidefinite relaxation exactly with cvxpy (:mod:`absint.solvers.sdp_exact`) or with the
   first-order dual method (:mod:`absint.solvers.sdp_fo`, in the spirit of SDP-FO, Dathathri et al.,
   NeurIPS 2020), and
4. reports the bound of a *dual certificate* (Lagrangian matrix corrected by its top eigenvalue
   times the trace bound), which is valid however inaccurate the solver was.

The row's final lower bound is the better of the SDP certificate and the domain's own bound
(both are sound), unless ``combine=False``. Rows the domain already proves are not solved.

Options (keyword arguments of the analysis, also through ``absint.verify(..., solver="fo")``):

* ``solver``: ``"exact"``, ``"fo"`` or ``"auto"`` (exact when the lifted matrix has at most
  ``exact_max_size`` rows — default 64: SCS needed 50–450 s at N = 137 here — else first-order),
* ``backend``: cvxpy backend for the exact solver (``"auto"``: MOSEK if licensed, else SCS),
* ``bounds``: domain for the pre-activation bounds (default ``"deeppoly"`` when registered, else
  ``"box"``),
* ``tol``, ``max_iters``: exact-solver accuracy / iteration cap; ``fo_options``: a
  :class:`absint.solvers.sdp_fo.FOOptions` or a dict of its fields,
* ``eliminate_stable``, ``preact_linear``, ``triangle``: problem construction (see
  :func:`absint.solvers.sdp_problem.build_problem`).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch

from absint.analyses import Analysis, BoundResult
from absint.domains.base import Domain
from absint.errors import OptionError, UnsupportedOpError
from absint.interpreter import propagate
from absint.ir import Add, Affine, Graph, Input, Relu, Reshape
from absint.options import Options
from absint.rounding import dot_error, inner_length, unit_roundoff
from absint.solvers.sdp_problem import ReluNetwork
from absint.domains.linear_bounds import GraphView
from absint.registry import DOMAINS, get_domain, names

log = logging.getLogger(__name__)
_U = unit_roundoff(torch.float64)

#: ``solver="auto"`` uses the exact SDP up to this side of the lifted matrix.
EXACT_MAX_SIZE = 64
#: the first-order solver stops a row once its certified margin exceeds this
STOP_MARGIN = 1e-6


def preactivation_bounds(graph: Graph, chain: Any, lower: torch.Tensor, upper: torch.Tensor, domain: str = "box",
                         *, device: torch.device | None = None, deadline: float | None = None
                         ) -> tuple[list[list[tuple[torch.Tensor, torch.Tensor]]], Any, Any]:
    """Per sample, the (lower, upper) bounds of each ReLU layer's pre-activation from ``domain``.

    Returns ``(bounds[b][k], domain, propagation)``; the propagation's output element is reused
    for the domain's own bound of the safety rows.
    """
    dom = get_domain(domain)(device=device)
    g = graph.to(device, dom.dtype)
    prop = propagate(g, dom, lower.to(device), upper.to(device), keep_all=True, deadline=deadline)
    per_layer = []
    for name in chain.preact_nodes:
        lo, hi = dom.bounds(prop.elements[name])
        per_layer.append((lo.reshape(lo.shape[0], -1), hi.reshape(hi.shape[0], -1)))
    B = lower.shape[0]
    out = [[(lo[b], hi[b]) for lo, hi in per_layer] for b in range(B)]
    return out, dom, prop


def relu_network(graph: Graph) -> ReluNetwork:
    """The :class:`ReluNetwork` of ``graph`` (any DAG of Affine / Reshape / Add / ReLU), from the
    engine's graph view: every node's value is written as a dense affine function of the variable
    blocks (the input and the ReLU outputs) it depends on; consecutive affine maps (normalisation,
    dense layers, convolutions) compose, residual sums add. The SDP-cert relaxation covers ReLU
    networks only: any other op (max-pooling, sigmoid, tanh) is reported with
    :class:`absint.errors.UnsupportedOpError`.
    """
    bad = [(n.name, n.kind, "SDP-cert's relaxation handles ReLU networks (Affine, Reshape, Add, Relu)")
           for n in graph.nodes if not isinstance(n, (Input, Affine, Relu, Reshape, Add))]
    if bad:
        raise UnsupportedOpError(bad, graph.name)
    view = GraphView.of(graph.to(graph.device, torch.float64))
    dtype, device = torch.float64, graph.device
    n_in = int(math.prod(graph.input_shape))
    # value of each node: {block: W [n_node, n_block]}, bias [n_node]
    reps: dict[int, tuple[dict[int, torch.Tensor], torch.Tensor]] = {}
    # rounding of each node's composed rep: ({block: EW}, eb) with |W − W_real| ≤ EW, |b − b_real| ≤ eb,
    # or None while the rep is exact (an identity block, or one operator applied to it)
    errs: dict[int, tuple[dict[int, torch.Tensor], torch.Tensor] | None] = {}
    identity: set[int] = set()  # nodes whose rep is a plain identity block
    layers: list[tuple[torch.Tensor, torch.Tensor]] = []
    errors: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    inputs: list[tuple[int, ...]] = []
    nodes: list[str] = []

    def dense(rep: dict[int, torch.Tensor], bias: torch.Tensor) -> tuple[tuple[int, ...], torch.Tensor]:
        blocks = tuple(sorted(rep))
        return blocks, torch.cat([rep[j] for j in blocks], 1)

    def dense_error(rep: dict[int, torch.Tensor], err) -> tuple[torch.Tensor, torch.Tensor] | None:
        if err is None:
            return None
        blocks = tuple(sorted(rep))
        return torch.cat([err[0].get(j, torch.zeros_like(rep[j])) for j in blocks], 1), err[1]

    for node in view:
        op = node.op
        if isinstance(op, Input):
            reps[id(node)] = ({-1: torch.eye(n_in, dtype=dtype, device=device)}, torch.zeros(n_in, dtype=dtype,
                                                                                            device=device))
            errs[id(node)] = None
            identity.add(id(node))
        elif isinstance(op, Affine):
            rep, bias = reps[id(node.parents[0])]
            lin = op.operator
            n_out = node.numel

            def apply(M: torch.Tensor) -> torch.Tensor:  # the operator on each column of M
                return lin.forward(M.T.reshape(M.shape[1], *lin.in_shape)).reshape(M.shape[1], n_out).T
            new_bias = apply(bias[:, None])[:, 0]
            fb = node.flat_bias()
            reps[id(node)] = ({j: apply(M).contiguous() for j, M in rep.items()},
                              new_bias if fb is None else new_bias + fb)
            parent = id(node.parents[0])
            if parent in identity:  # the operator's own entries and bias: exact
                errs[id(node)] = None
            else:  # A·W and A·b + bias in float: γ_n bounds of the products, plus earlier errors
                absop = lin.abs()

                def apply_abs(M: torch.Tensor) -> torch.Tensor:
                    return absop.forward(M.T.reshape(M.shape[1], *lin.in_shape)).reshape(M.shape[1], n_out).T
                n = inner_length(lin) + 1
                fba = 0 if fb is None else fb.abs()
                EW = {j: dot_error(apply_abs(M.abs()), n) for j, M in rep.items()}
                eb = dot_error(apply_abs(bias.abs()[:, None])[:, 0] + fba, n)
                old = errs[parent]
                if old is not None:
                    EW = {j: EW[j] + apply_abs(old[0][j]) if j in old[0] else EW[j] for j in EW}
                    eb = eb + apply_abs(old[1][:, None])[:, 0]
                errs[id(node)] = ({j: e * (1 + 1e-12) for j, e in EW.items()}, eb * (1 + 1e-12))
        elif isinstance(op, Reshape):
            reps[id(node)] = reps[id(node.parents[0])]
            errs[id(node)] = errs[id(node.parents[0])]
            if id(node.parents[0]) in identity:
                identity.add(id(node))
        elif isinstance(op, Add):
            (r1, b1), (r2, b2) = (reps[id(p)] for p in node.parents)
            rep = {j: r1.get(j, 0) + r2.get(j, 0) for j in set(r1) | set(r2)}
            reps[id(node)] = (rep, b1 + b2)
            # each sum is one rounding (u of its size), plus the operands' own errors
            e1, e2 = (errs[id(p)] for p in node.parents)
            EW = {j: 2 * _U * rep[j].abs() for j in rep}
            for e in (e1, e2):
                if e is not None:
                    for j, v in e[0].items():
                        EW[j] = EW[j] + v
            eb = 2 * _U * (b1 + b2).abs() + sum(e[1] for e in (e1, e2) if e is not None)
            errs[id(node)] = (EW, eb)
        else:  # ReLU: a new block
            rep, bias = reps[id(node.parents[0])]
            blocks, W = dense(rep, bias)
            layers.append((W, bias))
            errors.append(dense_error(rep, errs[id(node.parents[0])]))
            inputs.append(blocks)
            nodes.append(node.parents[0].name)
            k = len(layers) - 1
            reps[id(node)] = ({k: torch.eye(node.numel, dtype=dtype, device=device)},
                              torch.zeros(node.numel, dtype=dtype, device=device))
            errs[id(node)] = None
            identity.add(id(node))
    rep, bias = reps[id(view.output)]
    blocks, W = dense(rep, bias)
    errors.append(dense_error(rep, errs[id(view.output)]))
    return ReluNetwork(tuple(layers), (W, bias), tuple(nodes), n_in, tuple(inputs), blocks,
                       tuple(errors) if any(e is not None for e in errors) else None)


@dataclass(frozen=True)
class SDPOptions(Options):
    """Options of the SDP analyses (see the module docstring); ``solver=None`` is the analysis's
    own default (``auto`` for ``sdp``, ``exact`` for ``sdp-exact``, ``fo`` for ``sdp-fo``)."""

    solver: Literal["exact", "fo", "auto"] | None = None
    backend: str = "auto"
    bounds: str | None = None
    tol: float = 1e-6
    max_iters: int | None = None
    fo_options: Any = None
    eliminate_stable: bool = True
    preact_linear: bool = True
    triangle: bool = False
    combine: bool = True
    exact_max_size: int = EXACT_MAX_SIZE

    def check(self) -> None:
        if not self.tol > 0 or self.exact_max_size < 0 or (self.max_iters is not None and self.max_iters < 1):
            raise OptionError("sdp: tol must be > 0, exact_max_size ≥ 0 and max_iters ≥ 1")
        from absint.solvers.sdp_exact import EXACT_BACKENDS

        if self.backend != "auto" and self.backend not in EXACT_BACKENDS:
            raise OptionError(f"sdp: backend must be 'auto' or one of {', '.join(EXACT_BACKENDS)}, "
                              f"got {self.backend!r}")
        if self.fo_options is not None and not isinstance(self.fo_options, dict):
            from absint.solvers.sdp_fo import FOOptions

            if not isinstance(self.fo_options, FOOptions):
                raise OptionError(f"sdp: fo_options must be an FOOptions or a dict of its fields, "
                                  f"not {type(self.fo_options).__name__}")


class SDPAnalysis(Analysis):
    """SDP-cert with a proved dual bound (exact cvxpy or first-order torch solver)."""

    name = "sdp"
    description = "SDP-cert (Raghunathan et al. 2018): exact (cvxpy) or first-order dual, dual-certified bounds"
    default_solver = "auto"
    options_class = SDPOptions
    options: SDPOptions
    required_ops = frozenset({Affine, Relu, Reshape, Add})

    def __init__(self, options: SDPOptions | None = None, *, device=None, **keywords: Any) -> None:
        super().__init__(options, device=device, **keywords)
        from absint.solvers.sdp_fo import FOOptions

        o = self.options
        self.solver = o.solver or self.default_solver
        self.backend = o.backend
        bounds = o.bounds
        if bounds is None:  # DeepPoly when registered (tighter: fewer unstable neurons), else Box
            bounds = "deeppoly" if "deeppoly" in names(DOMAINS) else "box"
        self.bounds_domain = bounds
        self.tol = o.tol
        self.max_iters = o.max_iters
        fo_options = o.fo_options
        if fo_options is None:
            fo_options = FOOptions()
        elif isinstance(fo_options, dict):
            try:
                fo_options = replace(FOOptions(), **fo_options)
            except TypeError as exc:
                raise OptionError(f"sdp: fo_options: {exc}") from None
        if fo_options.stop_below is None:  # a row is done once its certified margin is positive
            fo_options = replace(fo_options, stop_below=-STOP_MARGIN)
        self.fo_options = fo_options
        self.build_options = {"eliminate_stable": o.eliminate_stable, "preact_linear": o.preact_linear,
                              "triangle": o.triangle}
        self.combine = o.combine
        self.exact_max_size = o.exact_max_size

    def domains(self) -> list[Domain]:
        return [get_domain(self.bounds_domain)(device=self.device)]

    def bound(self, graph: Graph, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor, d: torch.Tensor, *,
              deadline: float | None = None) -> BoundResult:
        from absint.solvers.sdp_problem import build_problem

        t0 = time.perf_counter()
        dev = self.device
        chain = relu_network(graph.to(dev, torch.float64))
        lower = lower.to(dev, torch.float64)
        upper = upper.to(dev, torch.float64)
        B = lower.shape[0]
        bounds, dom, prop = preactivation_bounds(graph, chain, lower, upper, self.bounds_domain, device=dev,
                                                 deadline=deadline)
        Cd = C.to(dev, dom.dtype)
        dd = d.to(dev, dom.dtype)
        base = dom.linear_bounds(prop.output, Cd, dd).detach().to("cpu", torch.float64).numpy()
        out = np.full(base.shape, -np.inf) if not self.combine else base.copy()
        notes, stats = [], {"solver": [], "size": [], "sdp_seconds": 0.0, "domain_lower": base.tolist()}
        for b in range(B):
            todo = [j for j in range(C.shape[1]) if not (self.combine and base[b, j] > 0)]
            if not todo:
                notes.append("")
                continue
            prob = build_problem(chain, lower[b].reshape(-1), upper[b].reshape(-1), bounds[b],
                                 C[b, todo].to(dev, torch.float64), d[b, todo].to(dev, torch.float64),
                                 **self.build_options)
            solver = self.solver
            if solver == "auto":
                solver = "exact" if prob.size <= self.exact_max_size else "fo"
            if deadline is not None and time.perf_counter() > deadline:
                raise TimeoutError("time limit reached before the SDP solve")
            ts = time.perf_counter()
            upper_viol, note = self._solve(prob, solver, deadline)
            stats["sdp_seconds"] += time.perf_counter() - ts
            stats["solver"].append(solver)
            stats["size"].append(prob.size)
            lb = -upper_viol
            for jj, j in enumerate(todo):
                out[b, j] = max(out[b, j], lb[jj]) if self.combine else lb[jj]
            notes.append(note)
            log.debug("sdp sample %d: %s, bounds %s", b, note, np.round(out[b], 4))
        stats["seconds"] = time.perf_counter() - t0
        return BoundResult(out, notes=notes, stats=stats)

    def _solve(self, prob: Any, solver: str, deadline: float | None) -> tuple[np.ndarray, str]:
        if solver == "exact":
            from absint.solvers.sdp_exact import solve_exact

            res = solve_exact(prob, backend=self.backend, tol=self.tol, max_iters=self.max_iters, deadline=deadline)
            bad = sorted({s for s in res.status if s != "optimal"})
            note = f"exact/{res.backend}: N={prob.size}" + (f", status {', '.join(bad)}" if bad else "")
            return res.upper, note
        from absint.solvers.sdp_fo import solve_fo

        if deadline is not None:
            # leave time for the final dense certificate(s): ~2 eigendecompositions per row
            reserve = 2 * prob.n_objectives * 0.5 * (prob.size / 1000.0) ** 3
            deadline = deadline - min(reserve, 0.25 * max(0.0, deadline - time.perf_counter()))
        res = solve_fo(prob, options=self.fo_options, device=self.device, deadline=deadline)
        return res.upper, f"fo: N={prob.size}, {res.iterations} iterations, certificate {res.certificate}"


class SDPExactAnalysis(SDPAnalysis):
    """``sdp`` with the exact (cvxpy) solver."""

    name = "sdp-exact"
    description = "SDP-cert solved exactly with cvxpy (SCS/Clarabel/MOSEK), dual-certified"
    default_solver = "exact"


class SDPFOAnalysis(SDPAnalysis):
    """``sdp`` with the first-order dual solver."""

    name = "sdp-fo"
    description = "SDP-cert with the first-order dual solver (SDP-FO style, torch, matrix-free)"
    default_solver = "fo"

