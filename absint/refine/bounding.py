"""Where refinement gets its linear bounds: the one adapter to the bound engine.

Refinement needs three things from a back-substitution engine, all keyed by node names:

* :meth:`SlopeBounder.node_bounds` — bounds of one node given proved bounds of earlier nodes,
  with optimised slopes (α-CROWN, Xu et al., ICLR 2021);
* :meth:`SlopeBounder.rows` — lower bounds of the rows ``C y + d`` (optionally re-bounding every
  layer first), with optimised slopes;
* :func:`branch_and_bound` — ReLU-split branch and bound with α/β bounding (β-CROWN, Wang et al.,
  NeurIPS 2021) started from given root bounds.

All three stand on the shared bound engine (:mod:`absint.domains.linear_bounds`) over any graph
it handles; :func:`slope_bounder` returns None only for networks without ReLUs (the stages that
need it then skip with a note; their bounds stay sound, only less tight).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from absint.ir import Affine, Graph, Relu
from absint.refine.state import Bounds
from absint.domains.linear_bounds.api import deeppoly_view
from absint.domains.linear_bounds.optimize import SlopeOptimiser, SlopeOptions
from absint.domains.linear_bounds.relax import safe_down

if TYPE_CHECKING:
    from absint.bab.options import BabOptions

log = logging.getLogger(__name__)

__all__ = ["SlopeBounder", "slope_bounder", "BabOutcome", "branch_and_bound"]

#: seconds per multiply-add of one back-substitution row (float64, one loaded core; measured ~2.2e-10
#: on a 784-1024-1024 MLP at load 8) — with a factor 2 of safety; used only to keep calls in time
SECONDS_PER_MAC = 5e-10


def _macs(op: Any) -> int:
    """Multiply-adds of one application of a linear operator (to one row)."""
    from absint.linear import ConvOperator, DenseOperator, numel

    if isinstance(op, DenseOperator):
        return int(op.weight.numel())
    if isinstance(op, ConvOperator):
        return int(op.weight.numel() * numel(op.out_shape[1:]))
    return int(numel(op.out_shape))


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


class SlopeBounder:
    """Optimised-slope bounds of nodes and rows of one network (see the module docstring).

    Every call stays within its deadline: the optimiser checks the clock between its gradient
    steps only, so a call is skipped (the bounds passed in are kept, which is sound) when less than
    ~5 back-substitutions' worth of time is left, and it is given a deadline early by the cost of
    one step plus the final pass (estimated from the network's size, :data:`SECONDS_PER_MAC`)."""

    def __init__(self, graph: Graph, iters: int, final_iters: int, device: torch.device | str = "cpu") -> None:
        relus = [n for n in graph.nodes if isinstance(n, Relu)]
        if not relus:
            raise ValueError("no ReLU to optimise slopes of")
        self.graph = graph.to(device, torch.float64)
        self.iters, self.final_iters, self.device = iters, final_iters, torch.device(device)
        #: the nodes whose bounds the engine uses (inputs of the ReLU layers), in order
        self.nodes: list[str] = list(dict.fromkeys(r.inputs[0] for r in relus))
        macs, self._macs = 0, {}
        for n in graph.nodes:
            if isinstance(n, Affine):
                macs += _macs(n.operator)
            self._macs[n.name] = macs  # one row's back-substitution from node n (an upper estimate)
        self.skipped = 0  # calls skipped for lack of time

    def _window(self, rows: int, name: str, deadline: float | None) -> float | None | bool:
        """The deadline to give a call bounding ``rows`` rows from node ``name``, or False when it
        cannot finish in time."""
        if deadline is None:
            return None
        one = rows * self._macs[name] * SECONDS_PER_MAC  # one back-substitution pass
        if deadline - time.perf_counter() < 5 * one + 0.05:  # initial pass, a step (forward + gradient), final
            self.skipped += 1
            return False
        return deadline - 4 * one

    def has_all(self, bounds: Bounds) -> bool:
        return all(n in bounds for n in self.nodes)

    def _view(self, bounds: Bounds, in_lo: np.ndarray, in_hi: np.ndarray):
        return deeppoly_view(self.graph, _t(in_lo)[None], _t(in_hi)[None], given=bounds, device=self.device)

    def node_bounds(self, name: str, bounds: Bounds, in_lo: np.ndarray, in_hi: np.ndarray,
                    deadline: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Bounds of node ``name`` given ``bounds`` of earlier nodes (and ``name``'s own), with its
        slopes optimised for its own bounds."""
        lo0, hi0 = bounds[name]
        window = self._window(2 * int(((lo0 < 0) & (hi0 > 0)).sum()), name, deadline)
        if window is False:
            return lo0, hi0
        view, eng = self._view(bounds, in_lo, in_hi)
        SlopeOptimiser(view, eng, SlopeOptions(iters=self.iters, final_iters=0), only={name}).tighten(window)
        lo, hi = eng.cached(view[name])
        return _np(lo), _np(hi)

    def rows(self, bounds: Bounds, in_lo: np.ndarray, in_hi: np.ndarray, C: np.ndarray, d: np.ndarray, *,
             layers: bool, from_node: str | None = None,
             deadline: float | None = None) -> tuple[np.ndarray, Bounds]:
        """Lower bounds of ``C y + d`` (``-inf`` where there was no time); with ``layers`` every engine
        node from ``from_node`` on (default: the second) is re-bounded first. Returns the rows and the
        (re-bounded) node bounds."""
        start = 1 if from_node is None else self.nodes.index(from_node)
        only = set(self.nodes[start:]) if layers else set()
        unstable = sum(int(((bounds[n][0] < 0) & (bounds[n][1] > 0)).sum()) for n in only)
        window = self._window(len(C) + 2 * unstable, self.graph.output, deadline)
        if window is False:
            return np.full(len(C), -np.inf), dict(bounds)
        deadline = window
        view, eng = self._view(bounds, in_lo, in_hi)
        Ct, dt = _t(C)[None], _t(d)[None]
        with torch.no_grad():
            base = safe_down(eng.linear_bounds_at(view.output, Ct) + dt)
        opt = SlopeOptimiser(view, eng, SlopeOptions(iters=self.iters, final_iters=self.final_iters), only=only)
        rows = torch.maximum(base, opt.run(view.output, Ct, dt, deadline=deadline, stop_above=None))
        out = {n: tuple(_np(t) for t in eng.cached(view[n])) for n in self.nodes}
        return _np(rows), out  # type: ignore[return-value]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().reshape(-1).cpu().double().numpy().copy()


def slope_bounder(graph: Graph, iters: int = 30, final_iters: int = 60,
                  device: torch.device | str = "cpu") -> SlopeBounder | None:
    """The slope engine for ``graph``, or None where it does not apply (networks without ReLUs)."""
    try:
        return SlopeBounder(graph, iters, final_iters, device)
    except ValueError:
        return None


@dataclass
class BabOutcome:
    """What a branch and bound proved: ``status`` (verified / falsified / timeout / ...), the rows'
    proved lower bounds when verified, a counterexample when falsified, statistics."""

    status: str
    rows: np.ndarray | None = None
    counterexample: np.ndarray | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def branch_and_bound(graph: Graph, in_lo: np.ndarray, in_hi: np.ndarray, C: np.ndarray, d: np.ndarray,
                     bounds: Bounds, deadline: float | None, constraints: Any = None,
                     options: BabOptions | None = None) -> BabOutcome | None:
    """ReLU-split BaB with α/β bounding over the root bounds ``bounds`` (None without ReLUs);
    ``constraints``: k-ReLU rows with starting multipliers per ReLU node (:data:`absint.bab.beta.Constraints`);
    ``options``: :class:`absint.bab.BabOptions` (None: its defaults)."""
    from absint.bab import relu_branch_and_bound
    from absint.specs import InputBox

    if not any(isinstance(n, Relu) for n in graph.nodes):
        return None
    t0 = time.perf_counter()
    region = InputBox(in_lo.reshape(graph.input_shape), in_hi.reshape(graph.input_shape))
    res = relu_branch_and_bound(graph, region, C, d, root_bounds=bounds, constraints=constraints,
                                deadline=deadline, options=options)
    stats = {"status": res.status, "proved": res.proved, "seconds": time.perf_counter() - t0,
             "bounded": res.stats.get("bounded", 0)}
    cx = None if res.counterexample is None else np.asarray(res.counterexample).reshape(graph.input_shape)
    return BabOutcome(res.status, res.row_min if res.status == "verified" else None, cx, stats)

