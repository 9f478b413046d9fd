"""Gurobi backend (gurobipy); strict about its licence, HiGHS fallback only when asked for.

The pip-installed gurobipy ships a size-limited licence: ``optimize()`` raises ``GurobiError``
10010 for models with more than 2000 variables or 2000 constraints. The backend probes the
licence once per process and checks every model's size before solving (:func:`fits_licence`).
By default a model that is too large (or that raises 10010) gets ``Status.LICENSE_LIMIT`` and no
bound — nothing is substituted behind the caller's back. ``GurobiBackend(fallback=True)`` solves
such models with HiGHS instead; the result then says so (``backend == "highs"`` and a message),
and a notice is logged once per process.

Rows ``lo <= a x <= hi`` are passed as ``=`` rows (``lo == hi``) or split into
a ``>=`` and a ``<=`` row, so ranged rows count twice toward the limit.
The model is always passed as a minimisation, so ``Pi`` follows the common
dual convention (``y > 0`` on active lower row bounds).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import numpy as np

from .base import Backend, SolveOptions, SolveResult, Status, refuse_out_of_scale_mip, solve_empty
from .errors import LinearModelError
from .model import LinearModel
from .safe_bound import lp_proved_bound, mip_proved_bound

__all__ = ["GurobiBackend", "SIZE_LIMIT", "LICENSE_ERRNO"]

logger = logging.getLogger(__name__)

try:  # pragma: no cover - depends on the environment
    import gurobipy as gp

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover
    gp = None
    _IMPORT_ERROR = str(exc)

SIZE_LIMIT = 2000  # variables / constraints allowed by the size-limited licence
LICENSE_ERRNO = 10010  # GurobiError code: model too large for size-limited licence
_GRB_INF = 1e100

_env: Any = None
_env_pid: int | None = None
_licence: tuple[bool, bool, str] | None = None  # (usable, size_limited, reason)
_notice_logged = False

_STATUS = {
    2: Status.OPTIMAL,
    3: Status.INFEASIBLE,
    4: Status.INFEASIBLE_OR_UNBOUNDED,
    5: Status.UNBOUNDED,
    6: Status.UNKNOWN,  # CUTOFF
    7: Status.ITERATION_LIMIT,
    8: Status.ITERATION_LIMIT,  # NODE_LIMIT
    9: Status.TIME_LIMIT,
    10: Status.ITERATION_LIMIT,  # SOLUTION_LIMIT
    11: Status.UNKNOWN,  # INTERRUPTED
    12: Status.NUMERICAL_ERROR,
    13: Status.UNKNOWN,  # SUBOPTIMAL
    15: Status.UNKNOWN,  # USER_OBJ_LIMIT
    16: Status.TIME_LIMIT,  # WORK_LIMIT
    17: Status.ERROR,  # MEM_LIMIT
}


_thread_envs = threading.local()


def _get_env() -> Any:
    """One silent Gurobi environment per process (re-created after fork), and one per extra thread
    (Gurobi environments must not be shared between threads solving at the same time)."""
    global _env, _env_pid
    if threading.current_thread() is not threading.main_thread():
        if getattr(_thread_envs, "env", None) is None or getattr(_thread_envs, "pid", None) != os.getpid():
            _thread_envs.env, _thread_envs.pid = _new_env(), os.getpid()
        return _thread_envs.env
    if _env is None or _env_pid != os.getpid():
        _env, _env_pid = _new_env(), os.getpid()
    return _env


def _new_env() -> Any:
    env = gp.Env(empty=True)
    env.setParam("OutputFlag", 0)
    env.start()
    return env


def licence_info() -> tuple[bool, bool, str]:
    """Return ``(usable, size_limited, reason)``; probes Gurobi once per process."""
    global _licence
    if _licence is not None:
        return _licence
    if gp is None:
        _licence = (False, False, f"gurobipy not importable: {_IMPORT_ERROR}")
        return _licence
    version = ".".join(map(str, gp.gurobi.version()))
    try:
        env = _get_env()
        probe = gp.Model(env=env)
        probe.addMVar(SIZE_LIMIT + 1, lb=0.0, ub=1.0)
        try:
            probe.optimize()
            _licence = (True, False, f"installed (Gurobi {version}), full licence")
        except gp.GurobiError as exc:
            if exc.errno == LICENSE_ERRNO:
                _licence = (
                    True, True,
                    f"installed (Gurobi {version}), size-limited licence "
                    f"({SIZE_LIMIT} vars/constraints)",
                )
            else:
                _licence = (False, False, f"Gurobi {version} licence check failed: {exc}")
        finally:
            probe.dispose()
    except Exception as exc:  # noqa: BLE001 - any licence/env failure means unavailable
        _licence = (False, False, f"Gurobi {version} environment failed: {exc}")
    return _licence


def _log_fallback_once(reason: str) -> None:
    global _notice_logged
    if not _notice_logged:
        _notice_logged = True
        logger.warning(
            "Gurobi size-limited licence (%d vars/constraints): %s; solving with HiGHS "
            "instead (this notice is shown once per process)", SIZE_LIMIT, reason,
        )


def fits_licence(model: LinearModel) -> bool:
    """True if Gurobi is usable here and its licence admits ``model``'s size."""
    ok, limited, _ = licence_info()
    if not ok:
        return False
    eq, ge, le = _gurobi_rows(model)
    return not limited or (model.num_vars <= SIZE_LIMIT and int(eq.sum() + ge.sum() + le.sum()) <= SIZE_LIMIT)


