"""Analyses: named compositions of a domain, refinements and a final property check.

An :class:`Analysis` turns ``(graph, input boxes, safety rows C y + d)`` into proved lower bounds
of every row. Verdicts, attacks and time limits live one level up (:mod:`absint.verify`), so an
analysis only has to be sound: every number it returns must be a true lower bound.

``DomainAnalysis`` is the plain "propagate with a domain, then bound ``C y + d``" composition;
every registered domain gets one under its own name. Refinement analyses (refinepoly, lp, milp,
sdp, ...) subclass :class:`Analysis` and register themselves with :func:`register_analysis`.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from absint.errors import AbsintError
from absint.interpreter import propagate
from absint.ir import Graph
from absint.domains.base import Domain, default_device


@dataclass
class BoundResult:
    """Proved lower bounds ``[B, m]`` of the safety rows, plus optional extras.

    ``candidates`` may hold, per sample, a concrete input the analysis believes violates the
    property (e.g. a MILP optimum); the caller re-checks it on the network before trusting it.
    ``notes`` says, per sample, why a bound may be loose (time-out, solver limit, ...).
    """

    lower: np.ndarray
    candidates: list[np.ndarray | None] | None = None
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


class Analysis(ABC):
    """Base class of named analyses."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: True if "unknown" from this analysis can only mean time-out (complete methods).
    complete: ClassVar[bool] = False
    #: True if one call can analyse many regions at once (``B > 1``) efficiently.
    batchable: ClassVar[bool] = False
    #: True if ``bound`` accepts ``owner=`` (the clause of each safety row) and may report
    #: ``stats["clause_lower"]``: proved lower bounds of each clause's best row, which can come
    #: from different rows in different parts of the region (branch and bound needs this).
    clause_aware: ClassVar[bool] = False

    def __init__(self, *, device: torch.device | str | None = None, **options: Any) -> None:
        if options:  # a misspelt option must not be ignored silently
            raise UnknownOptionError(f"analysis {self.name!r} does not take the option(s) {sorted(options)}")
        self.device = torch.device(device) if device is not None else default_device()
        self.options = options

    @abstractmethod
    def bound(self, graph: Graph, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor,
              d: torch.Tensor, *, deadline: float | None = None) -> BoundResult:
        """Lower bounds of ``C[b] y + d[b]`` for ``y`` the outputs on box ``b`` (``C``: ``[B, m, n]``)."""


class DomainAnalysis(Analysis):
    """Propagate with one abstract domain and bound the safety rows with ``linear_bounds``."""

    domain_class: ClassVar[type[Domain]]
    batchable = True

    def __init__(self, *, device=None, domain_options: Any = None, **options: Any) -> None:
        super().__init__(device=device, **options)
        self.domain = self.domain_class(domain_options, device=self.device)

    def bound(self, graph, lower, upper, C, d, *, deadline=None) -> BoundResult:
        g = graph.to(self.device, self.domain.dtype)
        t0 = time.perf_counter()
        prop = propagate(g, self.domain, lower.to(self.device), upper.to(self.device), deadline=deadline)
        out = self.domain.linear_bounds(prop.output, C.to(self.device, self.domain.dtype),
                                        d.to(self.device, self.domain.dtype))
        return BoundResult(out.detach().cpu().numpy(), stats={"seconds": time.perf_counter() - t0})


def domain_analysis(domain_class: type[Domain]) -> type[DomainAnalysis]:
    """The :class:`DomainAnalysis` subclass for ``domain_class`` (named like the domain)."""
    return type(f"{domain_class.__name__}Analysis", (DomainAnalysis,), {
        "name": domain_class.name, "domain_class": domain_class,
        "description": domain_class.description or f"abstract interpretation with {domain_class.name}",
    })


# name -> factory producing an Analysis; filled by absint.plugins at import time.
_ANALYSES: dict[str, Callable[..., Analysis]] = {}
_UNAVAILABLE: dict[str, str] = {}


class UnknownAnalysisError(AbsintError):
    """No analysis of that name is registered."""


class UnknownOptionError(AbsintError, TypeError):
    """An analysis was given an option it does not have."""


def register_analysis(name: str, factory: Callable[..., Analysis], *, replace: bool = False) -> None:
    """Register an analysis factory under ``name`` (refuses to shadow unless ``replace``)."""
    if name in _ANALYSES and not replace:
        raise AbsintError(f"an analysis named {name!r} is already registered")
    _ANALYSES[name] = factory


def mark_unavailable(name: str, reason: str) -> None:
    """Record that analysis ``name`` exists but cannot run here (shown by ``absint list``)."""
    _UNAVAILABLE[name] = reason


def available_analyses() -> dict[str, Callable[..., Analysis]]:
    from absint import plugins  # noqa: F401  (populates the registry)

    return dict(_ANALYSES)


def unavailable_analyses() -> dict[str, str]:
    from absint import plugins  # noqa: F401

    return dict(_UNAVAILABLE)


def get_analysis(name: str | Analysis, **kwargs: Any) -> Analysis:
    """An analysis instance by name (or pass an instance through)."""
    if isinstance(name, Analysis):
        return name
    analyses = available_analyses()
    if name not in analyses:
        why = _UNAVAILABLE.get(name)
        if why:
            raise UnknownAnalysisError(f"analysis {name!r} is not available: {why}")
        raise UnknownAnalysisError(f"unknown analysis {name!r}; available: {', '.join(sorted(analyses))}")
    return analyses[name](**kwargs)
