"""The cheap stages: domain bounds, optimised slopes, triage, k-ReLU rows.

* :class:`DomainBounds` — one pass of an abstract domain (DeepPoly, DeepZ, ...) records proved
  bounds of the nodes and bounds the rows.
* :class:`Slopes` — optimised ReLU slopes (α-CROWN, Xu et al., ICLR 2021) re-bound every layer and
  then the rows; with fixed intermediate bounds this reaches the triangle LP's optimum (Salman et
  al., NeurIPS 2019) at a fraction of its cost. :class:`RowSlopes` bounds only the rows, over
  the bounds proved by then.
* :class:`Triage` — stops the run when the worst row is hopelessly negative (a deliberately
  incomplete time saver for benchmarks over many inputs).
* :class:`KRelu` — k-ReLU joint hull rows of every ReLU layer (kPoly, Singh et al., NeurIPS 2019)
  for the final LP/MILP, from the domain's octahedral bounds over the proved bounds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from absint.interpreter import propagate
from absint.ir import Relu
from absint.refine.krelu_rows import krelu_rows
from absint.refine.pipeline import Context, Stage, flat
from absint.refine.state import RefineState
from absint.domains.krelu import KReluOptions

__all__ = ["DomainBounds", "Slopes", "RowSlopes", "Triage", "KRelu", "domain_pass"]


def _tensor(ctx: Context, a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(a, dtype=ctx.domain.dtype, device=ctx.domain.device)[None]


def domain_pass(state: RefineState, ctx: Context, *, meet: bool, deadline: float | None = None,
                at_relu=None) -> torch.Tensor:
    """One domain pass that records proved node bounds into ``state`` (``meet``: first tightens each
    recorded node's element with the bounds already proved, so later relaxations use them);
    ``at_relu(node, input_element)`` is called at every ReLU. Returns the rows' lower bounds."""
    dom, p = ctx.domain, state.problem
    elements: dict[str, object] = {}

    def hook(node, element):
        if node.name in ctx.recorded:
            lo_t, hi_t = dom.bounds(element)
            lo, hi = state.meet(node.name, flat(lo_t), flat(hi_t))
            if meet:
                shape = lo_t.shape
                element = dom.meet_box(element, torch.as_tensor(lo, dtype=dom.dtype, device=dom.device).reshape(shape),
                                       torch.as_tensor(hi, dtype=dom.dtype, device=dom.device).reshape(shape))
            elements[node.name] = element
        elif isinstance(node, Relu) and at_relu is not None and node.inputs[0] in elements:
            at_relu(node, elements[node.inputs[0]])
        return element

    prop = propagate(p.graph, dom, p.lower, p.upper, refine=hook, deadline=deadline)
    rows = dom.linear_bounds(prop.output, _tensor(ctx, p.C), _tensor(ctx, p.d))[0]
    return rows.detach().cpu().double().numpy()


def pass_fits(state: RefineState, deadline: float | None) -> bool:
    """Whether another domain pass fits before ``deadline`` (judged by what the first one took)."""
    if deadline is None:
        return True
    first = state.stats.get("stage_seconds", {}).get("domain", 0.0)
    return deadline - time.perf_counter() > first


@dataclass(frozen=True)
class DomainBounds(Stage):
    """Bounds from one pass of the registered domain ``domain`` (checked when the analysis is built)."""

    key: str = field(default="domain", init=False)
    domain: str = "deeppoly"

    def run(self, state: RefineState, ctx: Context, deadline: float | None) -> None:
        rows = domain_pass(state, ctx, meet=False, deadline=deadline)
        state.raise_rows(rows)
        state.stats["domain_lower"] = rows.copy()


@dataclass(frozen=True)
class Slopes(Stage):
    """Optimised slopes: ``iters`` Adam steps per layer (``layers``), ``final_iters`` for the rows."""

    key: str = field(default="slopes", init=False)
    iters: int = 30
    final_iters: int = 60
    layers: bool = True

    def run(self, state: RefineState, ctx: Context, deadline: float | None) -> None:
        sb = ctx.slopes(self.iters, self.final_iters)
        if sb is None:
            state.stats.setdefault("skipped", []).append(f"{self.key}: the slope engine needs ReLUs")
            return
        if not sb.has_all(state.bounds):
            return
        p, todo = state.problem, state.todo
        rows, bounds = sb.rows(state.bounds, p.in_lo, p.in_hi, p.C[todo], p.d[todo], layers=self.layers,
                               deadline=deadline)
        state.raise_rows(rows, todo)
        if self.layers:
            for name, (lo, hi) in bounds.items():
                state.meet(name, lo, hi)


@dataclass(frozen=True)
class RowSlopes(Slopes):
    """Optimised slopes for the rows only, over the bounds proved so far (cheap, often enough)."""

    key: str = field(default="row_slopes", init=False)
    layers: bool = False


@dataclass(frozen=True)
class Triage(Stage):
    """Stop (report the bounds so far) when the worst row is below ``give_up_below``."""

    key: str = field(default="triage", init=False)
    give_up_below: float = -11.0

    def run(self, state: RefineState, ctx: Context, deadline: float | None) -> None:
        worst = float(state.rows.min())
        if worst < self.give_up_below:
            state.stopped = "triage"
            state.note(f"refinement skipped: bound {worst:.3g} below give_up_below={self.give_up_below:g}")


@dataclass(frozen=True)
class KRelu(Stage):
    """k-ReLU hull rows (``krelu``: group size, sparsity, hull kind) of every ReLU layer that has none yet."""

    key: str = field(default="krelu", init=False)
    krelu: KReluOptions = field(default_factory=KReluOptions)

    def run(self, state: RefineState, ctx: Context, deadline: float | None) -> None:
        if self.krelu.k <= 1:
            return
        if not pass_fits(state, deadline):
            state.note("krelu: skipped, no time for another domain pass")
            return

        def at_relu(node, element):
            if node.name in state.krelu or node.inputs[0] not in state.bounds:
                return
            if state.time_left() <= 0.5:
                state.note(f"k-ReLU {node.name}: skipped, time limit reached")
                return
            add_krelu_rows(state, ctx, node, element, self.krelu, deadline)

        domain_pass(state, ctx, meet=True, deadline=deadline, at_relu=at_relu)


def add_krelu_rows(state: RefineState, ctx: Context, node: Relu, element, options: KReluOptions,
                   deadline: float | None) -> None:
    """Hull rows of ``node`` from its input element and proved bounds, into ``state.krelu``."""
    t0 = time.perf_counter()
    lo, hi = state.bounds[node.inputs[0]]
    rows, st = krelu_rows(ctx.domain, element, lo, hi, options, deadline)
    state.krelu[node.name] = rows
    state.record("krelu", node=node.name, rows=rows.num_rows, seconds=time.perf_counter() - t0, **st)
