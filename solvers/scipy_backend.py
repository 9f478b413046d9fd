"""Last-resort backend: ``scipy.optimize.linprog`` (LP) and ``scipy.optimize.milp`` (MILP).

Both run HiGHS inside scipy, so results match the HiGHS backend, but there is
no warm start, no iteration limit for MILPs, and no primal point / duals when
a limit is hit (the proved bound then falls back to the box bound ``y = 0``).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import scipy
import scipy.sparse as sp

from .base import Backend, SolveOptions, SolveResult, Status, refuse_out_of_scale_mip, solve_empty
from .errors import LinearModelError
from .model import LinearModel
from .safe_bound import lp_proved_bound, mip_proved_bound

__all__ = ["ScipyBackend"]

logger = logging.getLogger(__name__)

try:  # pragma: no cover - depends on the environment
    from scipy.optimize import Bounds, LinearConstraint, linprog, milp

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover
    linprog = milp = Bounds = LinearConstraint = None
    _IMPORT_ERROR = str(exc)

_SCIPY_MIP_ABS_GAP = 1e-6  # HiGHS default inside scipy.milp (not configurable there)


def _limit_status(message: str) -> Status:
    return Status.TIME_LIMIT if "time limit" in message.lower() else Status.ITERATION_LIMIT


def _is_limit(r: object) -> bool:
    """scipy status 1, or status 4 wrapping a HiGHS node/solution limit."""
    msg = str(getattr(r, "message", "")).lower()
    return r.status == 1 or (r.status == 4 and "limit reached" in msg)


class ScipyBackend(Backend):
    """LP/MILP backend using scipy.optimize (HiGHS inside)."""

    name = "scipy"

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        if milp is None:
            return False, f"scipy.optimize.milp not importable: {_IMPORT_ERROR}"
        return True, f"installed (scipy {scipy.__version__})"

    def solve(self, model: LinearModel, options: SolveOptions | None = None) -> SolveResult:
        opts = options or SolveOptions()
        if model.num_vars == 0:
            return solve_empty(model, self.name)
        t0 = time.perf_counter()
        relax = opts.relax_integrality or not model.is_mip
        refused = refuse_out_of_scale_mip(model, relax, self.name)
        if refused is not None:
            return refused
        try:
            res = self._solve_lp(model, opts) if relax else self._solve_milp(model, opts)
        except LinearModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - solver failures become a status
            logger.warning("scipy solve failed: %s", exc)
            res = SolveResult(Status.ERROR, message=f"scipy error: {exc}")
        res.backend, res.sense, res.is_mip = self.name, model.sense, not relax
        res.runtime = time.perf_counter() - t0
        return res

    # -------------------------------------------------------------- internals
    @staticmethod
    def _common_options(o: SolveOptions) -> dict:
        d: dict = {"disp": bool(o.verbose), "presolve": bool(o.presolve)}
        if o.time_limit is not None:
            d["time_limit"] = max(0.0, float(o.time_limit))
        d.update(o.extra)
        return d

    def _solve_lp(self, model: LinearModel, o: SolveOptions) -> SolveResult:
        sign = model.sense.sign
        A, lo, hi = model.A, model.row_lo, model.row_hi
        eq = lo == hi
        ge, le = np.isfinite(lo) & ~eq, np.isfinite(hi) & ~eq
        A_ub = sp.vstack([A[le], -A[ge]], format="csr") if (le.any() or ge.any()) else None
        b_ub = np.concatenate([hi[le], -lo[ge]]) if A_ub is not None else None
        A_eq, b_eq = (A[eq], lo[eq]) if eq.any() else (None, None)
        opts = self._common_options(o)
        if o.iteration_limit is not None:
            opts["maxiter"] = int(o.iteration_limit)
        r = linprog(
            sign * model.objective, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq,
            bounds=np.column_stack([model.lb, model.ub]) if model.num_vars else None,
            method="highs", options=opts,
        )
        status = {0: Status.OPTIMAL, 2: Status.INFEASIBLE, 3: Status.UNBOUNDED,
                  4: Status.NUMERICAL_ERROR}.get(r.status, Status.UNKNOWN)
        if _is_limit(r):
            status = _limit_status(r.message)
        x = np.asarray(r.x, dtype=np.float64) if r.x is not None and status is not Status.INFEASIBLE else None
        y = None
        marg_ub = getattr(getattr(r, "ineqlin", None), "marginals", None)
        marg_eq = getattr(getattr(r, "eqlin", None), "marginals", None)
        if status is Status.OPTIMAL and (A_ub is None or marg_ub is not None) and (
            A_eq is None or marg_eq is not None
        ):
            y = np.zeros(model.num_rows)
            if A_ub is not None:
                mu = np.asarray(marg_ub, dtype=np.float64)
                nle = int(le.sum())
                y[le] += mu[:nle]  # row <= hi : marginal <= 0 multiplies hi
                y[ge] -= mu[nle:]  # -row <= -lo : marginal <= 0, y = -marginal >= 0
            if A_eq is not None:
                y[eq] = np.asarray(marg_eq, dtype=np.float64)
        proved = None
        if status is Status.OPTIMAL or status.is_limit:
            proved = lp_proved_bound(model, y)
        objective = model.objective_value(x) if x is not None else None
        return SolveResult(
            status=status, objective=objective, x=x, proved_bound=proved,
            dual_bound=objective if status is Status.OPTIMAL else None,
            row_duals=None if y is None else sign * y,
            iterations=int(getattr(r, "nit", 0) or 0), message=str(r.message),
        )

    def _solve_milp(self, model: LinearModel, o: SolveOptions) -> SolveResult:
        sign = model.sense.sign
        opts = self._common_options(o)
        opts["mip_rel_gap"] = float(o.mip_rel_gap)
        if o.node_limit is not None:
            opts["node_limit"] = int(o.node_limit)
        cons = LinearConstraint(model.A, model.row_lo, model.row_hi) if model.num_rows else None
        r = milp(
            sign * model.objective, integrality=model.integrality.astype(np.int64),
            bounds=Bounds(model.lb, model.ub), constraints=cons, options=opts,
        )
        status = {0: Status.OPTIMAL, 2: Status.INFEASIBLE, 3: Status.UNBOUNDED}.get(
            r.status, Status.UNKNOWN
        )
        if _is_limit(r):
            status = _limit_status(r.message)
        x = np.asarray(r.x, dtype=np.float64) if r.x is not None and status is not Status.INFEASIBLE else None
        db = getattr(r, "mip_dual_bound", None)
        db_min = None if db is None or not np.isfinite(db) else float(db) + sign * model.offset
        proved = None
        if db_min is not None and (status is Status.OPTIMAL or status.is_limit):
            abs_gap = max(float(o.mip_abs_gap), _SCIPY_MIP_ABS_GAP)
            proved = mip_proved_bound(model, db_min, o.mip_rel_gap, abs_gap)
        return SolveResult(
            status=status,
            objective=model.objective_value(x) if x is not None else None,
            x=x, proved_bound=proved,
            dual_bound=None if db_min is None else sign * db_min,
            iterations=int(getattr(r, "mip_node_count", 0) or 0), message=str(r.message),
        )
