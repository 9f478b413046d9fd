"""Sound objective bounds from (possibly inexact) solver output.

LP bounds (Neumaier & Shcherbina, "Safe bounds in linear and mixed-integer
programming", Math. Prog. 2004).  For ``min c·x + c0  s.t. lo <= A x <= hi,
l <= x <= u`` and *any* multiplier vector ``y``::

    c·x = yᵀ(Ax) + (c - Aᵀy)·x
        >= Σ_i (y_i⁺ lo_i - y_i⁻ hi_i) + Σ_j min_{x_j ∈ [l_j, u_j]} r_j x_j,   r = c - Aᵀy

for every feasible ``x``.  ``y`` comes from the solver's duals; entries whose
sign would multiply an infinite row bound are clipped to zero (this keeps the
bound valid, it only weakens it).  Nothing here trusts the solver: a bad ``y``
gives a weak bound, never a wrong one.

Floating point: every quantity is computed in float64 with an explicit error
budget, so the result is a true lower bound despite rounding:

* ``r`` is enclosed in ``[r̃ - e, r̃ + e]`` with
  ``e_j = 2·γ(k_j + 2)·(|c_j| + (|A|ᵀ|y|)_j)``, ``γ(k) = k·u / (1 - k·u)``,
  ``u = 2⁻⁵³`` and ``k_j`` the number of nonzeros in column ``j`` (standard
  a-priori bound for a dot product in any summation order; the factor 2 also
  covers the rounding of ``|A|ᵀ|y|`` itself); the interval ends are rounded
  outward by one ulp.
* ``min_{x∈[l,u]} r x`` is evaluated with interval arithmetic (four corner
  products, ``0·∞ = 0``).  A residual interval that is not sign-definite
  needs both bounds of that variable finite; an infinite bound on the needed
  side would make the bound ``-∞``.  Before giving up, such variables get
  finite *implied* bounds from a few rounds of activity-based bound
  propagation over the rows (valid for every feasible ``x``, widened outward
  by ``1e-9`` relative).  If that fails, ``y`` scaled by ``1 ± 1e-9`` and
  ``1 ± 1e-6`` is tried: for basic columns ``r(t·y) ≈ (1-t)·c``, which often
  gives the residual a definite sign (e.g. ``min c·x, c > 0, x >= 0``).  If
  all fail the bound is ``-∞`` (nothing proved).
* The terms are summed with ``math.fsum`` (correctly rounded).  The sum is then
  widened outward by ``4u·Σ|terms| + (#terms + 1)·η`` (``η`` the smallest
  subnormal) and rounded down one ulp: each term is one rounded product
  (error ``≤ u·|term| + η``) and the correctly rounded sum adds ``≤ u·|sum|``,
  so this is rigorous at every magnitude, with no fixed tolerance.

MILP bounds cannot be certified this cheaply: :func:`mip_lower_bound` takes
the solver's best (dual) bound and widens it by the MIP gap tolerances and the
rounding of the bound itself — it is only as trustworthy as the MIP solver's
branch and bound (node LPs solved in floating point within its tolerances).
That is the one place where absint trusts a solver rather than checking it,
and only on models within the scales the solvers' absolute tolerances are made
for (:func:`mip_scale_problem`: no continuous variable narrower than
``MIP_MIN_WIDTH``, no bound beyond ``MIP_MAX_MAGNITUDE``; elsewhere the MILP
proves nothing). A MILP without integer variables left (every binary fixed by
its bounds) is bounded as an LP, rigorously.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import scipy.sparse as sp

from .model import LinearModel

__all__ = [
    "REL_SLACK",
    "ABS_SLACK",
    "safe_lp_lower_bound",
    "lp_proved_bound",
    "mip_lower_bound",
    "mip_proved_bound",
    "mip_scale_problem",
    "MIP_MIN_WIDTH",
    "MIP_MAX_MAGNITUDE",
    "implied_bounds",
]

logger = logging.getLogger(__name__)

_U = 2.0**-53  # unit roundoff of float64
_ETA = 5e-324  # smallest subnormal float64 (the underflow term of one product)
REL_SLACK = 4 * _U  # relative outward widening of the final sum (see module doc)
ABS_SLACK = _ETA  # absolute outward widening per term of the final sum
_IMPLIED_REL = 1e-9  # outward widening of implied bounds (they only need to be valid)


def _gamma(k: np.ndarray | float) -> np.ndarray | float:
    """γ(k) = k·u/(1-k·u): bound on the relative error of a k-term float sum."""
    ku = np.asarray(k, dtype=np.float64) * _U
    return ku / (1.0 - ku)


def _mul0(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise product with the convention 0·(±∞) = 0."""
    with np.errstate(invalid="ignore"):
        p = a * b
    return np.where((a == 0.0) | (b == 0.0), 0.0, p)


