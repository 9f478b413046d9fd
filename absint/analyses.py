"""Analyses: named compositions of a domain, refinements and a final property check.

An :class:`Analysis` turns ``(graph, input boxes, safety rows C y + d)`` into proved lower bounds
of every row. Verdicts, attacks and time limits live one level up (:mod:`absint.verify`), so an
analysis only has to be sound: every number it returns must be a true lower bound.

Every analysis takes one typed options object (a frozen :class:`~absint.options.Options`
dataclass named by ``options_class``); keywords are sugar over it, and every option mistake raises
:class:`~absint.errors.OptionError` at construction.

``DomainAnalysis`` is the plain "propagate with a domain, then bound ``C y + d``" composition;
every registered domain is also an analysis of its own name (:func:`get_analysis` wraps it).
Other analyses (refinepoly, lp, milp, sdp, bab, ...) subclass :class:`Analysis` and register
through the ``absint.analyses`` entry-point group or :func:`absint.registry.register_analysis`.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from absint import registry
from absint.domains.base import Domain, default_device
from absint.errors import DomainError, OptionError, UnknownAnalysisError, UnknownNameError, UnsupportedOpError
from absint.interpreter import propagate
from absint.ir import Graph, Input, Op
from absint.options import NoAnalysisOptions, Options, build_options

__all__ = ["Analysis", "BoundResult", "DomainAnalysis", "DomainAnalysisOptions", "domain_analysis",
           "get_analysis", "analysis_class", "available_analyses", "analysis_names", "unsupported_nodes",
           "check_supported"]


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
    """Base class of named analyses: ``Analysis(options, *, device=None, **keywords)``.

    Subclasses set ``name``, ``description``, ``options_class`` (an
    :class:`~absint.options.Options` dataclass; keywords replace its fields) and, if the analysis
    handles only some ops itself (an LP encoding, a chain-only relaxation), ``required_ops``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options_class: ClassVar[type[Options]] = NoAnalysisOptions
    #: True if "unknown" from this analysis can only mean time-out (complete methods).
    complete: ClassVar[bool] = False
    #: True if one call can analyse many regions at once (``B > 1``) efficiently.
    batchable: ClassVar[bool] = False
    #: True if ``bound`` accepts ``owner=`` (the clause of each safety row) and may report
    #: ``stats["clause_lower"]``: proved lower bounds of each clause's best row, which can come
    #: from different rows in different parts of the region (branch and bound needs this).
    clause_aware: ClassVar[bool] = False
    #: Op types the analysis itself can handle (``None``: any op its domains support). The
    #: pre-flight check (:func:`unsupported_nodes`) reads it together with ``Domain.supports``.
    required_ops: ClassVar[frozenset[type[Op]] | None] = None

    def __init__(self, options: Options | None = None, *, device: torch.device | str | None = None,
                 **keywords: Any) -> None:
        self.options = build_options(self.options_class, options, keywords, owner=self.name,
                                     base=self.default_options() if options is None else None)
        self.device = torch.device(device) if device is not None else default_device()

    @classmethod
    def default_options(cls) -> Options:
        """The options when none are given (presets override this)."""
        return cls.options_class()

    def domains(self) -> list[Domain]:
        """The domain instances this analysis runs (for the pre-flight support check)."""
        domain = getattr(self, "domain", None)
        return [domain] if isinstance(domain, Domain) else []

    def unsupported(self, op: Op) -> str:
        """Why this analysis cannot handle ``op`` ("" if it can): its own ``required_ops``, then
        every domain it runs (``Domain.supports``)."""
        if isinstance(op, Input):
            return ""
        if self.required_ops is not None and type(op) not in self.required_ops:
            return f"analysis {self.name!r} handles {', '.join(sorted(t.__name__ for t in self.required_ops))} only"
        for dom in self.domains():
            if not dom.supports(op):
                return f"domain {dom.name!r} has no transformer for {op.kind}"
        return ""

    @abstractmethod
    def bound(self, graph: Graph, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor,
              d: torch.Tensor, *, deadline: float | None = None) -> BoundResult:
        """Lower bounds of ``C[b] y + d[b]`` for ``y`` the outputs on box ``b`` (``C``: ``[B, m, n]``)."""


