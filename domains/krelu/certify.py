"""Rigorous right-hand sides for k-ReLU constraints via dual certificates.

For a candidate constraint ``a·x + c·y ≤ e`` on ``{(x, relu(x)) : x ∈ P}`` the tightest
valid right-hand side is

    e* = max_s  max_{x ∈ P_s} (a + c∘s)·x ,      P_s = P ∩ O_s  (orthant pieces),

because ReLU is the linear map ``x ↦ s∘x`` on ``O_s``.  Each inner LP is bounded from above
by weak duality: with ``P_s ⊆ {x : D_J x ≤ rhs_s[J]} ∩ [lo_s, hi_s]`` for any row subset
``J`` and any ``λ ≥ 0``, writing ``w = a + c∘s`` and ``r = w − D_Jᵀ λ``,

    w·x = λ·(D_J x) + r·x ≤ λ·rhs_s[J] + max_{x ∈ [lo_s, hi_s]} r·x .          (★)

(This is the "safe bound" of Neumaier & Shcherbina, *Safe bounds in linear and mixed-integer
programming*, Math. Prog. 2004, specialised to a box.)  The multipliers ``λ`` are proposed in
floating point from the bases of :mod:`absint.domains.krelu.pieces` (at an optimal vertex some
basis is dual feasible), clipped to ``λ ≥ 0``; any proposal is valid.  The right-hand side
of (★) is then evaluated with *upward-directed rounding* emulated in round-to-nearest
arithmetic: every sum uses the error-free transformation TwoSum (Knuth) to detect the
rounding direction and steps one ulp up or down with ``nextafter`` when needed; every
product that is not trivially exact is stepped one ulp outward; ``r`` is carried as an
interval.  Float error can therefore only loosen, never invalidate, a constraint.

Two refinements keep the bounds tight on degenerate inputs: when no kept basis certifies the
float optimum at a degenerate vertex, the multipliers are recomputed by non-negative least
squares over the rows tight at that vertex (Lawson–Hanson); and a piece for which the float
enumeration found no vertex is proven empty, when it is, by a Farkas certificate (the duals
of a phase-1 LP, checked with the same directed rounding) and then skipped.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linprog, nnls

from absint.domains.krelu.pieces import OrthantPieces

__all__ = [
    "certified_upper_bounds",
    "certify_empty_pieces",
    "rigorous_dual_value",
    "add_up",
    "add_down",
    "mul_up",
]

_INF = np.inf


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    return s, err


_BIG = 2.0**1000  # beyond this magnitude TwoSum may overflow: step one ulp unconditionally
_FMAX = float(np.finfo(np.float64).max)


def add_up(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A float ``≥ a + b`` (exact sum of the float inputs); NaN results become ``+inf``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        s, err = _two_sum(a, b)
        big = (np.abs(a) > _BIG) | (np.abs(b) > _BIG)
        out = np.where((err > 0) | (big & (s != 0)), np.nextafter(s, _INF), s)
        out = np.where(np.isnan(s), _INF, out)
        # a finite sum that overflowed downwards is still ≥ −max
        out = np.where((s == -_INF) & np.isfinite(a) & np.isfinite(b), -_FMAX, out)
    return out


def add_down(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A float ``≤ a + b`` (exact sum of the float inputs); NaN results become ``−inf``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        s, err = _two_sum(a, b)
        big = (np.abs(a) > _BIG) | (np.abs(b) > _BIG)
        out = np.where((err < 0) | (big & (s != 0)), np.nextafter(s, -_INF), s)
        out = np.where(np.isnan(s), -_INF, out)
        out = np.where((s == _INF) & np.isfinite(a) & np.isfinite(b), _FMAX, out)
    return out


def mul_up(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A float ``≥ a·b``: exact when a factor is 0, else the rounded product plus one ulp."""
    with np.errstate(invalid="ignore", over="ignore"):
        p = a * b
        out = np.where((a == 0) | (b == 0), 0.0, np.nextafter(p, _INF))
        out = np.where(np.isnan(out), _INF, out)
    return out


