"""Typed errors raised by the solver layer.

Solver *outcomes* (infeasible, time limit, licence limit, ...) are never
raised; they are reported through :class:`absint.solvers.base.Status`.  Exceptions
are reserved for programming errors (malformed models) and for asking for a
backend that cannot be provided.
"""

from __future__ import annotations

__all__ = [
    "SolverLayerError",
    "ModelError",
    "BackendUnavailableError",
    "UnknownBackendError",
]


class SolverLayerError(Exception):
    """Base class of every error raised by :mod:`solvers`."""


class ModelError(SolverLayerError, ValueError):
    """A :class:`~absint.solvers.model.LinearModel` was built or modified inconsistently."""


class BackendUnavailableError(SolverLayerError, RuntimeError):
    """The requested backend is known but cannot be used in this environment."""


class UnknownBackendError(SolverLayerError, ValueError):
    """The requested backend name is not known."""