def _gurobi_rows(model: LinearModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks of rows passed as ``=``, ``>=`` and ``<=`` constraints."""
    lo, hi = model.row_lo, model.row_hi
    eq = lo == hi
    return eq, np.isfinite(lo) & ~eq, np.isfinite(hi) & ~eq


class GurobiBackend(Backend):
    """LP/MILP backend using Gurobi; beyond the licence size: ``LICENSE_LIMIT``, or HiGHS with ``fallback``."""

    name = "gurobi"

    def __init__(self, fallback: bool = False) -> None:
        self.fallback = fallback

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        ok, _, reason = licence_info()
        return ok, reason

    def solve(self, model: LinearModel, options: SolveOptions | None = None) -> SolveResult:
        opts = options or SolveOptions()
        if model.num_vars == 0:
            return solve_empty(model, self.name)
        refused = refuse_out_of_scale_mip(model, opts.relax_integrality or not model.is_mip, self.name)
        if refused is not None:
            return refused
        ok, limited, reason = licence_info()
        if not ok:
            return SolveResult(Status.ERROR, backend=self.name, sense=model.sense, message=reason)
        eq, ge, le = _gurobi_rows(model)
        n_rows = int(eq.sum() + ge.sum() + le.sum())
        if limited and (model.num_vars > SIZE_LIMIT or n_rows > SIZE_LIMIT):
            return self._licence_limit(
                model, opts, f"model has {model.num_vars} vars / {n_rows} constraints"
            )
        t0 = time.perf_counter()
        try:
            return self._solve(model, opts, eq, ge, le, t0)
        except LinearModelError:
            raise
        except gp.GurobiError as exc:
            if exc.errno == LICENSE_ERRNO:
                return self._licence_limit(model, opts, f"optimize() raised error {exc.errno}")
            logger.warning("Gurobi solve failed: %s", exc)
            msg = f"Gurobi error {exc.errno}: {exc}"
        except Exception as exc:  # noqa: BLE001 - solver failures become a status
            logger.warning("Gurobi solve failed: %s", exc)
            msg = f"Gurobi error: {exc}"
        return SolveResult(
            Status.ERROR, backend=self.name, sense=model.sense,
            runtime=time.perf_counter() - t0, message=msg,
        )

    # -------------------------------------------------------------- internals
    def _licence_limit(self, model: LinearModel, opts: SolveOptions, why: str) -> SolveResult:
        if not self.fallback:
            return SolveResult(
                Status.LICENSE_LIMIT, backend=self.name, sense=model.sense,
                is_mip=model.is_mip and not opts.relax_integrality,
                message=f"size-limited Gurobi licence: {why}",
            )
        _log_fallback_once(why)
        from .highs_backend import HighsBackend

        res = HighsBackend().solve(model, opts)
        res.message = f"Gurobi licence limit ({why}); solved by HiGHS. {res.message}"
        return res

    def _solve(
        self,
        model: LinearModel,
        o: SolveOptions,
        eq: np.ndarray,
        ge: np.ndarray,
        le: np.ndarray,
        t0: float,
    ) -> SolveResult:
        relax = o.relax_integrality or not model.is_mip
        sign = model.sense.sign
        gm = gp.Model(env=_get_env())
        try:
            vtype = np.where(model.integrality & (not relax), "I", "C")
            x = gm.addMVar(
                model.num_vars,
                lb=np.clip(model.lb, -_GRB_INF, _GRB_INF),
                ub=np.clip(model.ub, -_GRB_INF, _GRB_INF),
                vtype=vtype,
            )
            A = model.A
            cons = []
            for mask, sense, rhs in ((eq, "=", model.row_lo), (ge, ">", model.row_lo),
                                     (le, "<", model.row_hi)):
                if mask.any():
                    cons.append((mask, gm.addMConstr(A[mask], x, sense, rhs[mask])))
            gm.setMObjective(None, sign * model.objective, sign * model.offset, gp.GRB.MINIMIZE)
            self._set_params(gm, o)
            gm.optimize()
            return self._extract(gm, model, o, relax, x, cons, time.perf_counter() - t0)
        finally:
            gm.dispose()

    @staticmethod
    def _set_params(gm: Any, o: SolveOptions) -> None:
        p = gm.Params
        p.OutputFlag = int(o.verbose)
        if o.time_limit is not None:
            p.TimeLimit = max(0.0, float(o.time_limit))
        if o.iteration_limit is not None:
            p.IterationLimit = float(o.iteration_limit)
        if o.node_limit is not None:
            p.NodeLimit = float(o.node_limit)
        if o.threads is not None:
            p.Threads = int(o.threads)
        p.MIPGap = float(o.mip_rel_gap)
        p.MIPGapAbs = float(o.mip_abs_gap)
        if not o.presolve:
            p.Presolve = 0
        for key, value in o.extra.items():
            gm.setParam(key, value)

    def _extract(
        self,
        gm: Any,
        model: LinearModel,
        o: SolveOptions,
        relax: bool,
        x: Any,
        cons: list[tuple[np.ndarray, Any]],
        runtime: float,
    ) -> SolveResult:
        status = _STATUS.get(int(gm.Status), Status.UNKNOWN)
        sign = model.sense.sign
        xv = np.asarray(x.X, dtype=np.float64) if gm.SolCount > 0 else None
        if status in (Status.INFEASIBLE, Status.INFEASIBLE_OR_UNBOUNDED):
            xv = None
        objective = model.objective_value(xv) if xv is not None else None
        y: np.ndarray | None = None
        proved = dual_bound = None
        if relax:
            try:
                y = np.zeros(model.num_rows)
                for mask, c in cons:
                    y[mask] += np.asarray(c.Pi, dtype=np.float64)
            except (gp.GurobiError, AttributeError):
                y = None  # no duals (e.g. stopped early); the box bound is still valid
            if status is Status.OPTIMAL or status.is_limit or status is Status.UNKNOWN:
                proved = lp_proved_bound(model, y)
            if status is Status.OPTIMAL:
                dual_bound = objective
            iters = int(gm.IterCount)
        else:
            try:
                db = float(gm.ObjBound)
            except (gp.GurobiError, AttributeError):
                db = None
            if db is not None and abs(db) < _GRB_INF:
                dual_bound = sign * db
                if status is Status.OPTIMAL or status.is_limit:
                    proved = mip_proved_bound(model, db, o.mip_rel_gap, o.mip_abs_gap)
            iters = int(gm.NodeCount)
        return SolveResult(
            status=status,
            objective=objective,
            x=xv,
            proved_bound=proved,
            dual_bound=dual_bound,
            row_duals=None if y is None else sign * y,
            backend=self.name,
            sense=model.sense,
            is_mip=not relax,
            runtime=runtime,
            iterations=iters,
            message=f"Gurobi status {int(gm.Status)}",
        )
