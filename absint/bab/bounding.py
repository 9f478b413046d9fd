"""Bounding a batch of sub-problems with any registered abstract domain.

A sub-problem is an input box plus (ReLU splitting) a phase per ReLU: ``+1`` active
(pre-activation ``≥ 0``), ``−1`` inactive (``≤ 0``), ``0`` free. Phases reach the domain through
the interpreter's refine hook as a :meth:`~absint.domains.base.Domain.meet_box` on the pre-activation
bounds (the interval form of the split constraint, as in Bunel et al. JMLR 2020 and ERAN's
DeepPoly-based BaB). A sub-problem whose constraints contradict the proved pre-activation bounds
is empty: it is reported ``infeasible`` (nothing to prove there).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from absint.interpreter import propagate
from absint.ir import Graph, Relu, run_op
from absint.domains.base import Domain, SymbolicInputBounds
from absint.domains.linear_bounds import concretize_box

log = logging.getLogger(__name__)


@dataclass
class BoundOut:
    """Per sub-problem: proved row lower bounds ``[k, m]``, emptiness, and optional extras."""

    rows: torch.Tensor
    infeasible: torch.Tensor
    sym_A: torch.Tensor | None = None  # [k, m, n_in]: C y ≥ A x + c on the box (without d)
    sym_c: torch.Tensor | None = None
    pre_lo: list[torch.Tensor] | None = None  # per ReLU layer [k, size], after the split constraints
    pre_hi: list[torch.Tensor] | None = None


class Bounder:
    """Bounds safety rows ``C y + d`` over a batch of sub-problems with one domain instance."""

    def __init__(self, graph: Graph, domain: Domain) -> None:
        self.domain = domain
        self.graph = graph.to(domain.device, domain.dtype)
        self.relu_pre = [n.inputs[0] for n in self.graph.nodes if isinstance(n, Relu)]
        self.sizes = [int(torch.Size(self.graph.node(p).shape).numel()) for p in self.relu_pre]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.n_relu = sum(self.sizes)
        self.in_shape = tuple(self.graph.input_shape)
        self.symbolic = isinstance(domain, SymbolicInputBounds)
        #: also bound the rows directly (never looser; costs a second back-substitution)
        self.tighten_rows = False

    def bound(self, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, d: torch.Tensor, *,
              splits: torch.Tensor | None = None, want_symbolic: bool = False, want_pre: bool = False,
              deadline: float | None = None) -> BoundOut:
        """``lo``/``hi``: ``[k, n_in]`` flat boxes; ``C`` ``[m, n_out]``, ``d`` ``[m]``; ``splits`` ``[k, n_relu]``."""
        k = lo.shape[0]
        dom = self.domain
        infeasible = torch.zeros(k, dtype=torch.bool)
        pre_lo: list[torch.Tensor] = []
        pre_hi: list[torch.Tensor] = []
        index = {name: i for i, name in enumerate(self.relu_pre)}

        def hook(node, element):
            nonlocal infeasible
            i = index.get(node.name)
            if i is None or (splits is None and not want_pre):
                return element
            if splits is not None:
                s = splits[:, self.offsets[i]:self.offsets[i] + self.sizes[i]]
                if bool((s != 0).any()):
                    l0, u0 = dom.bounds(element)
                    l0, u0 = l0.reshape(k, -1).cpu(), u0.reshape(k, -1).cpu()
                    empty = ((s > 0) & (u0 < 0)) | ((s < 0) & (l0 > 0))
                    bad = empty.any(1)
                    infeasible = infeasible | bad
                    s = torch.where(bad[:, None], torch.zeros_like(s), s)  # empty: drop its constraints
                    inf = torch.full(s.shape, float("inf"), dtype=dom.dtype)
                    lower = torch.where(s > 0, torch.zeros_like(inf), -inf)
                    upper = torch.where(s < 0, torch.zeros_like(inf), inf)
                    shape = (k, *element_shape(node))
                    element = dom.meet_box(element, lower.reshape(shape).to(dom.device),
                                           upper.reshape(shape).to(dom.device))
            if want_pre:
                l1, u1 = dom.bounds(element)
                pre_lo.append(l1.reshape(k, -1).cpu())
                pre_hi.append(u1.reshape(k, -1).cpu())
            return element

        def element_shape(node):
            return tuple(self.graph.node(node.name).shape)

        x_lo = lo.reshape(k, *self.in_shape).to(dom.device, dom.dtype)
        x_hi = hi.reshape(k, *self.in_shape).to(dom.device, dom.dtype)
        prop = propagate(self.graph, dom, x_lo, x_hi, refine=hook, deadline=deadline)
        if deadline is not None and time.perf_counter() > deadline:
            raise TimeoutError("time limit reached before bounding the property rows")
        Cb = C.to(dom.device, dom.dtype).unsqueeze(0).expand(k, -1, -1)
        db = d.to(dom.device, dom.dtype).unsqueeze(0).expand(k, -1)
        if want_symbolic and self.symbolic:
            # One back-substitution gives both the symbolic bound C·y ≥ A·x + c over the box (c
            # already accounts for the pass's rounding) and, concretised rigorously at the box, the
            # proved row bounds.
            A, c = dom.input_linear_bounds(prop.output, Cb)
            A = A.reshape(k, C.shape[0], -1)
            rows = concretize_box(A, c + db, x_lo.reshape(k, -1), x_hi.reshape(k, -1))
            rows = torch.maximum(rows, dom.linear_bounds(prop.output, Cb, db)) if self.tighten_rows else rows
            out = BoundOut(rows.cpu(), infeasible)
            out.sym_A, out.sym_c = A.cpu(), c.cpu()
        else:
            rows = dom.linear_bounds(prop.output, Cb, db).cpu()
            out = BoundOut(rows, infeasible)
        if want_pre:
            out.pre_lo, out.pre_hi = pre_lo, pre_hi
        return out

    # -- concrete helpers ----------------------------------------------------------------------
    def forward(self, x: torch.Tensor, splits: torch.Tensor | None = None,
                keep_relu_out: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Concrete outputs ``[k, n_out]`` of flat inputs ``x`` ``[k, n_in]``; with ``splits`` the
        ReLUs follow the fixed phases (identity / zero), which is the network restricted to that
        activation pattern. Also returns the post-ReLU tensors when ``keep_relu_out``."""
        g = self.graph
        k = x.shape[0]
        values = {g.nodes[0].name: x.reshape(k, *self.in_shape).to(g.device, g.dtype)}
        relus: list[torch.Tensor] = []
        li = 0
        for n in g.nodes[1:]:
            args = [values[a] for a in n.inputs]
            if isinstance(n, Relu):
                z = args[0]
                y = torch.relu(z)
                if splits is not None:
                    s = splits[:, self.offsets[li]:self.offsets[li] + self.sizes[li]].reshape(z.shape).to(z.device)
                    y = torch.where(s > 0, z, torch.where(s < 0, torch.zeros_like(z), y))
                li += 1
                if keep_relu_out:
                    relus.append(y)
                values[n.name] = y
            else:
                values[n.name] = run_op(n, args)
        return values[g.output].reshape(k, -1), relus