def _mul_interval(
    a: np.ndarray, b: np.ndarray, exact: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Interval enclosing ``a·b``; exact when ``exact`` (b ∈ {−1, 0, 1}) or a factor is 0."""
    p = a * b
    if exact:
        return p, p
    z = (a == 0) | (b == 0)
    return np.where(z, 0.0, np.nextafter(p, -_INF)), np.where(z, 0.0, np.nextafter(p, _INF))


def _box_max_up(rlo: np.ndarray, rhi: np.ndarray, xlo: np.ndarray, xhi: np.ndarray) -> np.ndarray:
    """A float ``≥ max{ r·x : r ∈ [rlo, rhi], x ∈ [xlo, xhi] }`` (elementwise)."""
    return np.maximum(
        np.maximum(mul_up(rlo, xlo), mul_up(rlo, xhi)), np.maximum(mul_up(rhi, xlo), mul_up(rhi, xhi))
    )


def _select_multipliers(pieces: OrthantPieces, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float choice of ``(λ, J)`` per piece and candidate.

    ``W``: (O, n, k) objectives ``a + c∘s``.  For each piece and candidate the vertex
    maximising ``w·v`` is found; every basis kept at that vertex proposes
    ``λ = max(B^{-T} w, 0)``, and the proposal (or ``λ = 0``) with the smallest float value
    of (★) is returned.  Returns ``λ`` (O, n, k) ≥ 0 and rows (O, n, k).
    """
    n_o, n, k = W.shape
    pb = pieces.padded()
    vals = np.matmul(W, pb.vertices.transpose(0, 2, 1))  # (O, n, P)
    vals = np.where(pb.valid[:, None, :], vals, -_INF)
    v_best = np.argmax(vals, axis=2)  # (O, n)
    oi = np.arange(n_o)[:, None, None]
    cand = pb.table[oi, v_best[:, :, None], np.arange(pb.table.shape[2])[None, None, :]]  # (O, n, B)
    inv = pb.inv_t[oi, cand]  # (O, n, B, k, k)
    rows = pb.rows[oi, cand]  # (O, n, B, k)
    lam = np.matmul(inv, W[:, :, None, :, None])[..., 0]  # (O, n, B, k)
    np.maximum(lam, 0.0, out=lam)
    DJ = pieces.D[rows]  # (O, n, B, k, k), DJ[..., j, :] = row j of the basis
    r = W[:, :, None, :] - np.matmul(lam[..., None, :], DJ)[..., 0, :]
    bJ = pieces.rhs[oi[..., None], rows]  # (O, n, B, k)
    lo, hi = pieces.lo[:, None, None, :], pieces.hi[:, None, None, :]
    val = (lam * bJ).sum(axis=3) + np.maximum(r * lo, r * hi).sum(axis=3)  # (O, n, B)
    b_best = np.argmin(val, axis=2)  # (O, n)
    lam_best = np.take_along_axis(lam, b_best[:, :, None, None], axis=2)[:, :, 0, :]
    rows_best = np.take_along_axis(rows, b_best[:, :, None, None], axis=2)[:, :, 0, :]
    # λ = 0 (box bound alone) when no basis does better
    box = np.maximum(W * pieces.lo[:, None, :], W * pieces.hi[:, None, :]).sum(axis=2)
    v_val = np.take_along_axis(val, b_best[:, :, None], axis=2)[:, :, 0]
    worse = v_val >= box
    lam_best[worse] = 0.0
    best = np.minimum(v_val, box)
    # Degenerate vertices: when no kept basis certifies the float optimum w·v*, solve the
    # cone-membership problem  min ‖D_Tᵀ λ − w‖, λ ≥ 0  over the rows T tight at v* (NNLS,
    # Lawson–Hanson; its solution has at most k non-zeros).
    primal = np.take_along_axis(vals, v_best[:, :, None], axis=2)[:, :, 0]
    slack = 1e-7 * (1.0 + np.abs(W).sum(axis=2) * np.max(np.abs(pieces.hi - pieces.lo)))
    redo = np.argwhere((best - primal > slack) & pieces.nonempty[:, None] & np.isfinite(primal))
    if redo.size:
        _nnls_fallback(pieces, W, v_best, redo, best, lam_best, rows_best)
    return lam_best, rows_best


def _nnls_fallback(
    pieces: OrthantPieces,
    W: np.ndarray,
    v_best: np.ndarray,
    redo: np.ndarray,
    best: np.ndarray,
    lam_best: np.ndarray,
    rows_best: np.ndarray,
) -> None:
    k = W.shape[2]
    lo, hi = pieces.lo, pieces.hi
    for o, n in redo:
        T = np.flatnonzero(pieces.tight[o][v_best[o, n]])
        if T.size == 0:
            continue
        w = W[o, n]
        lam, _ = nnls(pieces.D[T].T, w)
        nz = np.flatnonzero(lam > 0)
        if nz.size > k:  # keep the k largest multipliers (still a valid proposal)
            nz = nz[np.argsort(-lam[nz])[:k]]
        r = w - lam[nz] @ pieces.D[T[nz]]
        v = float(lam[nz] @ pieces.rhs[o][T[nz]] + np.maximum(r * lo[o], r * hi[o]).sum())
        if v < best[o, n]:
            lam_best[o, n] = 0.0
            rows_best[o, n] = 0
            lam_best[o, n, : nz.size] = lam[nz]
            rows_best[o, n, : nz.size] = T[nz]


def _rigorous_bound(
    pieces: OrthantPieces, A: np.ndarray, C: np.ndarray, lam: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """Evaluate (★) with directed rounding; ``lam``, ``rows``: (O, n, k).  Returns (O, n)."""
    n_o = pieces.signs.shape[0]
    k = A.shape[1]
    s = pieces.signs[:, None, :]
    lo, hi = pieces.lo[:, None, :], pieces.hi[:, None, :]
    # w = a + c∘s as an interval (exact unless the addition rounds)
    cs = C[None] * s
    Ab = np.broadcast_to(A[None], cs.shape)
    r_lo = add_down(Ab, cs)
    r_hi = add_up(Ab, cs)
    DJ = pieces.D[rows]  # (O, n, k, k): DJ[o, n, j, :] = row j
    for j in range(k):
        p_lo, p_hi = _mul_interval(lam[:, :, j : j + 1], DJ[:, :, j, :], pieces.integral)
        r_lo = add_down(r_lo, -p_hi)
        r_hi = add_up(r_hi, -p_lo)
    bJ = np.take_along_axis(pieces.rhs[:, None, :], rows.reshape(n_o, 1, -1), axis=2).reshape(rows.shape)
    terms = [mul_up(lam[:, :, j], bJ[:, :, j]) for j in range(k)]
    box = _box_max_up(r_lo, r_hi, lo, hi)
    terms += [box[:, :, i] for i in range(k)]
    total = terms[0]
    for t in terms[1:]:
        total = add_up(total, t)
    return total


def certified_upper_bounds(pieces: OrthantPieces, A: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Rigorous ``e[n] ≥ max_{x ∈ P} A[n]·x + C[n]·relu(x)`` for every candidate row ``n``.

    ``A``, ``C``: (n, k) float coefficient arrays.  Returns ``−inf`` for every row when all
    pieces are provably empty (then ``P`` is empty).  Pieces that are empty but not provably
    so still receive a (valid) finite bound.
    """
    A = np.asarray(A, dtype=np.float64)
    C = np.asarray(C, dtype=np.float64)
    n = A.shape[0]
    certify_empty_pieces(pieces)
    if n == 0 or not pieces.nonempty.any():
        return np.full(n, -_INF)
    W = A[None] + C[None] * pieces.signs[:, None, :]  # (O, n, k)
    lam, rows = _select_multipliers(pieces, W)
    bounds = _rigorous_bound(pieces, A, C, lam, rows)  # (O, n)
    bounds[~pieces.nonempty] = -_INF
    return bounds.max(axis=0)


def rigorous_dual_value(
    D: np.ndarray, rhs: np.ndarray, lam: np.ndarray, w: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> float:
    """A float ``≥ λ·rhs + max_{x ∈ [lo, hi]} (w − Dᵀλ)·x`` for one full-length ``λ ≥ 0``.

    By (★) this bounds ``max w·x`` over ``{D x ≤ rhs} ∩ [lo, hi]``; with ``w = 0`` a negative
    value proves that set empty (a Farkas certificate).
    """
    lam = np.maximum(np.asarray(lam, dtype=np.float64), 0.0)
    r_lo = np.asarray(w, dtype=np.float64).copy()
    r_hi = r_lo.copy()
    total = np.zeros(1)
    for j in np.flatnonzero(lam):
        p_lo, p_hi = _mul_interval(np.full(D.shape[1], lam[j]), D[j], False)
        r_lo = add_down(r_lo, -p_hi)
        r_hi = add_up(r_hi, -p_lo)
        total = add_up(total, mul_up(lam[j : j + 1], rhs[j : j + 1]))
    box = _box_max_up(r_lo, r_hi, lo, hi)
    for t in box:
        total = add_up(total, np.array([t]))
    return float(total[0])


def certify_empty_pieces(pieces: OrthantPieces) -> None:
    """Mark pieces that have no float vertex and are *provably* empty as empty (in place).

    For such a piece the phase-1 LP ``min t s.t. D x − t ≤ rhs, x ∈ [lo, hi]`` is solved
    with HiGHS; its dual multipliers ``λ ≥ 0`` are a Farkas certificate when
    :func:`rigorous_dual_value` with ``w = 0`` is negative.  Pieces that cannot be certified
    stay "non-empty" (their bounds are then merely loose, never unsound).
    """
    if pieces._empty_checked:
        return
    pieces._empty_checked = True
    k = pieces.k
    m = pieces.D.shape[0]
    for o in range(pieces.signs.shape[0]):
        if not pieces.nonempty[o] or pieces.vertices[o].shape[0] > 0:
            continue
        # cheap certificates first: a single row with min_{box} d·x > rhs_d (λ = e_d)
        box = _box_max_up(-pieces.D, -pieces.D, pieces.lo[o][None, :], pieces.hi[o][None, :])
        total = pieces.rhs[o].copy()
        for i in range(k):
            total = add_up(total, box[:, i])
        if (total < 0).any():
            pieces.nonempty[o] = False
            continue
        A_ub = np.hstack([pieces.D, -np.ones((m, 1))])
        bounds = [(float(a), float(b)) for a, b in zip(pieces.lo[o], pieces.hi[o])] + [(None, None)]
        c = np.zeros(k + 1)
        c[-1] = 1.0
        try:
            res = linprog(c, A_ub=A_ub, b_ub=pieces.rhs[o], bounds=bounds, method="highs")
        except ValueError:  # pragma: no cover - defensive
            continue
        if res.status != 0 or res.fun <= 0:
            continue
        lam = np.maximum(-np.asarray(res.ineqlin.marginals, dtype=np.float64), 0.0)
        if rigorous_dual_value(pieces.D, pieces.rhs[o], lam, np.zeros(k), pieces.lo[o], pieces.hi[o]) < 0:
            pieces.nonempty[o] = False