def unsupported_nodes(graph: Graph, analysis: Analysis) -> list[tuple[str, str, str]]:
    """Every ``(node, op kind, reason)`` of ``graph`` that ``analysis`` cannot handle."""
    out = []
    for node in graph.nodes:
        why = analysis.unsupported(node)
        if why:
            out.append((node.name, node.kind, why))
    return out


def check_supported(graph: Graph, analysis: Analysis) -> None:
    """The pre-flight check: raise one :class:`~absint.errors.UnsupportedOpError` naming every
    node the chosen analysis cannot handle, before any work is done."""
    bad = unsupported_nodes(graph, analysis)
    if bad:
        raise UnsupportedOpError(bad, f"{graph.name or 'network'} with analysis {analysis.name!r}")


@dataclass(frozen=True)
class DomainAnalysisOptions(Options):
    """Options of a plain domain analysis: ``domain_options``, the domain's own options object
    (an instance of its ``options_class``; ``None``: the domain's defaults)."""

    domain_options: Any = None


class DomainAnalysis(Analysis):
    """Propagate with one abstract domain and bound the safety rows with ``linear_bounds``."""

    domain_class: ClassVar[type[Domain]]
    options_class = DomainAnalysisOptions
    batchable = True

    def __init__(self, options: DomainAnalysisOptions | None = None, *, device: torch.device | str | None = None,
                 **keywords: Any) -> None:
        super().__init__(options, device=device, **keywords)
        dom_opts = self.options.domain_options
        if dom_opts is not None and not isinstance(dom_opts, self.domain_class.options_class):
            raise OptionError(f"analysis {self.name!r}: domain_options must be a "
                              f"{self.domain_class.options_class.__name__}, not {type(dom_opts).__name__}")
        self.domain = self.domain_class(dom_opts, device=self.device)

    def bound(self, graph, lower, upper, C, d, *, deadline=None) -> BoundResult:
        builtin = _builtin(type(self.domain))
        if self.domain.dtype != torch.float64:
            raise DomainError(f"domain {self.domain.name!r} computes in {self.domain.dtype}; analyses need "
                              "float64: casting the float64 network and region to it would round weights, "
                              "biases and the region's bounds, so its bounds would hold for another network. "
                              "Construct the domain with dtype=torch.float64")
        g = graph.to(self.device, self.domain.dtype)
        t0 = time.perf_counter()
        try:
            prop = propagate(g, self.domain, lower.to(self.device), upper.to(self.device), deadline=deadline,
                             refine=None if builtin else _checked_bounds(self.domain))
            out = self.domain.linear_bounds(prop.output, C.to(self.device, self.domain.dtype),
                                            d.to(self.device, self.domain.dtype))
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(C.shape[:2]):
                raise ValueError(f"linear_bounds returned {type(out).__name__} of shape "
                                 f"{tuple(getattr(out, 'shape', ()))}, expected a tensor {tuple(C.shape[:2])}")
            if not builtin and out.dtype != torch.float64:
                raise ValueError(f"linear_bounds returned {out.dtype}, not float64 (a rounded bound may be above the true one)")
            if not builtin and torch.isnan(out).any():
                raise ValueError("linear_bounds returned NaN")
        except (RuntimeError, ValueError, TypeError, AttributeError, IndexError) as exc:
            if _builtin(type(self.domain)):
                raise
            # a plugin domain returned something the engine cannot use: say which, not where it broke
            raise DomainError(f"domain {self.domain.name!r} ({type(self.domain).__module__}."
                              f"{type(self.domain).__qualname__}) failed: {type(exc).__name__}: {exc}. "
                              "absint.testing.check_domain names the method and what it returned") from exc
        return BoundResult(out.detach().cpu().numpy(), stats={"seconds": time.perf_counter() - t0})


