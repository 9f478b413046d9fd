"""Float enumeration of the orthant pieces ``P ∩ O_s`` of a k-ReLU group (helper of the fast hull).

For ``P = {x : D x ≤ b}`` and every sign pattern ``s ∈ {0, 1}^k`` the piece
``P_s = P ∩ {x_i ≥ 0 if s_i = 1, x_i ≤ 0 if s_i = 0}`` is described with the *same* matrix
``D``: the orthant constraint of coordinate ``i`` is merged into the unit row of ``D``
(``x_i ≤ min(b_{+e_i}, 0)`` when ``s_i = 0``, ``−x_i ≤ min(b_{−e_i}, 0)`` when ``s_i = 1``),
so the pieces differ only in their right-hand sides ``rhs[s]``.

This module computes, in floating point and **without any soundness claim**, the vertices
of every piece, which rows are tight at them, and the *bases* (sets of ``k`` linearly
independent rows) at those vertices.  The bases are later used only to propose dual
multipliers for :mod:`absint.domains.krelu.certify`, which is sound for *any* proposal, so errors
here can cost precision but never soundness.

Two enumeration methods:

* ``"bases"`` (small ``k``): all non-singular ``k``-subsets of the rows of ``D`` are
  enumerated once per ``D`` (cached; 2600 subsets for the octahedral ``k = 3``), and a basis
  is kept for a piece when its basic solution is primal feasible for that piece.  This is
  robust to degeneracy (every basis at a degenerate vertex is kept).
* ``"cdd"`` (larger ``k``): float cdd (pycddlib) H→V per piece in ``R^k``, tight rows by a
  slack tolerance, and up to ``max_bases_per_vertex`` bases per vertex.  If float cdd fails
  on a piece, the piece is redone with exact ``cdd.gmp``.
"""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache

import numpy as np

from absint.domains.krelu.hull_exact import _cdd
from absint.domains.krelu.octahedron import unit_row_indices

__all__ = ["OrthantPieces", "enumerate_pieces"]

logger = logging.getLogger(__name__)

#: use the cached all-bases enumeration when C(m, k) is at most this
BASES_LIMIT = 6000



@dataclass
class OrthantPieces:
    """Float description of the ``2^k`` orthant pieces of ``P`` (see the module docstring).

    Attributes (``O = 2^k`` pieces, ``m`` rows of ``D``):
      ``D`` (m, k); ``signs`` (O, k) in {0, 1}; ``rhs`` (O, m) right-hand sides per piece;
      ``lo``/``hi`` (O, k) a box containing each piece (exact, read off ``b``);
      ``nonempty`` (O,) False only when the piece is *proven* empty (by its box here, or
      later by a Farkas certificate in :func:`absint.domains.krelu.certify.certify_empty_pieces`);
      per piece ``o``: ``vertices[o]`` (p, k), ``tight[o]`` (p, m) bool,
      ``basis_rows[o]`` (t, k) int, ``basis_inv_t[o]`` (t, k, k) with ``λ = basis_inv_t @ w``
      solving ``D[basis_rows]ᵀ λ = w``, ``basis_vertex[o]`` (t,) the vertex of each basis;
      ``tol`` the feasibility tolerance used;
      ``integral`` whether every entry of ``D`` is −1, 0 or 1 (products with it are exact).
    """

    k: int
    D: np.ndarray
    signs: np.ndarray
    rhs: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    nonempty: np.ndarray
    vertices: list[np.ndarray]
    tight: list[np.ndarray]
    basis_rows: list[np.ndarray]
    basis_inv_t: list[np.ndarray]
    basis_vertex: list[np.ndarray]
    tol: float
    integral: bool
    _facets: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _padded: PaddedBases | None = field(default=None, repr=False)
    _empty_checked: bool = field(default=False, repr=False)

    def lifted_vertices(self, o: int) -> np.ndarray:
        """Vertices of piece ``o`` mapped to ``(x, relu(x)) = (x, s∘x)`` in ``R^{2k}``."""
        V = self.vertices[o]
        return np.hstack([V, V * self.signs[o]])

    def facet_rows(self, o: int) -> np.ndarray:
        """Rows of ``D`` that (heuristically) define facets of piece ``o`` (cached).

        A row is kept when it is tight at at least ``d`` distinct vertices, ``d`` being the
        affine dimension of the piece (every tight row for a single point).
        """
        cached = self._facets.get(o)
        if cached is not None:
            return cached
        V = self.vertices[o]
        T = self.tight[o]
        if V.shape[0] == 0:
            rows = np.zeros(0, dtype=np.int64)
        else:
            if V.shape[0] == 1:
                d = 0
            else:
                sv = np.linalg.svd(V - V.mean(axis=0), compute_uv=False)
                d = int((sv > 1e3 * self.tol).sum())
            rows = np.flatnonzero(T.sum(axis=0) >= max(d, 1))
        self._facets[o] = rows
        return rows

    def padded(self) -> PaddedBases:
        """Vertices and bases of all pieces as padded arrays (cached); see :class:`PaddedBases`."""
        if self._padded is None:
            self._padded = _pad(self)
        return self._padded


