"""HiGHS backend (default), via highspy.

Uses the raw binding ``highspy._core._Highs`` when present: it skips the
Python wrapper's callback machinery and its console banner.  Models are
always passed to HiGHS as *minimisation* (``min sign·c·x``) so dual signs
follow one convention: ``c_min = Aᵀy + d`` with ``y_i > 0`` on active lower
row bounds and ``y_i < 0`` on active upper row bounds.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from .base import Backend, Session, SolveOptions, SolveResult, Status, refuse_out_of_scale_mip, solve_empty
from .errors import LinearModelError
from .model import LinearModel, ObjectiveLike, Sense
from .safe_bound import lp_proved_bound, mip_proved_bound

__all__ = ["HighsBackend", "HighsSession"]

logger = logging.getLogger(__name__)

try:  # pragma: no cover - exercised implicitly
    import highspy

    try:
        from highspy._core import _Highs as _HighsClass
    except ImportError:  # older/newer layouts: fall back to the public class
        _HighsClass = highspy.Highs
    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - depends on the environment
    highspy = None
    _HighsClass = None
    _IMPORT_ERROR = str(exc)

_INT_MAX = 2147483647


def _status_map() -> dict[Any, Status]:
    if highspy is None:
        return {}
    M = highspy.HighsModelStatus
    table = {
        "kOptimal": Status.OPTIMAL,
        "kModelEmpty": Status.OPTIMAL,
        "kInfeasible": Status.INFEASIBLE,
        "kUnbounded": Status.UNBOUNDED,
        "kUnboundedOrInfeasible": Status.INFEASIBLE_OR_UNBOUNDED,
        "kTimeLimit": Status.TIME_LIMIT,
        "kIterationLimit": Status.ITERATION_LIMIT,
        "kSolutionLimit": Status.ITERATION_LIMIT,
        "kLoadError": Status.ERROR,
        "kModelError": Status.ERROR,
        "kPresolveError": Status.ERROR,
        "kSolveError": Status.NUMERICAL_ERROR,
        "kPostsolveError": Status.NUMERICAL_ERROR,
        "kMemoryLimit": Status.ERROR,
    }
    return {getattr(M, k): v for k, v in table.items() if hasattr(M, k)}


_STATUS = _status_map()


class HighsBackend(Backend):
    """LP/MILP backend using HiGHS."""

    name = "highs"

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        if highspy is None:
            return False, f"highspy not importable: {_IMPORT_ERROR}"
        try:
            version = f"{_HighsClass().version()}"
        except Exception:  # noqa: BLE001 - version lookup is cosmetic
            version = "unknown version"
        return True, f"installed (HiGHS {version})"

    def solve(self, model: LinearModel, options: SolveOptions | None = None) -> SolveResult:
        if model.num_vars == 0:
            return solve_empty(model, self.name)
        session = HighsSession(model, options, copy_model=False)
        try:
            return session.solve()
        finally:
            session.close()

    def session(self, model: LinearModel, options: SolveOptions | None = None) -> "HighsSession":
        return HighsSession(model, options)


class HighsSession(Session):
    """Persistent HiGHS instance for repeated solves of an evolving model.

    Objective changes make the next solve cold (``clearSolver``) unless
    ``warm=True``; bound changes and cuts keep the basis (warm re-solve).
    """

    def __init__(
        self, model: LinearModel, options: SolveOptions | None = None, *, copy_model: bool = True
    ) -> None:
        if highspy is None:
            from .errors import BackendUnavailableError

            raise BackendUnavailableError(f"highspy not importable: {_IMPORT_ERROR}")
        super().__init__(model, options)
        if not copy_model:
            self._model = model
        self._h: Any = None
        self._relaxed: bool | None = None  # integrality state loaded into HiGHS
        self._cold = True

    # ----------------------------------------------------------- modification
    def set_objective(
        self,
        c: ObjectiveLike,
        sense: Sense | str = Sense.MINIMIZE,
        offset: float = 0.0,
        *,
        warm: bool = False,
    ) -> None:
        self._model.set_objective(c, sense, offset)
        if self._h is not None:
            m = self._model
            n = m.num_vars
            self._h.changeColsCost(n, np.arange(n, dtype=np.int32), m.sense.sign * m.objective)
            self._h.changeObjectiveOffset(m.sense.sign * m.offset)
        if not warm:
            self._cold = True

    def set_var_bounds(
        self, idx: npt.ArrayLike, lb: npt.ArrayLike | None = None, ub: npt.ArrayLike | None = None
    ) -> None:
        self._model.set_var_bounds(idx, lb, ub)
        if self._h is not None:
            ii = LinearModel._check_index(idx, self._model.num_vars, "variable")
            self._h.changeColsBounds(
                ii.size, ii.astype(np.int32), self._model.lb[ii].copy(), self._model.ub[ii].copy()
            )

    def add_cuts(
        self,
        A: npt.ArrayLike | sp.spmatrix | sp.sparray,
        lo: npt.ArrayLike = -np.inf,
        hi: npt.ArrayLike = np.inf,
        *,
        cols: npt.ArrayLike | None = None,
    ) -> np.ndarray:
        rows = self._model.add_cuts(A, lo, hi, cols=cols)
        if self._h is not None and rows.size:
            M = self._model.A[rows]
            self._h.addRows(
                rows.size,
                self._model.row_lo[rows].copy(),
                self._model.row_hi[rows].copy(),
                M.nnz,
                M.indptr[:-1].astype(np.int32),
                M.indices.astype(np.int32),
                M.data.astype(np.float64),
            )
        return rows

    # ------------------------------------------------------------------ solve
    def solve(self, options: SolveOptions | None = None) -> SolveResult:
        opts = options or self.options
        model = self._model
        relax = opts.relax_integrality or not model.is_mip
        refused = refuse_out_of_scale_mip(model, relax, HighsBackend.name)
        if refused is not None:
            return refused
        t0 = time.perf_counter()
        try:
            if self._h is None or self._relaxed != relax:
                self._load(relax)
            h = self._h
            self._apply_options(opts)
            if self._cold:
                h.clearSolver()
            h.run()
            self._cold = False
            return self._extract(opts, relax, time.perf_counter() - t0)
        except LinearModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - solver failures become a status
            logger.warning("HiGHS solve failed: %s", exc)
            self._h, self._cold = None, True
            return SolveResult(
                Status.ERROR, backend=HighsBackend.name, sense=model.sense,
                is_mip=not relax, runtime=time.perf_counter() - t0, message=f"HiGHS error: {exc}",
            )

    def close(self) -> None:
        self._h = None

    # -------------------------------------------------------------- internals
    def _load(self, relax: bool) -> None:
        m = self._model
        h = _HighsClass()
        h.setOptionValue("output_flag", False)
        A = m.A.tocsc()
        sign = m.sense.sign
        integrality = np.zeros(m.num_vars, dtype=np.int32) if relax else m.integrality.astype(np.int32)
        h.passModel(
            m.num_vars, m.num_rows, A.nnz,
            1,  # MatrixFormat.kColwise
            1,  # ObjSense.kMinimize
            sign * m.offset,
            sign * m.objective,
            m.lb.copy(), m.ub.copy(), m.row_lo.copy(), m.row_hi.copy(),
            A.indptr.astype(np.int32), A.indices.astype(np.int32), A.data.astype(np.float64),
            integrality,
        )
        self._h, self._relaxed, self._cold = h, relax, True

    def _apply_options(self, o: SolveOptions) -> None:
        h = self._h
        settings: dict[str, Any] = {
            "output_flag": bool(o.verbose),
            # HiGHS' time_limit counts the instance's cumulative run time: make it per-solve
            "time_limit": (
                h.getRunTime() + max(0.0, float(o.time_limit)) if o.time_limit is not None
                else np.inf
            ),
            "simplex_iteration_limit": _clip_int(o.iteration_limit),
            "ipm_iteration_limit": _clip_int(o.iteration_limit),
            "mip_max_nodes": _clip_int(o.node_limit),
            "mip_rel_gap": float(o.mip_rel_gap),
            "mip_abs_gap": float(o.mip_abs_gap),
            "presolve": "choose" if o.presolve else "off",
        }
        if o.threads is not None:
            settings["threads"] = int(o.threads)
        settings.update(o.extra)
        for key, value in settings.items():
            status = h.setOptionValue(key, value)
            if status != highspy.HighsStatus.kOk:
                logger.warning("HiGHS rejected option %s=%r (%s)", key, value, status)

    def _extract(self, opts: SolveOptions, relax: bool, runtime: float) -> SolveResult:
        h, m = self._h, self._model
        raw = h.getModelStatus()
        status = _STATUS.get(raw, Status.UNKNOWN)
        info = h.getInfo()
        sol = h.getSolution()
        sign = m.sense.sign
        x = np.asarray(sol.col_value, dtype=np.float64) if sol.value_valid else None
        if x is not None and x.size != m.num_vars:
            x = None
        y = np.asarray(sol.row_dual, dtype=np.float64)
        y = y if (y.size == m.num_rows and (sol.dual_valid or status.is_limit)) else None
        if status in (Status.INFEASIBLE, Status.INFEASIBLE_OR_UNBOUNDED):
            x = None
        objective = m.objective_value(x) if x is not None else None

        proved: float | None = None
        dual_bound: float | None = None
        if relax:
            if status is Status.OPTIMAL or status.is_limit or status is Status.UNKNOWN:
                proved = lp_proved_bound(m, y)
            if status is Status.OPTIMAL:
                dual_bound = objective
            iters = int(info.simplex_iteration_count)
        else:
            db = float(info.mip_dual_bound)
            if np.isfinite(db):
                dual_bound = sign * db
            if status is Status.OPTIMAL or status.is_limit:
                proved = mip_proved_bound(m, db, opts.mip_rel_gap, opts.mip_abs_gap)
            iters = int(info.mip_node_count)
        return SolveResult(
            status=status,
            objective=objective,
            x=x,
            proved_bound=proved,
            dual_bound=dual_bound,
            row_duals=None if y is None else sign * y,
            backend=HighsBackend.name,
            sense=m.sense,
            is_mip=not relax,
            runtime=runtime,
            iterations=iters,
            message=h.modelStatusToString(raw),
        )


def _clip_int(v: int | None) -> int:
    return _INT_MAX if v is None else int(max(0, min(int(v), _INT_MAX)))
