"""Backend interface: :class:`Backend`, :class:`Session`, options and results.

Every backend solves a :class:`~absint.solvers.model.LinearModel` and returns a
:class:`SolveResult`.  Solver outcomes (infeasible, time limit, licence
limit, solver failure) are statuses, never exceptions.

``SolveResult.proved_bound`` is the number a verifier may rely on:

* minimisation: a lower bound on the true optimum,
* maximisation: an upper bound on the true optimum,

valid regardless of the solver's tolerances for LPs (computed from the duals
by :mod:`absint.solvers.safe_bound`), and the solver's own dual bound widened by the
MIP gap tolerances for MILPs.  ``None`` means nothing was proved.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, ClassVar, Mapping

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from .model import LinearModel, ObjectiveLike, Sense

__all__ = [
    "Status", "SolveOptions", "SolveResult", "Backend", "Session", "ModelSession", "solve_empty",
    "refuse_out_of_scale_mip",
]

logger = logging.getLogger(__name__)


class Status(str, Enum):
    """Outcome of one solve."""

    OPTIMAL = "optimal"
    INFEASIBLE = "infeasible"
    UNBOUNDED = "unbounded"
    INFEASIBLE_OR_UNBOUNDED = "infeasible_or_unbounded"
    TIME_LIMIT = "time_limit"
    ITERATION_LIMIT = "iteration_limit"  # simplex iterations, MIP nodes, solution limits
    LICENSE_LIMIT = "license_limit"  # model too large for the backend's licence
    NUMERICAL_ERROR = "numerical_error"
    ERROR = "error"
    UNKNOWN = "unknown"

    @property
    def is_limit(self) -> bool:
        """True for work limits (time/iterations): the solve stopped early."""
        return self in (Status.TIME_LIMIT, Status.ITERATION_LIMIT)


@dataclass(frozen=True)
class SolveOptions:
    """Per-solve options understood by every backend.

    ``iteration_limit`` caps simplex iterations (LPs and, where the backend
    supports it, LP iterations inside a MIP); ``node_limit`` caps MIP nodes.
    ``extra`` is passed verbatim to the backend (HiGHS option names, Gurobi
    parameter names or scipy option keys) and should be used sparingly.
    """

    time_limit: float | None = None
    iteration_limit: int | None = None
    node_limit: int | None = None
    threads: int | None = None
    mip_rel_gap: float = 1e-4
    mip_abs_gap: float = 1e-6
    presolve: bool = True
    relax_integrality: bool = False
    verbose: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> "SolveOptions":
        """Return a copy with some fields changed."""
        return replace(self, **changes)


@dataclass
class SolveResult:
    """Result of one solve (objective and duals are in the model's own sense).

    Attributes:
        status: outcome.
        objective: ``c·x + offset`` of ``x`` (None if no point; not a bound — use
            ``proved_bound``).
        x: primal point (None if none is available; only OPTIMAL guarantees
            feasibility — after a limit it may be the solver's last iterate).
        proved_bound: sound bound on the optimum (see module doc) or None.
        dual_bound: the solver's own (unsafe) bound, for diagnostics.
        row_duals: multipliers ``y`` with ``c ≈ Aᵀy + reduced costs`` (None if unavailable).
        backend: backend that actually produced the result.
        sense: objective direction of the solved model.
        is_mip: whether integrality was enforced.
        runtime: wall-clock seconds spent in the backend.
        iterations: simplex iterations (or MIP nodes) if reported.
        message: free-form diagnostics (e.g. licence fallback notice).
    """

    status: Status
    objective: float | None = None
    x: np.ndarray | None = None
    proved_bound: float | None = None
    dual_bound: float | None = None
    row_duals: np.ndarray | None = None
    backend: str = ""
    sense: Sense = Sense.MINIMIZE
    is_mip: bool = False
    runtime: float = 0.0
    iterations: int | None = None
    message: str = ""

    @property
    def is_optimal(self) -> bool:
        """True when the solver reports an optimal solution."""
        return self.status is Status.OPTIMAL

    @property
    def has_proved_bound(self) -> bool:
        """True when :attr:`proved_bound` carries information."""
        return self.proved_bound is not None

    def without_arrays(self) -> "SolveResult":
        """Copy with ``x`` and ``row_duals`` dropped (cheap to send between processes)."""
        return replace(self, x=None, row_duals=None)


class Backend(ABC):
    """A solver backend.  Instances are cheap and hold no model state."""

    #: registry name, e.g. ``"highs"``
    name: ClassVar[str] = ""

    @classmethod
    @abstractmethod
    def availability(cls) -> tuple[bool, str]:
        """Return ``(usable, human-readable reason)`` without raising."""

    @abstractmethod
    def solve(self, model: LinearModel, options: SolveOptions | None = None) -> SolveResult:
        """Solve ``model``; never raises for solver outcomes (see :class:`Status`)."""

    def session(self, model: LinearModel, options: SolveOptions | None = None) -> "Session":
        """Open an in-process session for repeated solves of variants of ``model``.

        The default session re-solves from scratch; backends with warm-start
        support (HiGHS) override this.
        """
        return ModelSession(self, model, options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Session(ABC):
    """Repeated solves of one evolving model (objective changes, bound changes, cuts).

    Policy (measured for per-neuron bound tightening): after an objective
    change the next solve is *cold* unless ``warm=True`` is passed; after
    bound changes or added cuts the previous basis is kept (warm re-solve)
    where the backend supports it.
    """

    def __init__(self, model: LinearModel, options: SolveOptions | None = None) -> None:
        self._model = model.copy()
        self.options = options or SolveOptions()

    @property
    def model(self) -> LinearModel:
        """The current model (a private copy; do not mutate)."""
        return self._model

    def set_objective(
        self,
        c: ObjectiveLike,
        sense: Sense | str = Sense.MINIMIZE,
        offset: float = 0.0,
        *,
        warm: bool = False,
    ) -> None:
        """Change the objective; the next solve is cold unless ``warm``."""
        self._model.set_objective(c, sense, offset)

    def set_var_bounds(
        self, idx: npt.ArrayLike, lb: npt.ArrayLike | None = None, ub: npt.ArrayLike | None = None
    ) -> None:
        """Change variable bounds (keeps the basis where supported)."""
        self._model.set_var_bounds(idx, lb, ub)

    def add_cuts(
        self,
        A: npt.ArrayLike | sp.spmatrix | sp.sparray,
        lo: npt.ArrayLike = -np.inf,
        hi: npt.ArrayLike = np.inf,
        *,
        cols: npt.ArrayLike | None = None,
    ) -> np.ndarray:
        """Append cut rows (keeps the basis where supported); return row indices."""
        return self._model.add_cuts(A, lo, hi, cols=cols)

    @abstractmethod
    def solve(self, options: SolveOptions | None = None) -> SolveResult:
        """Solve the current model."""

    def close(self) -> None:
        """Release solver resources."""

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ModelSession(Session):
    """Fallback session: every solve is a fresh ``backend.solve`` of the current model."""

    def __init__(
        self, backend: Backend, model: LinearModel, options: SolveOptions | None = None
    ) -> None:
        super().__init__(model, options)
        self.backend = backend

    def solve(self, options: SolveOptions | None = None) -> SolveResult:
        return self.backend.solve(self._model, options or self.options)


def refuse_out_of_scale_mip(model: LinearModel, relax: bool, backend: str) -> SolveResult | None:
    """A MILP whose numbers lie outside what MILP tolerances resolve (:func:`~absint.solvers.safe_bound.
    mip_scale_problem`) could prove nothing however it ended, so it is not solved: the result says why,
    with no bound and no point (the sound LP or domain bounds stand). ``None`` for every other model."""
    if relax:
        return None
    from .safe_bound import mip_scale_problem

    why = mip_scale_problem(model)
    if why is None:
        return None
    logger.info("MILP not solved: %s", why)
    return SolveResult(Status.UNKNOWN, backend=backend, sense=model.sense, is_mip=True,
                       message=f"MILP not solved: {why}; its solvers' tolerances cannot resolve it, so it proves nothing")


def solve_empty(model: LinearModel, backend: str) -> SolveResult:
    """Trivial result for a model without variables (rows are constants ``0``)."""
    feasible = bool(np.all(model.row_lo <= 0.0) and np.all(model.row_hi >= 0.0))
    if not feasible:
        return SolveResult(Status.INFEASIBLE, backend=backend, sense=model.sense,
                           message="empty model with infeasible rows")
    return SolveResult(
        Status.OPTIMAL, objective=model.offset, x=np.zeros(0), proved_bound=model.offset,
        dual_bound=model.offset, row_duals=np.zeros(model.num_rows), backend=backend,
        sense=model.sense, message="empty model",
    )
