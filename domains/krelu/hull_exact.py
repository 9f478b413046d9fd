"""Exact k-ReLU convex hull in rational arithmetic (kPoly, Singh et al., NeurIPS 2019).

For a group of ``k`` neurons with input polytope ``P = {x : D x ≤ b}`` this computes

    conv{ (x, relu(x)) : x ∈ P } ⊂ R^{2k}

as kPoly does: split ``P`` into the ``2^k`` orthant pieces ``P_s = P ∩ O_s``
(``O_s = {x : x_i ≥ 0 if s_i = 1, x_i ≤ 0 if s_i = 0}``), on which ReLU is linear
(``y_i = x_i`` or ``y_i = 0``); take the V-representation of every piece, map its vertices
(and rays) through that linear map, and convert the union back to an H-representation.
Both conversions use the double-description method of cdd (Fukuda) in exact GMP rationals
(``cdd.gmp`` of pycddlib 3.x), with every float input converted exactly to a
:class:`fractions.Fraction`.  Float cdd is *not* used: beyond ``k = 3`` it fails or silently
returns wrong hulls.

Degenerate inputs need no special casing: empty pieces have no generators, a flat ``P``
yields implicit equalities (returned as two opposite inequalities), and a neuron that is
stable on ``P`` simply contributes pieces lying on ``x_i = 0``.

Conventions: see :mod:`absint.domains.krelu.hrep` (rows ``h0 + hx·x + hy·y ≥ 0``).
"""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from absint.domains.krelu.hrep import infeasible_hrep
from absint.domains.krelu.octahedron import as_polytope

__all__ = ["RationalHull", "krelu_hull_exact_rational", "krelu_hull_exact", "rational_rows_to_float"]

logger = logging.getLogger(__name__)

_U = 2.0**-53  # unit roundoff of binary64



def _cdd():
    """pycddlib, imported on first use: only the exact k-ReLU hulls need it, so the LP/MILP
    analyses load without it (``pip install 'absint[cdd]'`` for kpoly)."""
    try:
        import cdd
        import cdd.gmp as cdd_gmp
    except ImportError as exc:
        raise ImportError(f"k-ReLU hulls need pycddlib (pip install 'absint[cdd]'): {exc}", name="cdd") from exc
    return cdd, cdd_gmp

@dataclass(frozen=True)
class RationalHull:
    """Exact hull of ``{(x, relu(x)) : x ∈ P}``.

    ``ineqs``: rows ``(h0, hx_1..hx_k, hy_1..hy_k)`` of Fractions meaning ``h0 + h·z ≥ 0``
    (equalities already split into two rows); ``vertices``: the lifted points ``z = (x, y)``
    whose convex hull (plus ``rays``) is the set; ``empty`` is True when ``P`` is empty, in
    which case ``ineqs`` is the single row ``(−1, 0, …, 0)``.
    """

    k: int
    ineqs: tuple[tuple[Fraction, ...], ...]
    vertices: tuple[tuple[Fraction, ...], ...]
    rays: tuple[tuple[Fraction, ...], ...]
    empty: bool


def _to_fraction(v: float) -> Fraction:
    if not math.isfinite(v):
        raise ValueError(f"non-finite value {v} cannot be converted exactly")
    return Fraction(float(v))


def _piece_generators(
    rows: list[list[Fraction]], k: int, s: tuple[int, ...]
) -> tuple[list[tuple[Fraction, ...]], list[tuple[Fraction, ...]]]:
    """Lifted vertices and rays of ``P ∩ O_s`` (rows: cdd H-rows of ``P``)."""
    cdd, cdd_gmp = _cdd()
    all_rows = list(rows)
    for i in range(k):
        r = [Fraction(0)] * (k + 1)
        r[1 + i] = Fraction(1 if s[i] else -1)
        all_rows.append(r)
    mat = cdd_gmp.matrix_from_array(all_rows, rep_type=cdd.RepType.INEQUALITY)
    gen = cdd_gmp.copy_generators(cdd_gmp.polyhedron_from_matrix(mat))
    verts: list[tuple[Fraction, ...]] = []
    rays: list[tuple[Fraction, ...]] = []
    lines = set(gen.lin_set)
    for idx, g in enumerate(gen.array):
        x = [Fraction(t) for t in g[1:]]
        z = tuple(x + [x[i] if s[i] else Fraction(0) for i in range(k)])
        if g[0] != 0:
            verts.append(tuple(t / Fraction(g[0]) for t in z))
        else:
            rays.append(z)
            if idx in lines:  # a line is two opposite rays (cannot occur inside an orthant)
                rays.append(tuple(-t for t in z))
    return verts, rays


