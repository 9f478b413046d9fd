"""``alphapoly``: DeepPoly with jointly optimised ReLU lower slopes and sigmoid/tanh tangent points (α-CROWN).

DeepPoly's pass over the graph view gives the pre-activation bounds; then the slopes of every ReLU
are optimised jointly for the safety rows, recomputing the intermediate bounds on the way (Xu et al.,
"Fast and Complete", ICLR 2021; :mod:`absint.domains.linear_bounds.optimize`). Every bound is the
best of DeepPoly's and the optimised ones, so ``alphapoly`` is never looser than ``deeppoly``; any
graph the engine handles works (residual ``Add``, convolutions, pooling, sigmoid/tanh — whose lines'
tangent points are optimised the same way, :mod:`absint.domains.linear_bounds.tangent`). Samples
DeepPoly already proves skip the optimisation.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from absint.analyses import Analysis, BoundResult
from absint.errors import OptionError
from absint.ir import Graph
from absint.options import Options
from absint.domains.linear_bounds.api import graph_bounds
from absint.domains.linear_bounds.optimize import SlopeOptions

__all__ = ["AlphaPolyAnalysis", "AlphaPolyOptions"]


@dataclass(frozen=True)
class AlphaPolyOptions(Options):
    """``iters``: iterations per intermediate layer (``schedule="layerwise"``) or over all of them at
    once (``"joint"``, α-CROWN's); ``final_iters``: then iterations on the safety rows' slopes;
    ``lr``: Adam's step size on the slopes (see :class:`~absint.domains.linear_bounds.optimize.SlopeOptions`)."""

    iters: int = 30
    final_iters: int = 60
    lr: float = 0.25
    schedule: str = "layerwise"

    def check(self) -> None:
        if self.iters < 0 or self.final_iters < 0 or not self.lr > 0:
            raise OptionError("alphapoly: iters and final_iters must be ≥ 0 and lr > 0")
        if self.schedule not in ("layerwise", "joint"):
            raise OptionError(f"alphapoly: schedule must be 'layerwise' or 'joint', not {self.schedule!r}")


#: rows proved above this stop the optimisation (a margin well above any verify tolerance)
STOP_ABOVE = 1e-6


class AlphaPolyAnalysis(Analysis):
    """DeepPoly + optimised slopes (options: :class:`AlphaPolyOptions`)."""

    name = "alphapoly"
    description = "DeepPoly with jointly optimised ReLU slopes and sigmoid/tanh tangent points (alpha-CROWN, Xu et al. ICLR 2021)"
    options_class = AlphaPolyOptions
    options: AlphaPolyOptions

    def __init__(self, options: AlphaPolyOptions | None = None, *, device: torch.device | str | None = None,
                 **keywords: Any) -> None:
        super().__init__(options, device=device, **keywords)
        o = self.options
        self.slope_options = SlopeOptions(iters=o.iters, final_iters=o.final_iters, lr=o.lr, schedule=o.schedule)

    def bound(self, graph: Graph, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor, d: torch.Tensor,
              *, deadline: float | None = None) -> BoundResult:
        t0 = time.perf_counter()
        g = graph.to(self.device, torch.float64)
        out, notes = [], []
        for b in range(int(lower.shape[0])):
            res = graph_bounds(g, lower[b:b + 1], upper[b:b + 1], C=C[b:b + 1], d=d[b:b + 1],
                               alpha=self.slope_options, device=self.device, deadline=deadline,
                               stop_above=STOP_ABOVE)
            out.append(res.rows[0].cpu().double().numpy())
            notes.append("")
        return BoundResult(np.stack(out), notes=notes, stats={"seconds": time.perf_counter() - t0})