def _checked_bounds(domain: Domain):
    """A propagation hook for plugin domains: every node's bounds must be float64, free of NaN, and
    ``lower ≤ upper`` (the region is not empty, so a sound element always contains a point; an inverted
    box claims the set is empty and would "prove" anything)."""

    def check(node: Op, element: Any) -> Any:
        lo, hi = domain.bounds(element)
        if not (isinstance(lo, torch.Tensor) and isinstance(hi, torch.Tensor)):
            raise TypeError(f"bounds() at node {node.name!r} returned {type(lo).__name__}, {type(hi).__name__}, "
                            "not tensors")
        shape = (lo.shape[0], *node.shape) if lo.dim() else None
        if tuple(lo.shape) != shape or tuple(hi.shape) != shape:
            raise ValueError(f"bounds() at node {node.name!r} have shapes {tuple(lo.shape)}, {tuple(hi.shape)}; "
                             f"expected [batch, {', '.join(map(str, node.shape))}]")
        if lo.dtype != torch.float64 or hi.dtype != torch.float64:
            raise ValueError(f"bounds() at node {node.name!r} are {lo.dtype}/{hi.dtype}, not float64")
        if torch.isnan(lo).any() or torch.isnan(hi).any():
            raise ValueError(f"bounds() at node {node.name!r} hold NaN")
        if (lo > hi).any():
            raise ValueError(f"bounds() at node {node.name!r} have lower > upper (an empty set: unsound)")
        return element

    return check


def _builtin(cls: type) -> bool:
    """Whether ``cls`` is one of absint's own domains (their failures are bugs to surface as they are)."""
    return cls.__module__.startswith(("absint.", "domains."))


_DOMAIN_ANALYSES: dict[type, type[DomainAnalysis]] = {}


def domain_analysis(domain_class: type[Domain]) -> type[DomainAnalysis]:
    """The :class:`DomainAnalysis` subclass for ``domain_class`` (named like the domain; one per class)."""
    cls = _DOMAIN_ANALYSES.get(domain_class)
    if cls is None:
        cls = type(f"{domain_class.__name__}Analysis", (DomainAnalysis,), {
            "name": domain_class.name, "domain_class": domain_class, "__module__": __name__,
            "description": domain_class.description or f"abstract interpretation with {domain_class.name}",
        })
        _DOMAIN_ANALYSES[domain_class] = cls
    return cls


def analysis_class(name: str) -> type[Analysis]:
    """The analysis class of ``name``: a registered analysis, else the analysis of the domain ``name``."""
    if registry.has(registry.ANALYSES, name):
        return registry.get(registry.ANALYSES, name)  # says why, if it cannot be loaded here
    if registry.has(registry.DOMAINS, name):
        try:
            return domain_analysis(registry.get(registry.DOMAINS, name))
        except UnknownNameError as exc:
            raise UnknownAnalysisError(f"analysis {name!r} is not available: {exc}") from None
    raise UnknownAnalysisError(f"unknown analysis {name!r}; available: {', '.join(analysis_names())}")


def analysis_names() -> list[str]:
    """Names of every analysis (registered analyses and domains), without importing any."""
    return sorted(set(registry.names(registry.ANALYSES)) | set(registry.names(registry.DOMAINS)))


def available_analyses() -> dict[str, type[Analysis]]:
    """Every usable analysis class by name (imports them all)."""
    out: dict[str, type[Analysis]] = {n: domain_analysis(c) for n, c in registry.available(registry.DOMAINS).items()}
    out.update(registry.available(registry.ANALYSES))
    return out


def get_analysis(name: str | Analysis, options: Options | None = None, **keywords: Any) -> Analysis:
    """An analysis instance by name, with ``options`` and/or keywords (or pass an instance through)."""
    if isinstance(name, Analysis):
        extra = {k: v for k, v in keywords.items() if k != "device"}  # the instance has its device
        if options is not None or extra:
            raise OptionError(f"options {sorted(extra) or [type(options).__name__]} were given together with a "
                              f"ready analysis instance {name.name!r}; set them when building it")
        return name
    if not isinstance(name, str):
        raise UnknownAnalysisError(f"an analysis is a name or an Analysis instance, not {type(name).__name__}")
    return analysis_class(name)(options, **keywords)