@dataclass(frozen=True)
class PaddedBases:
    """Padded arrays over the ``O`` pieces, for vectorised dual-multiplier proposals.

    ``vertices`` (O, P, k) with ``valid`` (O, P); ``table`` (O, P, B) indices of the bases at
    each vertex into ``rows`` (O, T + 1, k) / ``inv_t`` (O, T + 1, k, k); the last slot
    ``T`` is a dummy with ``inv_t = 0`` (it proposes ``λ = 0``, the plain box bound) and pads
    ``table``.
    """

    vertices: np.ndarray
    valid: np.ndarray
    table: np.ndarray
    rows: np.ndarray
    inv_t: np.ndarray


def _pad(pc: OrthantPieces) -> PaddedBases:
    n_o, k = pc.signs.shape
    P = max([V.shape[0] for V in pc.vertices] + [1])
    T = max([J.shape[0] for J in pc.basis_rows] + [0])
    Bm = 1
    for o in range(n_o):
        if pc.basis_vertex[o].size:
            Bm = max(Bm, int(np.bincount(pc.basis_vertex[o]).max()))
    verts = np.zeros((n_o, P, k))
    valid = np.zeros((n_o, P), dtype=bool)
    table = np.full((n_o, P, Bm), T, dtype=np.int64)
    rows = np.zeros((n_o, T + 1, k), dtype=np.int64)
    inv_t = np.zeros((n_o, T + 1, k, k))
    for o in range(n_o):
        V, J, M, vid = pc.vertices[o], pc.basis_rows[o], pc.basis_inv_t[o], pc.basis_vertex[o]
        verts[o, : V.shape[0]] = V
        valid[o, : V.shape[0]] = True
        rows[o, : J.shape[0]] = J
        inv_t[o, : J.shape[0]] = M
        if vid.size:
            order = np.argsort(vid, kind="stable")
            sv = vid[order]
            first = np.searchsorted(sv, sv, side="left")
            slot = np.arange(sv.size) - first
            table[o, sv, slot] = order
    return PaddedBases(vertices=verts, valid=valid, table=table, rows=rows, inv_t=inv_t)