def krelu_hull_exact_rational(D: np.ndarray, b: np.ndarray) -> RationalHull:
    """Exact rational hull of ``{(x, relu(x)) : D x ≤ b}``; see the module docstring.

    ``D``: ``(m, k)``, ``b``: ``(m,)`` floats (rows with ``b = +inf`` are dropped; ``−inf``
    means an empty ``P``).  Cost grows quickly with ``k``: ~1 ms for ``k = 2``,
    ~0.1–1.5 s for ``k = 3`` with generic octahedral bounds (300–500 facets); ``k = 4``
    is impractical (8-dimensional double description on hundreds of vertices).
    """
    cdd, cdd_gmp = _cdd()
    D, b, k = as_polytope(D, b)
    if (b == -np.inf).any():
        return _empty(k)
    keep = np.isfinite(b)
    rows = [[_to_fraction(bi)] + [_to_fraction(-dij) for dij in d] for d, bi in zip(D[keep], b[keep])]

    vset: dict[tuple[Fraction, ...], None] = {}
    rset: dict[tuple[Fraction, ...], None] = {}
    for s in itertools.product((0, 1), repeat=k):
        verts, rays = _piece_generators(rows, k, s)
        for v in verts:
            vset[v] = None
        for r in rays:
            rset[r] = None
    if not vset:
        return _empty(k)
    verts = list(vset)
    rays = list(rset)
    gen_rows = [[Fraction(1)] + list(v) for v in verts] + [[Fraction(0)] + list(r) for r in rays]
    mat = cdd_gmp.matrix_from_array(gen_rows, rep_type=cdd.RepType.GENERATOR)
    hmat = cdd_gmp.copy_inequalities(cdd_gmp.polyhedron_from_matrix(mat))
    lin = set(hmat.lin_set)
    ineqs: list[tuple[Fraction, ...]] = []
    for idx, row in enumerate(hmat.array):
        r = tuple(row)
        if all(t == 0 for t in r[1:]):
            if r[0] >= 0:
                continue  # the trivial row 1 ≥ 0
        ineqs.append(r)
        if idx in lin:
            ineqs.append(tuple(-t for t in r))
    return RationalHull(k=k, ineqs=tuple(ineqs), vertices=tuple(verts), rays=tuple(rays), empty=False)


def _empty(k: int) -> RationalHull:
    row = tuple([Fraction(-1)] + [Fraction(0)] * (2 * k))
    return RationalHull(k=k, ineqs=(row,), vertices=(), rays=(), empty=True)


def _round_up(q: Fraction) -> float:
    """The smallest float ``f`` with ``f ≥ q`` (``float(q)`` is correctly rounded)."""
    f = float(q)
    if Fraction(f) < q:
        f = float(np.nextafter(f, np.inf))
    return f


def rational_rows_to_float(hull: RationalHull) -> np.ndarray:
    """Round the exact rows of ``hull`` to floats *soundly* and tightly.

    Each row is scaled so that its largest coefficient has magnitude 1 (exact), the
    coefficients are rounded to nearest (``h̃``), and the constant is recomputed as
    ``round_up(max_v −h̃·v)`` over the exact vertices ``v``, so every float row is satisfied
    by the whole exact hull.  The maximum is evaluated exactly (Fractions) but only over the
    vertices that a float pre-pass with a rigorous error bound (Higham, *Accuracy and
    Stability of Numerical Algorithms*, §3.1) cannot exclude.  Rows whose rounded
    coefficients are no longer valid along a ray are dropped.
    """
    k = hull.k
    if hull.empty:
        return infeasible_hrep(k)
    n = 2 * k
    V = np.array([[float(t) for t in v] for v in hull.vertices], dtype=np.float64)
    gamma = (n + 4) * _U / (1 - (n + 4) * _U)
    rows: list[tuple[Fraction, ...]] = []
    coeffs: list[np.ndarray] = []
    for row in hull.ineqs:
        h = row[1:]
        scale = max(abs(t) for t in h)
        if scale == 0:
            continue
        hf = np.array([float(t / scale) for t in h])
        if hull.rays and any(sum(Fraction(c) * r for c, r in zip(hf, ray)) < 0 for ray in hull.rays):
            logger.debug("dropping a row whose rounded coefficients are invalid along a ray")
            continue
        rows.append(row)
        coeffs.append(hf)
    if not coeffs:
        return np.zeros((0, 1 + n))
    Hf = np.array(coeffs)
    vals = -(Hf @ V.T)  # (rows, vertices) float approximations of −h̃·v
    # |fl(−h̃·ṽ) − (−h̃·v)| ≤ γ_{n+4} Σ|h̃||ṽ| + tiny (ṽ = fl(v) has relative error ≤ u)
    err = gamma * (np.abs(Hf) @ np.abs(V).T) * (1 + 8 * _U) + n * 2.0**-1070
    best = (vals - err).max(axis=1, keepdims=True)
    maybe_max = vals + err >= best
    out = np.empty((len(coeffs), 1 + n))
    fracs = [[Fraction(t) for t in v] for v in hull.vertices]
    for r, hf in enumerate(coeffs):
        hq = [Fraction(float(c)) for c in hf]
        q = max(-sum(c * t for c, t in zip(hq, fracs[j])) for j in np.flatnonzero(maybe_max[r]))
        out[r, 0] = _round_up(q)
        out[r, 1:] = hf
    return out


def krelu_hull_exact(D: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact k-ReLU hull (cdd.gmp), returned as sound float rows ``h0 + h·(x, y) ≥ 0``.

    See :func:`krelu_hull_exact_rational` for the exact object and
    :func:`rational_rows_to_float` for how rounding is kept sound.
    """
    return rational_rows_to_float(krelu_hull_exact_rational(D, b))
