"""Exact SDP-cert with cvxpy (SCS by default; Clarabel and MOSEK when usable).

Solves the semidefinite relaxation of Raghunathan, Steinhardt & Liang (NeurIPS 2018) built by
:mod:`absint.solvers.sdp_problem` for each objective row, then turns the solver's dual multipliers into
a proved bound with :func:`absint.solvers.sdp_problem.certify` (Lagrangian matrix, its top eigenvalue
times the trace bound). The returned bound is valid whatever the solver's accuracy — also after
an iteration or time limit, or a failed solve (then the multipliers fall back to the interval
ones and the bound is the interval bound).

Backends: SCS (first-order, scales to a few hundred rows of ``P``), Clarabel (interior point; it
ran out of memory on a 200×200 PSD variable here, so ``auto`` only picks it for small ``N``),
MOSEK (needs a licence; detected by a tiny solve).
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from absint.errors import SolverError
from absint.solvers.sdp_problem import SDPProblem, certify, interval_multipliers

log = logging.getLogger(__name__)

#: Backends in the order ``auto`` prefers them (MOSEK when licensed, else SCS).
EXACT_BACKENDS = ("mosek", "scs", "clarabel")
#: Clarabel's dense KKT factorisation exhausted memory at N = 200 here; auto avoids it above this.
CLARABEL_AUTO_MAX_N = 80


class SDPBackendUnavailable(SolverError, RuntimeError):
    """The requested cvxpy backend is not installed or not licensed."""


@lru_cache(maxsize=None)
def backend_availability(name: str) -> tuple[bool, str]:
    """``(usable, reason)`` for an SDP backend, without raising (MOSEK: solves a 2×2 SDP)."""
    try:
        import cvxpy as cp
    except ImportError:
        return False, "cvxpy not installed (pip install 'absint[sdp]')"
    key = name.upper()
    if key not in cp.installed_solvers():
        return False, f"{name} not installed for cvxpy"
    if key == "MOSEK":
        try:
            X = cp.Variable((2, 2), PSD=True)
            cp.Problem(cp.Minimize(cp.trace(X)), [X[0, 0] == 1]).solve(solver="MOSEK")
        except Exception as exc:  # licence errors come as SolverError with varying text
            return False, f"MOSEK installed but not usable (licence?): {str(exc).splitlines()[0][:120]}"
    return True, "installed"


def available_backends() -> dict[str, tuple[bool, str]]:
    """Map backend name -> ``(usable, reason)``."""
    return {b: backend_availability(b) for b in EXACT_BACKENDS}


def choose_backend(name: str, size: int) -> str:
    """Resolve ``auto`` (MOSEK if licensed, else SCS) and check a named backend."""
    name = name.lower()
    if name == "auto":
        if backend_availability("mosek")[0]:
            return "mosek"
        if size <= CLARABEL_AUTO_MAX_N and backend_availability("clarabel")[0]:
            return "clarabel"
        name = "scs"
    ok, why = backend_availability(name)
    if not ok:
        raise SDPBackendUnavailable(f"SDP backend {name!r} unavailable: {why}")
    return name


@dataclass
class ExactResult:
    """Per objective row: the proved upper bound of the violation and the solver's own view."""

    upper: np.ndarray  # [m] certified (dual) upper bounds — the numbers to trust
    primal: np.ndarray  # [m] solver's objective value (not a bound; NaN when none)
    status: list[str]
    seconds: float
    backend: str
    multipliers: list[dict[str, torch.Tensor]] = field(default_factory=list)


def _solver_kwargs(backend: str, tol: float, max_iters: int | None, time_limit: float | None,
                   verbose: bool, extra: dict[str, Any] | None) -> dict[str, Any]:
    kw: dict[str, Any] = {"verbose": verbose}
    if backend == "scs":
        kw.update(eps_abs=tol, eps_rel=tol, max_iters=max_iters or 100_000)
        if time_limit is not None:
            kw["time_limit_secs"] = max(time_limit, 1e-3)
    elif backend == "clarabel":
        kw.update(tol_gap_abs=tol, tol_gap_rel=tol, tol_feas=tol)
        if max_iters is not None:
            kw["max_iter"] = max_iters
        if time_limit is not None:
            kw["time_limit"] = max(time_limit, 1e-3)
    elif backend == "mosek":
        params: dict[str, Any] = {"MSK_DPAR_INTPNT_CO_TOL_REL_GAP": tol}
        if time_limit is not None:
            params["MSK_DPAR_OPTIMIZER_MAX_TIME"] = max(time_limit, 1e-3)
        if max_iters is not None:
            params["MSK_IPAR_INTPNT_MAX_ITERATIONS"] = max_iters
        kw["mosek_params"] = params
    kw.update(extra or {})
    return kw