@lru_cache(maxsize=8)
def _all_bases(D_bytes: bytes, m: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    D = np.frombuffer(D_bytes, dtype=np.float64).reshape(m, k)
    J = np.array(list(itertools.combinations(range(m), k)), dtype=np.int64).reshape(-1, k)
    B = D[J]  # (n, k, k), rows of the basis
    det = np.linalg.det(B)
    norms = np.prod(np.linalg.norm(B, axis=2), axis=1)
    ok = np.abs(det) > 1e-9 * np.maximum(norms, 1e-300)
    J = J[ok]
    inv_t = np.linalg.inv(B[ok]).transpose(0, 2, 1)  # λ = B^{-T} w
    J.setflags(write=False)
    inv_t.setflags(write=False)
    return J, inv_t


def _dedupe_vertices(X: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Unique rows of ``X`` up to a grid of width ``q``; returns (unique rows, inverse index)."""
    if X.shape[0] == 0:
        return X, np.zeros(0, dtype=np.int64)
    _, idx, inv = np.unique(np.round(X / q), axis=0, return_index=True, return_inverse=True)
    return X[idx], inv.reshape(-1)


def _cap_per_vertex(vid: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``cap`` entries per vertex id (random subset when more)."""
    perm = rng.permutation(vid.size)
    sv = vid[perm]
    order = np.argsort(sv, kind="stable")
    sv = sv[order]
    first = np.searchsorted(sv, sv, side="left")
    keep = (np.arange(sv.size) - first) < cap
    return np.sort(perm[order][keep])


def _cdd_vertices(D: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Vertices of ``{x : D x ≤ rhs}`` (bounded) by float cdd, falling back to cdd.gmp."""
    cdd, cdd_gmp = _cdd()
    k = D.shape[1]
    arr = np.hstack([rhs[:, None], -D])
    try:
        gen = cdd.copy_generators(
            cdd.polyhedron_from_matrix(cdd.matrix_from_array(arr, rep_type=cdd.RepType.INEQUALITY))
        )
        G = np.array(gen.array, dtype=np.float64).reshape(-1, k + 1)
    except Exception as exc:  # pragma: no cover - numerical failure of float cdd  # noqa: BLE001
        logger.debug("float cdd failed (%s); redoing the piece with cdd.gmp", exc)
        rows = [[Fraction(float(t)) for t in r] for r in arr]
        gen = cdd_gmp.copy_generators(
            cdd_gmp.polyhedron_from_matrix(cdd_gmp.matrix_from_array(rows, rep_type=cdd.RepType.INEQUALITY))
        )
        G = np.array([[float(t) for t in r] for r in gen.array], dtype=np.float64).reshape(-1, k + 1)
    G = G[G[:, 0] > 0.5]  # drop rays (the box bounds every piece)
    return G[:, 1:] / G[:, :1]


def _bases_at_vertices(
    D: np.ndarray, tight: np.ndarray, max_per_vertex: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k = D.shape[1]
    rows_list: list[tuple[int, ...]] = []
    vid: list[int] = []
    cnt = tight.sum(axis=1)
    simple = np.flatnonzero(cnt == k)  # non-degenerate vertices: one basis, vectorised
    if simple.size:
        C = np.nonzero(tight[simple])[1].reshape(-1, k)
        B = D[C]
        ok = np.abs(np.linalg.det(B)) > 1e-9 * np.maximum(np.prod(np.linalg.norm(B, axis=2), axis=1), 1e-300)
        rows_list.extend(map(tuple, C[ok].tolist()))
        vid.extend(simple[ok].tolist())
    for v in np.flatnonzero(cnt > k):
        act = np.flatnonzero(tight[v])
        if math.comb(act.size, k) <= 4 * max_per_vertex:
            combos = list(itertools.combinations(act.tolist(), k))
            rng.shuffle(combos)
        else:
            combos = [tuple(sorted(rng.choice(act, size=k, replace=False).tolist())) for _ in range(4 * max_per_vertex)]
        C = np.array(combos, dtype=np.int64).reshape(-1, k)
        B = D[C]
        ok = np.abs(np.linalg.det(B)) > 1e-9 * np.maximum(np.prod(np.linalg.norm(B, axis=2), axis=1), 1e-300)
        C = C[ok]
        if C.shape[0]:
            _, first = np.unique(C, axis=0, return_index=True)
            C = C[np.sort(first)[:max_per_vertex]]  # keep the (shuffled) order
        rows_list.extend(map(tuple, C.tolist()))
        vid.extend([int(v)] * C.shape[0])
    if not rows_list:
        return np.zeros((0, k), dtype=np.int64), np.zeros((0, k, k)), np.zeros(0, dtype=np.int64)
    J = np.array(rows_list, dtype=np.int64)
    return J, np.linalg.inv(D[J]).transpose(0, 2, 1), np.array(vid, dtype=np.int64)


def enumerate_pieces(
    D: np.ndarray,
    b: np.ndarray,
    *,
    method: str = "auto",
    max_bases_per_vertex: int | None = None,
) -> OrthantPieces:
    """Enumerate the orthant pieces of ``P = {x : D x ≤ b}`` in floating point.

    ``D`` must contain the unit rows ``±e_i`` (octahedral matrices do) and ``b`` must be
    finite (drop vacuous ``+inf`` rows beforehand).  ``method``: ``"bases"``, ``"cdd"`` or
    ``"auto"`` (``"bases"`` when ``C(m, k) ≤ BASES_LIMIT``).  ``max_bases_per_vertex``
    caps the bases kept at a degenerate vertex (default 64 for ``k ≤ 3``, else 16).
    """
    D = np.ascontiguousarray(np.asarray(D, dtype=np.float64))
    b = np.asarray(b, dtype=np.float64)
    m, k = D.shape
    if not np.isfinite(b).all():
        raise ValueError("enumerate_pieces needs a finite b")
    pos, neg = unit_row_indices(D)
    lo, hi = -b[neg], b[pos]
    signs = np.array(list(itertools.product((0, 1), repeat=k)), dtype=np.float64).reshape(-1, k)
    n_o = signs.shape[0]
    rhs = np.repeat(b[None, :], n_o, axis=0)
    for o in range(n_o):
        for i in range(k):
            if signs[o, i] == 0:
                rhs[o, pos[i]] = min(b[pos[i]], 0.0)
            else:
                rhs[o, neg[i]] = min(b[neg[i]], 0.0)
    plo = np.where(signs == 1, np.maximum(lo, 0.0), lo)
    phi = np.where(signs == 1, hi, np.minimum(hi, 0.0))
    nonempty = (plo <= phi).all(axis=1)
    scale = max(1.0, float(np.max(np.abs(np.concatenate([lo, hi])))))
    tol = 1e-9 * scale
    integral = bool(np.isin(D, (-1.0, 0.0, 1.0)).all())

    if max_bases_per_vertex is None:
        max_bases_per_vertex = 64 if k <= 3 else 16
    if method == "auto":
        method = "bases" if math.comb(m, k) <= BASES_LIMIT else "cdd"
    vertices: list[np.ndarray] = []
    tight: list[np.ndarray] = []
    brows: list[np.ndarray] = []
    binv: list[np.ndarray] = []
    bvert: list[np.ndarray] = []
    rng = np.random.default_rng(0)
    if method == "bases":
        J_all, inv_all = _all_bases(D.tobytes(), m, k)
        Binv = inv_all.transpose(0, 2, 1)  # B^{-1}
        X_all = np.matmul(Binv[None], rhs[:, J_all][..., None])[..., 0]  # (O, n, k) basic solutions
        feas_all = (X_all @ D.T <= rhs[:, None, :] + tol).all(axis=2)
        for o in range(n_o):
            feas = np.flatnonzero(feas_all[o] & nonempty[o])
            V, vid = _dedupe_vertices(X_all[o][feas], tol)
            keep = _cap_per_vertex(vid, max_bases_per_vertex, rng)
            brows.append(J_all[feas[keep]])
            binv.append(inv_all[feas[keep]])
            bvert.append(vid[keep])
            vertices.append(V)
            tight.append(rhs[o] - V @ D.T <= 10 * tol)
    elif method == "cdd":
        for o in range(n_o):
            if not nonempty[o]:
                V = np.zeros((0, k))
            else:
                V, _ = _dedupe_vertices(_cdd_vertices(D, rhs[o]), tol)
            T = rhs[o] - V @ D.T <= 10 * tol
            J, inv_t, vid = _bases_at_vertices(D, T, max_bases_per_vertex, rng)
            vertices.append(V)
            tight.append(T)
            brows.append(J)
            binv.append(inv_t)
            bvert.append(vid)
    else:
        raise ValueError(f"unknown method {method!r}")
    return OrthantPieces(
        k=k, D=D, signs=signs, rhs=rhs, lo=plo, hi=phi, nonempty=nonempty, vertices=vertices,
        tight=tight, basis_rows=brows, basis_inv_t=binv, basis_vertex=bvert, tol=tol, integral=integral,
    )