def _box_min(rlo: np.ndarray, rhi: np.ndarray, l: np.ndarray, u: np.ndarray) -> np.ndarray:
    """min of r·x over r ∈ [rlo, rhi], x ∈ [l, u] (interval product, 0·∞ = 0)."""
    return np.minimum(
        np.minimum(_mul0(rlo, l), _mul0(rlo, u)), np.minimum(_mul0(rhi, l), _mul0(rhi, u))
    )


def implied_bounds(
    A: sp.csr_matrix,
    row_lo: np.ndarray,
    row_hi: np.ndarray,
    lb: np.ndarray,
    ub: np.ndarray,
    rounds: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Tighten variable bounds by activity-based propagation (valid, outward-widened).

    Returns ``(lb', ub')`` with ``lb' >= lb`` and ``ub' <= ub`` such that every
    feasible ``x`` satisfies ``lb' <= x <= ub'``.
    """
    lb, ub = lb.astype(np.float64, copy=True), ub.astype(np.float64, copy=True)
    m = A.shape[0]
    if m == 0 or A.nnz == 0:
        return lb, ub
    rows = np.repeat(np.arange(m), np.diff(A.indptr))
    a, j = A.data, A.indices
    pos = a > 0
    kmax = int(np.diff(A.indptr).max())
    rel = max(_IMPLIED_REL, 8.0 * float(_gamma(kmax + 4)))
    with np.errstate(invalid="ignore", over="ignore"):
        for _ in range(rounds):
            cmin = np.where(pos, _mul0(a, lb[j]), _mul0(a, ub[j]))  # may be -inf
            cmax = np.where(pos, _mul0(a, ub[j]), _mul0(a, lb[j]))  # may be +inf
            fmin, fmax = np.isfinite(cmin), np.isfinite(cmax)
            smin = np.bincount(rows, np.where(fmin, cmin, 0.0), m)
            smax = np.bincount(rows, np.where(fmax, cmax, 0.0), m)
            nmin = np.bincount(rows, ~fmin, m)
            nmax = np.bincount(rows, ~fmax, m)
            absum = np.bincount(rows, np.where(fmin, np.abs(cmin), 0.0), m) + np.bincount(
                rows, np.where(fmax, np.abs(cmax), 0.0), m
            )
            # minimal / maximal activity of the *other* entries of the row
            oth_min = np.where(
                fmin,
                np.where(nmin[rows] == 0, smin[rows] - np.where(fmin, cmin, 0.0), -np.inf),
                np.where(nmin[rows] == 1, smin[rows], -np.inf),
            )
            oth_max = np.where(
                fmax,
                np.where(nmax[rows] == 0, smax[rows] - np.where(fmax, cmax, 0.0), np.inf),
                np.where(nmax[rows] == 1, smax[rows], np.inf),
            )
            cap_hi = row_hi[rows] - oth_min  # a_ij x_j <= cap_hi  (may be +inf)
            cap_lo = row_lo[rows] - oth_max  # a_ij x_j >= cap_lo  (may be -inf)
            new_ub = np.where(pos, cap_hi / a, cap_lo / a)
            new_lb = np.where(pos, cap_lo / a, cap_hi / a)
            scale = (absum[rows] + np.abs(np.where(pos, row_hi[rows], row_lo[rows]))) / np.abs(a)
            scale_l = (absum[rows] + np.abs(np.where(pos, row_lo[rows], row_hi[rows]))) / np.abs(a)
            new_ub = new_ub + rel * (np.abs(new_ub) + scale) + np.finfo(float).tiny
            new_lb = new_lb - rel * (np.abs(new_lb) + scale_l) - np.finfo(float).tiny
            new_ub = np.where(np.isnan(new_ub), np.inf, new_ub)
            new_lb = np.where(np.isnan(new_lb), -np.inf, new_lb)
            ub2, lb2 = ub.copy(), lb.copy()
            np.minimum.at(ub2, j, new_ub)
            np.maximum.at(lb2, j, new_lb)
            changed = np.any(ub2 < ub) or np.any(lb2 > lb)
            lb, ub = lb2, ub2
            if not changed:
                break
    return lb, ub


#: multiplier scalings tried when a column with an infinite bound spoils the bound:
#: ``r(t·y) = c - t·Aᵀy ≈ (1 - t)·c`` for basic columns, so a slightly shrunk or
#: grown ``y`` gives those columns a reduced cost of a definite sign.
_Y_SCALES = (1.0 - 1e-9, 1.0 + 1e-9, 1.0 - 1e-6, 1.0 + 1e-6)


def safe_lp_lower_bound(
    A: sp.csr_matrix,
    row_lo: np.ndarray,
    row_hi: np.ndarray,
    lb: np.ndarray,
    ub: np.ndarray,
    c: np.ndarray,
    y: np.ndarray | None,
    offset: float = 0.0,
    *,
    use_implied_bounds: bool = True,
    At: sp.csr_matrix | None = None,
) -> float:
    """Rigorous lower bound on ``min c·x + offset`` over the LP (``-inf`` if none).

    ``y`` are row multipliers in the convention ``c ≈ Aᵀy + reduced costs``
    (``y_i > 0`` multiplies ``lo_i``, ``y_i < 0`` multiplies ``hi_i``); ``None``
    uses ``y = 0`` (plain box bound).  The result is valid for any ``y``.
    ``At`` optionally supplies ``A.T`` as CSR (saves a transpose per call).

    If a column with an infinite bound has a residual of uncertain sign, the
    variable gets implied bounds (see :func:`implied_bounds`); if that fails,
    ``y`` scaled by ``1 ± 1e-9`` / ``1 ± 1e-6`` is tried (each is a valid
    multiplier; the first finite bound is returned).
    """
    m, n = A.shape
    yv = np.zeros(m) if y is None else np.asarray(y, dtype=np.float64).ravel()
    if yv.size != m:
        logger.debug("dual vector has %d entries for %d rows; using y = 0", yv.size, m)
        yv = np.zeros(m)
    yv = np.where(np.isfinite(yv), yv, 0.0)
    c = np.asarray(c, dtype=np.float64)
    if not math.isfinite(offset):
        return -math.inf
    if m:
        At = A.T.tocsr() if At is None else At
    ctx = _BoundContext(At, row_lo, row_hi, lb, ub, c, float(offset), A if use_implied_bounds else None)
    bound = ctx.bound(yv)
    if not math.isfinite(bound) and m and np.any(yv):
        for t in _Y_SCALES:
            bound = ctx.bound(yv * t)
            if math.isfinite(bound):
                break
    return bound


class _BoundContext:
    """Evaluates the safe bound for several multiplier vectors over one LP."""

    def __init__(
        self,
        At: sp.csr_matrix | None,
        row_lo: np.ndarray,
        row_hi: np.ndarray,
        lb: np.ndarray,
        ub: np.ndarray,
        c: np.ndarray,
        offset: float,
        A_for_implied: sp.csr_matrix | None,
    ) -> None:
        self.At, self.row_lo, self.row_hi, self.lb, self.ub = At, row_lo, row_hi, lb, ub
        self.c, self.offset, self._A = c, offset, A_for_implied
        self.lo_fin, self.hi_fin = np.isfinite(row_lo), np.isfinite(row_hi)
        self.k = np.diff(At.indptr) if At is not None else np.zeros(c.size)
        self._implied: tuple[np.ndarray, np.ndarray] | None = None

    def implied(self) -> tuple[np.ndarray, np.ndarray]:
        if self._implied is None:
            self._implied = implied_bounds(self._A, self.row_lo, self.row_hi, self.lb, self.ub)
        return self._implied

    def bound(self, y: np.ndarray) -> float:
        yp = np.where(self.lo_fin, np.maximum(y, 0.0), 0.0)
        yn = np.where(self.hi_fin, np.maximum(-y, 0.0), 0.0)
        yv = yp - yn  # exact: at most one of yp, yn is nonzero
        row_terms = yp * np.where(self.lo_fin, self.row_lo, 0.0) - yn * np.where(
            self.hi_fin, self.row_hi, 0.0
        )
        c = self.c
        if self.At is not None:
            r = c - self.At @ yv
            S = abs(self.At) @ np.abs(yv)
        else:
            r, S = c.copy(), np.zeros(c.size)
        e = 2.0 * _gamma(self.k + 2) * (np.abs(c) + S)
        with np.errstate(over="ignore", invalid="ignore"):
            rlo = np.where(e == 0.0, r, np.nextafter(r - e, -np.inf))
            rhi = np.where(e == 0.0, r, np.nextafter(r + e, np.inf))
        box = _box_min(rlo, rhi, self.lb, self.ub)
        bad = ~np.isfinite(box)
        if bad.any() and self._A is not None and self._A.shape[0]:
            ilb, iub = self.implied()
            box[bad] = _box_min(rlo[bad], rhi[bad], ilb[bad], iub[bad])
            bad = ~np.isfinite(box)
        if bad.any() or not np.all(np.isfinite(row_terms)):
            logger.debug("safe LP bound: %d columns with unbounded residual term", int(bad.sum()))
            return -math.inf
        terms = np.concatenate([row_terms, box, [self.offset]])
        total = math.fsum(terms.tolist())
        absum = math.fsum(np.abs(terms).tolist())
        bound = math.nextafter(total - (REL_SLACK * absum + ABS_SLACK * (terms.size + 1)), -math.inf)
        return bound if math.isfinite(bound) else -math.inf


def lp_proved_bound(model: LinearModel, row_duals_min: np.ndarray | None) -> float | None:
    """Proved bound in the *model's* sense from duals of the internal minimisation.

    The backends solve ``min sign·c·x`` (``sign = -1`` for maximisation);
    ``row_duals_min`` are that problem's duals.  Returns a lower bound for
    minimisation, an upper bound for maximisation, or None if nothing is proved.
    """
    sign = model.sense.sign
    lb, ub = model.known_bounds  # the variable bounds, met with bounds known but not given to the solver
    low = safe_lp_lower_bound(
        model.A, model.row_lo, model.row_hi, lb, ub,
        sign * model.objective, row_duals_min, sign * model.offset, At=model.AT,
    )
    if not math.isfinite(low):
        return None
    return sign * low


#: A MILP's dual bound is trusted only on a model whose numbers its solver resolves: MILP solvers
#: work to absolute tolerances (feasibility 1e-6 to 1e-7, integrality 1e-5 to 1e-6) and their
#: presolve rounds what lies below them, so a neuron whose whole range is a few 1e-9 can be read as
#: 0 and, amplified by the layers after it, a false property "proved" (found by differential
#: fuzzing: weights of 2^-23, or a box 2^-41 wide, verified a property violated at a corner).
#: Every continuous variable of positive finite width must be at least ``MIP_MIN_WIDTH`` wide, and
#: every finite variable bound at most ``MIP_MAX_MAGNITUDE`` in absolute value (big-M rows with
#: larger constants lose the tolerances in rounding); otherwise the MILP proves nothing and the
#: sound LP/domain bounds stand. A guard, not a proof: it keeps the solver in the range its
#: tolerances are made for.
MIP_MIN_WIDTH = 1e-5
MIP_MAX_MAGNITUDE = 1e7


def mip_scale_problem(model: LinearModel) -> str | None:
    """Why ``model`` is outside the numbers a MILP solver's tolerances are made for, or None."""
    lb, ub = model.known_bounds
    width = ub - lb
    cont = ~np.asarray(model.integrality, dtype=bool)
    small = cont & np.isfinite(width) & (width > 0) & (width < MIP_MIN_WIDTH)
    if small.any():
        return (f"{int(small.sum())} continuous variable(s) narrower than {MIP_MIN_WIDTH:g} "
                f"(narrowest {float(width[small].min()):.3g})")
    mags = np.abs(np.concatenate([lb[np.isfinite(lb)], ub[np.isfinite(ub)]]))
    if mags.size and float(mags.max()) > MIP_MAX_MAGNITUDE:
        return f"a variable bound of magnitude {float(mags.max()):.3g} > {MIP_MAX_MAGNITUDE:g}"
    return None


def mip_lower_bound(dual_bound: float | None, rel_gap: float, abs_gap: float) -> float | None:
    """Widen a MIP solver's dual bound (minimisation) by its gap tolerances."""
    if dual_bound is None or not math.isfinite(dual_bound):
        return None
    widen = abs(abs_gap) + abs(rel_gap) * abs(dual_bound)
    widen += REL_SLACK * abs(dual_bound) + ABS_SLACK
    return math.nextafter(float(dual_bound) - widen, -math.inf)


def mip_proved_bound(
    model: LinearModel, dual_bound_min: float | None, rel_gap: float, abs_gap: float
) -> float | None:
    """Like :func:`mip_lower_bound` but returned in the model's sense; None (nothing proved) for a
    model outside the scales MILP solvers resolve (:func:`mip_scale_problem`)."""
    why = mip_scale_problem(model)
    if why is not None:
        logger.info("MILP bound not used: %s", why)
        return None
    low = mip_lower_bound(dual_bound_min, rel_gap, abs_gap)
    return None if low is None else model.sense.sign * low
