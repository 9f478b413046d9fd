"""Graph-wide entry points: bounds of every node of a network for a batch of input boxes.

:func:`graph_bounds` is the one function analyses call (``alphapoly``, refinement, SDP, branch and
bound): DeepPoly's bounds of every node over the graph view, optionally intersected with tighter
bounds proved elsewhere (``given``, e.g. LP/MILP bounds), optionally improved by optimised slopes
(α-CROWN, :mod:`.optimize`), and optionally the proved lower bounds of target rows ``C y + d``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from absint.ir import Graph
from absint.rounding import to_lower, to_upper
from absint.domains.linear_bounds.engine import Engine, EngineOptions
from absint.domains.linear_bounds.graph import NONLINEAR, GraphView, Node
from absint.domains.linear_bounds.optimize import SlopeOptimiser, SlopeOptions
from absint.domains.linear_bounds.relax import safe_down

__all__ = ["GraphBounds", "graph_bounds", "deeppoly_view"]

Given = Mapping[str, tuple[Any, Any]]


@dataclass
class GraphBounds:
    """Bounds of the nodes of one graph for ``B`` boxes (see :func:`graph_bounds`)."""

    view: GraphView
    engine: Engine
    rows: torch.Tensor | None = None  # [B, m] proved lower bounds of C y + d
    stats: dict[str, Any] = field(default_factory=dict)

    def bounds(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Proved bounds ``[B, *shape]`` of node ``name`` (computed on demand, fully back-substituted)."""
        return self.engine.bounds(self.view[name], 2)

    def known(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The bounds already computed for ``name`` (whatever their precision), or None."""
        return self.engine.cached(self.view[name])

    def preactivations(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Bounds of the input of every nonlinear node (the ones relaxations use), by name."""
        out = {}
        for n in self.view.preactivations():
            lo, hi = self.engine.cached(n) or self.engine.bounds(n, 2)
            out[n.name] = (lo.detach(), hi.detach())
        return out


def _float(x: Any, device: torch.device) -> torch.Tensor:
    """``x`` as a tensor on ``device``: tensors keep their dtype, anything else is read as float64."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    return torch.as_tensor(np.asarray(x, dtype=np.float64), device=device)


def _as_bounds(node: Node, pair: tuple[Any, Any], engine: Engine) -> tuple[torch.Tensor, torch.Tensor]:
    # outward rounding: bounds proved in float64 stay bounds in a narrower engine dtype
    lo = to_lower(_float(pair[0], engine.device), engine.dtype).reshape(node.batch, *node.shape)
    hi = to_upper(_float(pair[1], engine.device), engine.dtype).reshape(node.batch, *node.shape)
    return lo, hi


def deeppoly_view(graph: Graph, lower: torch.Tensor, upper: torch.Tensor, *,
                  options: EngineOptions | None = None, given: Given | None = None,
                  device: torch.device | str | None = None, dtype: torch.dtype = torch.float64,
                  engine: Engine | None = None) -> tuple[GraphView, Engine]:
    """DeepPoly over the graph view: the input box stored, every nonlinear node relaxed (its input
    bounded as the engine's options say), ``given`` bounds intersected in before any relaxation
    uses them. ``lower``/``upper``: ``[B, *input_shape]`` (or flat ``[B, n]``)."""
    if engine is None:
        dev = torch.device(device) if device is not None else graph.device
        engine = Engine(options, device=dev, dtype=dtype)
    g = graph.to(engine.device, engine.dtype)
    lo = to_lower(_float(lower, engine.device), engine.dtype)
    hi = to_upper(_float(upper, engine.device), engine.dtype)
    b = int(lo.shape[0])
    lo, hi = lo.reshape(b, *g.input_shape), hi.reshape(b, *g.input_shape)
    view = GraphView.of(g, b)
    engine.store(view.input, 2, lo, hi)
    given = dict(given or {})
    for node in view:
        if node.name in given and node.parents:
            glo, ghi = _as_bounds(node, given[node.name], engine)
            engine.bounds(node, 1 if engine.options.early_stop else 2)
            engine.store(node, engine.level(node), glo, ghi)
        if isinstance(node.op, NONLINEAR):
            engine.relax(node)
    return view, engine


def graph_bounds(graph: Graph, lower: torch.Tensor, upper: torch.Tensor, *, C: torch.Tensor | None = None,
                 d: torch.Tensor | None = None, given: Given | None = None, alpha: SlopeOptions | None = None,
                 options: EngineOptions | None = None, device: torch.device | str | None = None,
                 deadline: float | None = None, stop_above: float | None = None) -> GraphBounds:
    """Bounds of every node of ``graph`` for the boxes ``[lower, upper]`` (``[B, *input_shape]``).

    * ``given``: bounds of some nodes proved elsewhere (name → ``(lower, upper)``), intersected in;
    * ``alpha``: optimise the ReLU slopes jointly (α-CROWN) for the rows ``C`` — the intermediate
      bounds of the result are the best found on the way;
    * ``C`` (``[B or 1, m, n_out]``), ``d`` (``[B, m]``): also bound the rows ``C y + d`` at the output
      (``rows`` of the result; never looser than DeepPoly's). ``stop_above``: optimisation stops
      once every row exceeds it.
    """
    view, engine = deeppoly_view(graph, lower, upper, options=options, given=given, device=device)
    out = GraphBounds(view, engine)
    if C is None:
        return out
    target = view.output
    with torch.no_grad():
        rows = engine.linear_bounds_at(target, C)
        if d is not None:
            rows = safe_down(rows + torch.as_tensor(d, dtype=rows.dtype, device=rows.device))
    out.stats["deeppoly_rows"] = rows
    if alpha is not None and (stop_above is None or bool((rows <= stop_above).any())):
        opt = SlopeOptimiser(view, engine, alpha)
        rows = torch.maximum(rows, opt.run(target, C, d, deadline=deadline, stop_above=stop_above))
    out.rows = rows.detach()
    return out
