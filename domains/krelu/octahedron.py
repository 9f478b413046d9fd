"""Octahedral input polytopes of a k-ReLU group (kPoly).

kPoly (Singh, Ganvir, Püschel, Vechev, "Beyond the Single Neuron Convex Barrier for Neural
Network Certification", NeurIPS 2019) over-approximates the joint input region of a
group of ``k`` neurons by an *octahedron*: one half-space ``d·x ≤ b_d`` for every direction
``d ∈ {−1, 0, 1}^k \\ {0}``; the underlying domain (DeepPoly, zonotope, ...) supplies the
upper bounds ``b_d ≥ max_{x ∈ region} d·x``.  The group's input polytope is
``P = {x ∈ R^k : D x ≤ b}``.

Row convention of :func:`octahedral_directions` (all ``3^k − 1`` rows are returned, so that
a direction and its negation give the upper and the lower bound of the same linear form)::

    D[i]        for i < n/2  : the "positive" directions, whose first non-zero entry is +1,
                               in lexicographic order of the coefficient tuples,
    D[i + n/2]  = −D[i]       : their negations, in the same order,

with ``n = 3^k − 1``.  The unit rows ``+e_i`` and ``−e_i`` are always present, so ``P`` is
bounded whenever ``b`` is finite; :func:`box_from_octahedron` reads the box ``[lo, hi]``
off them.  Everything here is a pure function on numpy arrays.
"""
from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np

__all__ = [
    "octahedral_directions",
    "negation_index",
    "unit_row_indices",
    "box_from_octahedron",
    "octahedral_bounds_from_box",
    "octahedral_bounds_from_points",
    "octahedral_bounds_from_zonotope",
]


@lru_cache(maxsize=16)
def _directions(k: int) -> np.ndarray:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    pos = [d for d in itertools.product((-1, 0, 1), repeat=k) if any(d) and next(c for c in d if c) == 1]
    half = np.array(pos, dtype=np.float64).reshape(len(pos), k)
    out = np.vstack([half, -half])
    out.setflags(write=False)
    return out