def solve_exact(prob: SDPProblem, *, backend: str = "auto", tol: float = 1e-6, max_iters: int | None = None,
                time_limit: float | None = None, deadline: float | None = None, verbose: bool = False,
                solver_options: dict[str, Any] | None = None) -> ExactResult:
    """Solve each objective row's SDP with cvxpy and certify the optimum from the duals.

    ``time_limit`` caps each solve; ``deadline`` (a ``time.perf_counter()`` value) caps the whole
    call — rows not reached get the interval certificate (still a valid bound).
    """
    import cvxpy as cp

    t0 = time.perf_counter()
    N, K, U = prob.size, prob.n_lin, prob.n_relu
    name = choose_backend(backend, N)
    p64 = prob.to("cpu", torch.float64)
    L = p64.lin.numpy()
    D = p64.relu_diff().numpy()
    idx = p64.relu_index.numpy()
    m, r = p64.relu_m.numpy(), p64.relu_r.numpy()

    P = cp.Variable((N, N), PSD=True)
    q = cp.Parameter(N)
    col = P[:, 0]
    cons = [P[0, 0] == 1]
    if N > 1:
        cons.append(cp.diag(P)[1:] <= 1)
    if K:
        cons.append(L @ col >= 0)
    if U:
        cons.append(cp.multiply(m, D @ col) + cp.multiply(r, cp.sum(cp.multiply(P[idx, :], D), axis=1)) == 0)
    problem = cp.Problem(cp.Maximize(q @ col), cons)

    rows = p64.objective
    upper = np.full(prob.n_objectives, np.inf)
    primal = np.full(prob.n_objectives, np.nan)
    status: list[str] = []
    mults: list[dict[str, torch.Tensor]] = []
    for j in range(prob.n_objectives):
        qj = rows[j : j + 1]
        alpha = torch.zeros(1, K, dtype=torch.float64)
        mu = torch.zeros(1, U, dtype=torch.float64)
        kappa = interval_multipliers(qj)
        limit = time_limit
        if deadline is not None:
            left = deadline - time.perf_counter()
            limit = left if limit is None else min(limit, left)
        st = "skipped (deadline)"
        if limit is None or limit > 0:
            q.value = qj[0].numpy()
            try:
                with warnings.catch_warnings():  # "solution may be inaccurate": the certificate copes
                    warnings.simplefilter("ignore", UserWarning)
                    problem.solve(solver=name.upper(), warm_start=True,
                                  **_solver_kwargs(name, tol, max_iters, limit, verbose, solver_options))
                st = str(problem.status)
                if problem.value is not None and np.isfinite(problem.value):
                    primal[j] = float(problem.value)
                got = _duals(cons, K, U, N)
                if got is not None:
                    alpha, mu, kappa = got
            except (cp.error.SolverError, ValueError, ArithmeticError, MemoryError) as exc:
                st = f"solver error: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
                log.info("SDP solve failed (%s); using the interval certificate", st)
        cert = certify(p64.select([j]), qj, alpha, mu, kappa)
        upper[j] = cert.upper[0]
        if name != "scs" or st not in ("optimal",):
            log.debug("row %d: status %s, primal %.6g, certified %.6g", j, st, primal[j], upper[j])
        status.append(st)
        mults.append({"alpha": alpha[0], "mu": mu[0], "kappa": kappa[0]})
    return ExactResult(upper, primal, status, time.perf_counter() - t0, name, mults)


def _duals(cons: list, K: int, U: int, N: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Multipliers in the convention of :func:`absint.solvers.sdp_problem.certify` from cvxpy's duals.

    cvxpy reports, for ``max f`` subject to ``g ≤ 0`` / ``h = 0``, duals ``y ≥ 0`` / ``ν`` with
    ``∇f = Σ y ∇g + Σ ν ∇h − Z``; our Lagrangian ``M = Q + Lᵀα e₀ + Σ μ B − diag κ`` then has
    ``α = y`` for ``L v̂ ≥ 0``, ``κ = y`` for ``P̂ᵢᵢ ≤ 1``, ``κ₀ = ν`` for ``P̂₀₀ = 1`` and
    ``μ = −ν`` for the complementarity equalities. (Any values give a valid certificate; wrong
    ones only give a loose one — the tests check the bound is tight.)
    """
    k = 1
    dv = cons[0].dual_value
    if dv is None:
        return None
    kappa = torch.zeros(1, N, dtype=torch.float64)
    kappa[0, 0] = float(np.asarray(dv).reshape(-1)[0])
    if N > 1:
        kd = cons[k].dual_value
        if kd is None:
            return None
        kappa[0, 1:] = torch.as_tensor(np.asarray(kd, dtype=np.float64).reshape(-1))
        k += 1
    alpha = torch.zeros(1, K, dtype=torch.float64)
    if K:
        a = cons[k].dual_value
        if a is None:
            return None
        alpha[0] = torch.as_tensor(np.asarray(a, dtype=np.float64).reshape(-1))
        k += 1
    mu = torch.zeros(1, U, dtype=torch.float64)
    if U:
        u = cons[k].dual_value
        if u is None:
            return None
        mu[0] = -torch.as_tensor(np.asarray(u, dtype=np.float64).reshape(-1))
    for t in (alpha, mu, kappa):
        t.nan_to_num_(0.0, 0.0, 0.0)
    return alpha, mu, kappa
