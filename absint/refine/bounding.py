"""Where refinement gets its linear bounds: the one adapter to the bound engine.

Refinement needs three things from a back-substitution engine, all keyed by node names:

* :meth:`SlopeBounder.node_bounds` — bounds of one node given proved bounds of earlier nodes,
  with optimised slopes (α-CROWN, Xu et al., ICLR 2021);
* :meth:`SlopeBounder.rows` — lower bounds of the rows ``C y + d`` (optionally re-bounding every
  layer first), with optimised slopes;
* :func:`branch_and_bound` — ReLU-split branch and bound with α/β bounding (β-CROWN, Wang et al.,
  NeurIPS 2021) started from given root bounds.

Today these wrap :class:`absint.domains.alpha.AlphaBounder` and :mod:`absint.bab.beta`, which
handle chains of Affine/Reshape/ReLU only: :func:`slope_bounder` returns None for other networks
and the stages that need it skip with a note (their bounds stay sound, only less tight). When the
shared graph engine lands, this module is the one place that changes.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from absint.ir import Graph
from absint.refine.state import Bounds, meet_bounds

log = logging.getLogger(__name__)

__all__ = ["SlopeBounder", "slope_bounder", "BabOutcome", "branch_and_bound"]


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


class SlopeBounder:
    """Optimised-slope bounds of nodes and rows of one network (see the module docstring)."""

    def __init__(self, graph: Graph, iters: int, final_iters: int, device: torch.device | str = "cpu") -> None:
        from absint.domains.alpha import AlphaBounder, AlphaOptions, chain_of

        chain = chain_of(graph)
        if chain is None:
            raise ValueError("not an Affine/Reshape/ReLU chain")
        self._ab = AlphaBounder(chain, AlphaOptions(iters=iters, final_iters=final_iters), device=device)
        #: the nodes whose bounds the engine uses (inputs of the ReLU layers), in order
        self.nodes: list[str] = list(chain.pre_names)

    def _lists(self, bounds: Bounds, upto: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        names = self.nodes[:upto]
        return [_t(bounds[n][0]) for n in names], [_t(bounds[n][1]) for n in names]

    def has_all(self, bounds: Bounds) -> bool:
        return all(n in bounds for n in self.nodes)

    def node_bounds(self, name: str, bounds: Bounds, in_lo: np.ndarray, in_hi: np.ndarray,
                    deadline: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Bounds of node ``name`` given ``bounds`` of every earlier engine node (and ``name``'s own)."""
        k = self.nodes.index(name)
        los, his = self._lists(bounds, k + 1)
        mid, rad = _t((in_lo + in_hi) / 2), _t((in_hi - in_lo) / 2)
        lo, hi = self._ab.layer_bounds(k, los, his, mid, rad, deadline=deadline)
        return lo.detach().cpu().numpy().copy(), hi.detach().cpu().numpy().copy()

    def rows(self, bounds: Bounds, in_lo: np.ndarray, in_hi: np.ndarray, C: np.ndarray, d: np.ndarray, *,
             layers: bool, from_node: str | None = None,
             deadline: float | None = None) -> tuple[np.ndarray, Bounds]:
        """Lower bounds of ``C y + d``; with ``layers`` every engine node from ``from_node`` on (default:
        the second) is re-bounded first. Returns the rows and the (re-bounded) node bounds."""
        start = 1 if from_node is None else self.nodes.index(from_node)
        los, his = self._lists(bounds, len(self.nodes))
        res = self._ab.run(_t(in_lo), _t(in_hi), los, his, _t(C), _t(d), layers=layers, from_layer=start,
                           deadline=deadline)
        out = {n: (a.detach().cpu().numpy().copy(), b.detach().cpu().numpy().copy())
               for n, a, b in zip(self.nodes, res.pre_lo, res.pre_hi)}
        return res.rows.detach().cpu().numpy().copy(), out


def slope_bounder(graph: Graph, iters: int = 30, final_iters: int = 60,
                  device: torch.device | str = "cpu") -> SlopeBounder | None:
    """The slope engine for ``graph``, or None where it does not apply (today: non-chain networks)."""
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
                     bounds: Bounds, deadline: float | None) -> BabOutcome | None:
    """ReLU-split BaB with α/β bounding over the root bounds ``bounds`` (None where unsupported)."""
    from absint.bab.analysis import BabAnalysis
    from absint.bab.beta import BetaBounder, BetaOptions
    from absint.bab.options import BabOptions
    from absint.domains.alpha import chain_of
    from absint.specs import InputBox

    chain = chain_of(graph)
    if chain is None or not all(n in bounds for n in chain.pre_names):
        return None
    t0 = time.perf_counter()
    an = BabAnalysis(options=BabOptions(split="relu", bounding="alpha-beta"))
    region = InputBox(in_lo.reshape(graph.input_shape), in_hi.reshape(graph.input_shape))
    search = an.make_search(graph, region, C, d, np.arange(len(d)))
    strat = search.s
    # Until BaB has a public entry taking root bounds, its bounder is rebuilt over ours.
    root = ([_t(bounds[n][0]) for n in chain.pre_names], [_t(bounds[n][1]) for n in chain.pre_names])
    strat.beta = BetaBounder(strat.b.graph, strat.lo, strat.hi, strat.C, strat.d, BetaOptions(), root_pre=root,
                             deadline=deadline)
    res = search.run(deadline=deadline)
    stats = {"status": res.status, "proved": res.proved, "seconds": time.perf_counter() - t0,
             "bounded": res.stats.get("bounded", 0)}
    cx = None if res.counterexample is None else np.asarray(res.counterexample).reshape(graph.input_shape)
    return BabOutcome(res.status, res.row_min if res.status == "verified" else None, cx, stats)


__all__ += ["meet_bounds"]
