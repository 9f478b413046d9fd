"""Typed errors raised by the solver layer.

Solver *outcomes* (infeasible, time limit, licence limit, ...) are never
raised; they are reported through :class:`absint.solvers.base.Status`.  Exceptions
are reserved for programming errors (malformed models) and for asking for a
backend that cannot be provided.
"""

from __future__ import annotations

from absint.errors import AbsintError, UnknownBackendError

__all__ = [
    "SolverLayerError",
    "LinearModelError",
    "BackendUnavailableError",
    "UnknownBackendError",
]


class SolverLayerError(AbsintError):
    """Base class of every error raised by :mod:`absint.solvers`."""


class LinearModelError(SolverLayerError, ValueError):
    """A :class:`~absint.solvers.model.LinearModel` was built or modified inconsistently (not to be
    confused with :class:`absint.errors.ModelError`, a bad network)."""


class BackendUnavailableError(SolverLayerError, RuntimeError):
    """The requested backend is known but cannot be used in this environment."""
