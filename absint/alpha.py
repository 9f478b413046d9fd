"""``alphapoly``: DeepPoly with per-row optimised ReLU lower slopes (α-CROWN style).

DeepPoly's pass gives the pre-activation bounds; :class:`absint.domains.alpha.AlphaBounder` then
re-bounds every ReLU layer's inputs and the safety rows with slopes optimised by projected
gradient ascent (Xu et al., "Fast and Complete", ICLR 2021). Each bound is the best of DeepPoly's
and the optimised one, so ``alphapoly`` is never looser than ``deeppoly``. Networks that are not
Affine/ReLU chains keep DeepPoly's bounds (noted per sample).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from absint.analyses import Analysis, BoundResult
from absint.errors import OptionError
from absint.interpreter import bounds_recorder, propagate
from absint.ir import Graph
from absint.options import Options
from absint.domains.alpha import AlphaBounder, AlphaOptions, chain_of
from absint.domains.deeppoly import DeepPolyDomain

__all__ = ["AlphaPolyAnalysis", "AlphaPolyOptions"]


@dataclass(frozen=True)
class AlphaPolyOptions(Options):
    """``iters``: gradient steps per intermediate layer; ``final_iters``: for the safety rows;
    ``lr``: step size of the projected gradient ascent on the slopes."""

    iters: int = 30
    final_iters: int = 60
    lr: float = 0.25

    def check(self) -> None:
        if self.iters < 0 or self.final_iters < 0 or not self.lr > 0:
            raise OptionError("alphapoly: iters and final_iters must be ≥ 0 and lr > 0")


class AlphaPolyAnalysis(Analysis):
    """DeepPoly + optimised slopes (options: :class:`AlphaPolyOptions`)."""

    name = "alphapoly"
    description = "DeepPoly with gradient-optimised ReLU slopes (alpha-CROWN style, Xu et al. ICLR 2021)"
    options_class = AlphaPolyOptions
    options: AlphaPolyOptions

    def __init__(self, options: AlphaPolyOptions | None = None, *, device: torch.device | str | None = None,
                 **keywords: Any) -> None:
        super().__init__(options, device=device, **keywords)
        o = self.options
        self.alpha_options = AlphaOptions(iters=o.iters, final_iters=o.final_iters, lr=o.lr)
        self.domain = DeepPolyDomain(device=self.device)

    def bound(self, graph: Graph, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor, d: torch.Tensor,
              *, deadline: float | None = None) -> BoundResult:
        t0 = time.perf_counter()
        dom = self.domain
        g = graph.to(self.device, dom.dtype)
        chain = chain_of(g)
        bounder = None if chain is None else AlphaBounder(chain, self.alpha_options, device=self.device)
        pres = set() if chain is None else set(chain.pre_names)
        out, notes = [], []
        for b in range(int(lower.shape[0])):
            rec: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
            hook = bounds_recorder(dom, lambda node: node.name in pres, rec)
            lo_b, hi_b = lower[b:b + 1].to(self.device, dom.dtype), upper[b:b + 1].to(self.device, dom.dtype)
            prop = propagate(g, dom, lo_b, hi_b, refine=hook, deadline=deadline)
            Cb, db = C[b].to(self.device, dom.dtype), d[b].to(self.device, dom.dtype)
            rows = dom.linear_bounds(prop.output, Cb[None], db[None])[0].detach()
            if bounder is None:
                notes.append("not an Affine/ReLU chain: DeepPoly's bounds")
            elif bool((rows <= 0).any()):
                res = bounder.run(lo_b, hi_b, [rec[n][0] for n in chain.pre_names],  # type: ignore[union-attr]
                                  [rec[n][1] for n in chain.pre_names], Cb, db, deadline=deadline)  # type: ignore[union-attr]
                rows = torch.maximum(rows, res.rows.to(rows))
                notes.append("")
            else:
                notes.append("")
            out.append(rows.cpu().double().numpy())
        return BoundResult(np.stack(out), notes=notes, stats={"seconds": time.perf_counter() - t0})
