"""Backend-neutral LP/MILP solver layer.

Build a :class:`LinearModel`, pick a backend with :func:`get_backend`
(HiGHS by default), and read :attr:`SolveResult.proved_bound` — a bound on
the optimum that stays valid regardless of solver tolerances (LPs) — rather
than :attr:`SolveResult.objective`.  Many objectives over one model (per-neuron
bound tightening) go through :func:`absint.solvers.parallel.solve_objectives` /
:func:`absint.solvers.parallel.tighten_bounds`.

Example::

    import numpy as np
    from absint.solvers import LinearModel, get_backend
    m = LinearModel()
    x = m.add_vars(lb=[0, 0], ub=[1, 1])
    m.add_constraints([[1.0, 1.0]], lo=-np.inf, hi=1.5)
    m.set_objective([1.0, 2.0], "max")
    res = get_backend().solve(m)
    res.proved_bound   # >= true maximum
"""

from __future__ import annotations

from .base import Backend, ModelSession, Session, SolveOptions, SolveResult, Status
from .errors import (
    BackendUnavailableError,
    LinearModelError,
    SolverLayerError,
    UnknownBackendError,
)
from .model import LinearModel, Sense
from .registry import DEFAULT_ORDER, available_backends, backend_class, get_backend

__all__ = [
    "LinearModel",
    "Sense",
    "Status",
    "SolveOptions",
    "SolveResult",
    "Backend",
    "Session",
    "ModelSession",
    "get_backend",
    "available_backends",
    "backend_class",
    "DEFAULT_ORDER",
    "SolverLayerError",
    "LinearModelError",
    "BackendUnavailableError",
    "UnknownBackendError",
    "solve",
]


def solve(
    model: LinearModel, backend: str | None = None, options: SolveOptions | None = None
) -> SolveResult:
    """Convenience: ``get_backend(backend).solve(model, options)``."""
    return get_backend(backend).solve(model, options)
