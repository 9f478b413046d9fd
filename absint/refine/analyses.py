"""The LP/MILP analyses: ``lp``, ``milp``, ``refinezono``, ``refinepoly``, ``kpoly``.

Each is a :class:`~absint.analyses.Analysis` whose configuration is a preset pipeline of stages
(:mod:`absint.refine.presets`), editable by keyword, e.g. ``absint.verify(net, spec,
analysis="refinepoly", k=1, timeout_lp=0.5)`` or ``**{"tighten.milp_layers": 2}``. The domain and
the solver backend are checked when the analysis is built: an unknown or unavailable one is an
immediate error, never a silent substitute. Samples of a batch are analysed one by one (solver
models are per region).
"""
from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

import numpy as np
import torch

from absint import registry
from absint.analyses import Analysis, BoundResult
from absint.errors import UnknownAnalysisError
from absint.ir import Graph
from absint.refine.encoding import ENCODED_OPS, NetworkEncoder
from absint.refine.pipeline import Context
from absint.refine.presets import PRESETS, RefineConfig
from absint.refine.state import Problem

log = logging.getLogger(__name__)

__all__ = ["RefineAnalysis", "LPAnalysis", "MILPAnalysis", "RefineZonoAnalysis", "RefinePolyAnalysis",
           "KPolyAnalysis", "ANALYSES"]


def _require_cdd(name: str) -> None:
    """k-ReLU rows need pycddlib; say so at construction instead of losing them silently later."""
    try:
        import cdd  # noqa: F401
    except ImportError as exc:
        raise UnknownAnalysisError(f"analysis {name!r} with k-ReLU constraints (k > 1) needs pycddlib: "
                                   f"pip install 'absint[cdd]' ({exc})") from None


class RefineAnalysis(Analysis):
    """Domain bounds + LP/MILP refinement as a pipeline of stages (see :mod:`absint.refine.pipeline`)."""

    preset: ClassVar[str] = "refinepoly"
    options_class = RefineConfig
    options: RefineConfig
    required_ops = frozenset(ENCODED_OPS)

    def __init__(self, options: RefineConfig | None = None, *, device: torch.device | str | None = None,
                 **keywords: Any) -> None:
        super().__init__(options, device="cpu" if device is None else device, **keywords)
        self.options.solver.check_available()
        if any(stage.key == "krelu" or (stage.key == "multineuron" and stage.krelu.k > 1)  # type: ignore[attr-defined]
               for stage in self.options.pipeline.stages):
            _require_cdd(self.name)
        # the registered domain, or UnknownDomainError: never a silent substitute
        self.domain = registry.get_domain(self.options.domain)(device=self.device)
        self._contexts: dict[int, tuple[Graph, Context]] = {}

    @classmethod
    def default_options(cls) -> RefineConfig:
        return PRESETS[cls.preset]

    @property
    def config(self) -> RefineConfig:
        return self.options

    def _context(self, graph: Graph) -> Context:
        hit = self._contexts.get(id(graph))
        if hit is None or hit[0] is not graph:
            g = graph.to(self.device, self.domain.dtype)
            ctx = Context(g, self.domain, NetworkEncoder(g), self.config.solver)  # checks the ops first
            self._contexts = {id(graph): (graph, ctx)}
            hit = self._contexts[id(graph)]
        return hit[1]

    def bound(self, graph: Graph, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor, d: torch.Tensor,
              *, deadline: float | None = None) -> BoundResult:
        t0 = time.perf_counter()
        ctx = self._context(graph)
        lows, cands, notes, stats = [], [], [], []
        for b in range(int(lower.shape[0])):
            problem = Problem(ctx.graph, lower[b:b + 1].to(self.device, self.domain.dtype),
                              upper[b:b + 1].to(self.device, self.domain.dtype),
                              C[b].detach().cpu().double().numpy(), d[b].detach().cpu().double().numpy())
            state = self.config.pipeline.run(problem, ctx, deadline)
            lows.append(state.rows)
            cands.append(state.candidate)
            notes.append("; ".join(dict.fromkeys(state.notes)))
            stats.append(state.stats)
        st: dict[str, Any] = {"seconds": time.perf_counter() - t0, "domain": self.config.domain,
                              "backend": self.config.solver.backend,
                              "stages": [s.key for s in self.config.pipeline.stages]}
        if len(stats) == 1:
            st.update({k: v for k, v in stats[0].items() if k != "domain_lower"})
        else:
            st["samples"] = [{k: v for k, v in s.items() if k != "domain_lower"} for s in stats]
        return BoundResult(np.stack(lows), candidates=cands if any(c is not None for c in cands) else None,
                           notes=notes, stats=st)


class LPAnalysis(RefineAnalysis):
    """LP-cert baseline: DeepPoly bounds, then the LP of each safety row."""

    name = "lp"
    preset = "lp"
    description = "triangle LP over DeepPoly bounds (LP-cert; Ehlers 2017, Salman et al. 2019)"


class MILPAnalysis(RefineAnalysis):
    """MILP (Tjeng et al., ICLR 2019) over slope-tightened DeepPoly bounds: complete on ReLU and
    max-pooling networks; sigmoid/tanh enter by their linear relaxation (noted in the result)."""

    name = "milp"
    preset = "milp"
    complete = True
    description = "complete MILP with big-M ReLUs and max-pooling over DeepPoly bounds (Tjeng et al., ICLR 2019)"


class RefineZonoAnalysis(RefineAnalysis):
    """DeepZ + per-neuron LP/MILP tightening + final LP + partial MILP (ERAN's refinezono)."""

    name = "refinezono"
    preset = "refinezono"
    description = "DeepZ with LP/MILP neuron tightening (Singh et al., ICLR 2019)"


class RefinePolyAnalysis(RefineAnalysis):
    """DeepPoly + optimised slopes + MILP/LP tightening + final LP + BaB + partial MILP (ERAN's refinepoly)."""

    name = "refinepoly"
    preset = "refinepoly"
    description = "DeepPoly with optimised slopes and MILP/LP neuron tightening (Singh et al., ICLR 2019)"


class KPolyAnalysis(RefinePolyAnalysis):
    """k-ReLU joint constraints inside bound propagation, then branch and bound (kPoly/PRIMA rows, GCP-CROWN dual)."""

    name = "kpoly"
    preset = "kpoly"
    description = ("k-ReLU hull rows (kPoly, Singh et al., NeurIPS 2019) with optimised multipliers in bound "
                   "propagation (GCP-CROWN, Zhang et al., NeurIPS 2022), then alpha/beta branch and bound")


ANALYSES = (LPAnalysis, MILPAnalysis, RefineZonoAnalysis, RefinePolyAnalysis, KPolyAnalysis)

