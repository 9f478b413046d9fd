"""The LP/MILP analyses: ``lp``, ``milp``, ``refinezono``, ``refinepoly`` (alias ``kpoly``).

Each is a :class:`~absint.analyses.Analysis` whose options are a :class:`RefineOptions` preset
(overridable by keyword, e.g. ``absint.verify(net, spec, analysis="refinepoly", k=1,
timeout_lp=0.5)``). Samples of a batch are analysed one by one (solver models are per region).
"""
from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

import numpy as np
import torch

from absint.analyses import Analysis, BoundResult
from absint.ir import Graph
from absint.registry import get_domain
from absint.refine.driver import RefineRun
from absint.refine.encoding import ENCODED_OPS, NetworkEncoder
from absint.refine.options import PRESETS, RefineOptions

log = logging.getLogger(__name__)

__all__ = ["RefineAnalysis", "LPAnalysis", "MILPAnalysis", "RefineZonoAnalysis", "RefinePolyAnalysis"]


def _make_domain(name: str, device: torch.device):
    """The registered domain ``name`` (no silent substitution: a missing domain is an error)."""
    return get_domain(name)(device=device)


class RefineAnalysis(Analysis):
    """Domain bounds + LP/MILP refinement (see :mod:`absint.refine.driver`)."""

    preset: ClassVar[str] = "refinepoly"
    options_class = RefineOptions
    options: RefineOptions
    handled_ops = frozenset(ENCODED_OPS)

    def __init__(self, options: RefineOptions | None = None, *, device: torch.device | str | None = None,
                 **keywords: Any) -> None:
        super().__init__(options, device="cpu" if device is None else device, **keywords)
        self.domain = _make_domain(self.options.domain, self.device)
        self._encoders: dict[int, tuple[Graph, NetworkEncoder]] = {}

    @classmethod
    def default_options(cls) -> RefineOptions:
        return PRESETS[cls.preset]

    @property
    def refine_options(self) -> RefineOptions:
        return self.options

    def _encoder(self, graph: Graph) -> NetworkEncoder:
        hit = self._encoders.get(id(graph))
        if hit is None or hit[0] is not graph:
            self._encoders = {id(graph): (graph, NetworkEncoder(graph))}
            hit = self._encoders[id(graph)]
        return hit[1]

    def bound(self, graph: Graph, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor, d: torch.Tensor,
              *, deadline: float | None = None) -> BoundResult:
        t0 = time.perf_counter()
        g = graph.to(self.device, self.domain.dtype)
        enc = self._encoder(graph)  # checks the ops before any work
        B = int(lower.shape[0])
        lows, cands, notes, stats = [], [], [], []
        for b in range(B):
            run = RefineRun(g, self.domain, self.refine_options, enc)
            res = run.run(lower[b:b + 1].to(self.device), upper[b:b + 1].to(self.device),
                          C[b].detach().cpu().double().numpy(), d[b].detach().cpu().double().numpy(), deadline)
            lows.append(res.lower)
            cands.append(res.candidate)
            notes.append("; ".join(dict.fromkeys(res.notes)))
            stats.append(res.stats)
        st: dict[str, Any] = {"seconds": time.perf_counter() - t0}
        if B == 1:
            st.update({k: v for k, v in stats[0].items() if k not in ("domain_lower",)})
        return BoundResult(np.stack(lows), candidates=cands if any(c is not None for c in cands) else None,
                           notes=notes, stats=st)


class LPAnalysis(RefineAnalysis):
    """LP-cert baseline: DeepPoly bounds, then the triangle LP of each safety row."""

    name = "lp"
    preset = "lp"
    description = "triangle LP over DeepPoly bounds (LP-cert; Ehlers 2017, Salman et al. 2019)"


class MILPAnalysis(RefineAnalysis):
    """Complete MILP (Tjeng et al., ICLR 2019) over LP-tightened DeepPoly bounds."""

    name = "milp"
    preset = "milp"
    complete = True
    description = "complete MILP with big-M ReLUs over LP-tightened bounds (Tjeng et al., ICLR 2019)"


class RefineZonoAnalysis(RefineAnalysis):
    """DeepZ + per-neuron LP/MILP tightening + final LP + partial MILP (ERAN's refinezono)."""

    name = "refinezono"
    preset = "refinezono"
    description = "DeepZ with LP/MILP neuron tightening (Singh et al., ICLR 2019)"


class RefinePolyAnalysis(RefineAnalysis):
    """DeepPoly + optimised slopes + MILP/LP tightening + final LP + partial MILP (ERAN's refinepoly)."""

    name = "refinepoly"
    preset = "refinepoly"
    description = "DeepPoly with optimised slopes and MILP/LP neuron tightening (Singh et al., ICLR 2019)"


class KPolyAnalysis(RefinePolyAnalysis):
    """``refinepoly`` plus k-ReLU joint constraints (kPoly, Singh et al., NeurIPS 2019)."""

    name = "kpoly"
    preset = "kpoly"
    description = "refinepoly plus k-ReLU joint convex-hull constraints (kPoly, Singh et al., NeurIPS 2019)"


ANALYSES = (LPAnalysis, MILPAnalysis, RefineZonoAnalysis, RefinePolyAnalysis, KPolyAnalysis)