def octahedral_directions(k: int, *, half: bool = False) -> np.ndarray:
    """All ``3^k − 1`` octahedral directions as a float matrix ``D`` of shape ``(3^k − 1, k)``.

    With ``half=True`` only the first ``(3^k − 1)/2`` rows (one of each ± pair) are returned.
    See the module docstring for the row order; the result is a fresh writable copy.
    """
    D = _directions(k)
    return (D[: D.shape[0] // 2] if half else D).copy()


def negation_index(k: int) -> np.ndarray:
    """``idx`` with ``D[idx[i]] == −D[i]`` for the matrix of :func:`octahedral_directions`."""
    n = 3**k - 1
    h = n // 2
    return np.concatenate([np.arange(h, n), np.arange(0, h)])


def as_polytope(D: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate the group polytope ``P = {x : D x ≤ b}`` given to a hull: ``(D, b, k)`` as float arrays.

    ``D`` must be finite; ``b`` may hold ``+inf`` (no constraint) or ``−inf`` (empty ``P``), not NaN.
    """
    D = np.atleast_2d(np.asarray(D, dtype=np.float64))
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if D.shape[0] != b.shape[0]:
        raise ValueError("D and b have inconsistent shapes")
    if np.isnan(b).any() or not np.isfinite(D).all():
        raise ValueError("D must be finite and b must not contain NaN")
    return D, b, D.shape[1]


def unit_row_indices(D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(pos, neg)`` of the rows ``+e_i`` and ``−e_i`` of ``D`` for each coordinate ``i``.

    Raises ``ValueError`` if some unit row is missing (then ``D`` does not bound a box).
    When a unit row occurs several times the first occurrence is used.
    """
    D = np.asarray(D, dtype=np.float64)
    k = D.shape[1]
    pos = np.full(k, -1, dtype=np.int64)
    neg = np.full(k, -1, dtype=np.int64)
    nnz = np.count_nonzero(D, axis=1)
    for r in np.flatnonzero(nnz == 1):
        i = int(np.flatnonzero(D[r])[0])
        if D[r, i] == 1.0 and pos[i] < 0:
            pos[i] = r
        elif D[r, i] == -1.0 and neg[i] < 0:
            neg[i] = r
    if (pos < 0).any() or (neg < 0).any():
        raise ValueError("D must contain the unit rows +e_i and -e_i for every coordinate")
    return pos, neg


def box_from_octahedron(D: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The box ``[lo, hi]`` given by the unit rows of ``D x ≤ b``: ``hi_i = b_{+e_i}``, ``lo_i = −b_{−e_i}``.

    Exact in floating point (only a negation).  ``P ⊆ [lo, hi]`` always holds.
    """
    pos, neg = unit_row_indices(D)
    b = np.asarray(b, dtype=np.float64)
    return -b[neg], b[pos].copy()


_U = 2.0**-53


def _round_up(
    value: np.ndarray, magnitude: np.ndarray, n_terms: int, exact: np.ndarray | None = None
) -> np.ndarray:
    """Add a rigorous bound on the rounding error of a float sum of ``n_terms`` products.

    ``magnitude`` bounds the sum of the absolute values of the terms; the error of a
    recursive sum of ``n`` rounded products is at most ``γ_n·magnitude`` (Higham, *Accuracy
    and Stability of Numerical Algorithms*, §3.1), plus a tiny absolute term for underflow.
    Entries flagged in ``exact`` (known to be computed without rounding) are kept as is.
    """
    n = n_terms + 2
    gamma = n * _U / (1 - n * _U)
    out = np.nextafter(value + (gamma * magnitude * (1 + 4 * _U) + n * 2.0**-1074), np.inf)
    if exact is not None:
        out = np.where(exact, value, out)
    return out


def _single_unit_rows(D: np.ndarray) -> np.ndarray:
    """Rows ``±e_i`` / zero rows: ``d·x`` is then computed exactly in floating point."""
    return np.isin(D, (-1.0, 0.0, 1.0)).all(axis=1) & (np.count_nonzero(D, axis=1) <= 1)


def octahedral_bounds_from_box(lo: np.ndarray, hi: np.ndarray, D: np.ndarray | None = None) -> np.ndarray:
    """Rigorous ``b_d ≥ max_{x ∈ [lo, hi]} d·x`` for every row of ``D`` (default: all octahedral rows).

    Rounded outward by a few ulps where the float sum may be inexact (unit rows are exact),
    so ``P = {D x ≤ b}`` contains the box.
    """
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    if D is None:
        D = _directions(lo.shape[0])
    D = np.asarray(D, dtype=np.float64)
    terms = np.maximum(D * lo, D * hi)
    return _round_up(terms.sum(axis=1), np.abs(terms).sum(axis=1), D.shape[1], _single_unit_rows(D))


def octahedral_bounds_from_points(points: np.ndarray, D: np.ndarray | None = None) -> np.ndarray:
    """Rigorous ``b_d ≥ max_p d·p`` over a point cloud ``points`` of shape ``(n, k)``.

    The tightest octahedron containing the cloud, rounded outward (unit rows are exact);
    never empty.
    """
    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
    if D is None:
        D = _directions(pts.shape[1])
    D = np.asarray(D, dtype=np.float64)
    vals = pts @ D.T
    mags = np.abs(pts) @ np.abs(D).T
    return _round_up(vals.max(axis=0), mags.max(axis=0), D.shape[1], _single_unit_rows(D))


def octahedral_bounds_from_zonotope(
    center: np.ndarray, generators: np.ndarray, D: np.ndarray | None = None
) -> np.ndarray:
    """Rigorous ``b_d ≥ d·c + ‖d·G‖₁``: the support function of ``{c + G ε : ε ∈ [−1, 1]^p}``.

    ``generators`` has shape ``(k, p)``; rounded outward.
    """
    c = np.asarray(center, dtype=np.float64)
    G = np.asarray(generators, dtype=np.float64).reshape(c.shape[0], -1)
    if D is None:
        D = _directions(c.shape[0])
    D = np.asarray(D, dtype=np.float64)
    absD = np.abs(D)
    val = D @ c + np.abs(D @ G).sum(axis=1)
    mag = absD @ np.abs(c) + (absD @ np.abs(G)).sum(axis=1)
    return _round_up(val, mag, D.shape[1] + G.shape[1] + 1)
