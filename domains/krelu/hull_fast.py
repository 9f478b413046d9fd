"""Fast, provably sound over-approximation of the k-ReLU convex hull.

Candidate constraints are generated cheaply, in floating point, by a split–bound–lift scheme
in the spirit of PRIMA's SBLM (Müller, Makarchuk, Singh, Püschel, Vechev, "PRIMA: General and
Precise Neural Network Certification via Scalable Convex Hull Approximations", POPL 2022):

1. *split* ``P`` into its ``2^k`` orthant pieces ``P_s`` and compute their vertices and
   facets (:mod:`absint.domains.krelu.pieces`);
2. *bound*: on ``P_s`` ReLU is ``y = s∘x``; a facet ``α·x ≤ β`` of ``P_s`` is a
   constraint of the lifted piece ``L_s = {(x, s∘x) : x ∈ P_s}`` in every form
   ``α·x + γ·g(x) ≤ β`` with ``g_j(x) = relu(x_j) − s_j x_j`` (``g ≥ 0``, ``g = 0`` on
   ``P_s``);
3. *lift*: choose ``γ`` so that the row becomes valid on the other pieces, merging them
   neuron by neuron: when neuron ``j`` is merged, the row must hold on the vertices of the
   pieces that differ from ``s`` in ``j`` (and in already merged neurons), and ``γ_j`` is
   raised to the largest such value, ``γ_j = min_v slack_v / g_j(v)``.  That is PRIMA's
   sequential lifting for one merge order.  Because sequential lifting only reaches the
   extreme points of the set of valid ``γ``, :func:`lifting_plans` also uses all orders
   (``k ≤ 3``) and joint steps that first shoot along the diagonal ``γ = t·1`` and then
   complete coordinate-wise, which reaches the "middle" lifts such as the facet
   ``y_1 + y_2 ≤ c + λ(x_1 + x_2)`` of two symmetric neurons.  Since ``g ≥ 0`` and every
   step keeps all previously covered vertices feasible, the final row is valid on every
   vertex of every piece, hence on the hull (in exact arithmetic).
The single-neuron triangle constraints of every neuron and the input constraints
``D x ≤ b`` (zero ``y`` part) are always added.

**Soundness does not depend on step 1–3 being computed exactly**: every candidate's
right-hand side is recomputed by :func:`absint.domains.krelu.certify.certified_upper_bounds` as a
rigorous upper bound of ``max_{x ∈ P} a·x + c·relu(x)`` (dual certificates per orthant,
evaluated with directed rounding).  Hence every returned row is valid for every
``(x, relu(x))``, ``x ∈ P``, i.e. the result contains the exact hull, whatever floating-point
errors occurred in the candidate generation.

Conventions: rows ``h0 + hx·x + hy·y ≥ 0`` (see :mod:`absint.domains.krelu.hrep`).
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import numpy as np

from absint.domains.krelu.certify import certified_upper_bounds
from absint.domains.krelu.hrep import from_leq, infeasible_hrep, triangle_candidates
from absint.domains.krelu.octahedron import as_polytope, box_from_octahedron, unit_row_indices
from absint.domains.krelu.pieces import OrthantPieces, enumerate_pieces

__all__ = ["krelu_hull_fast", "lift_candidates", "lifting_plans"]

logger = logging.getLogger(__name__)


#: one step of a lifting plan: (neurons S merged in this step, shoot along 1_S first?,
#: order in which the coefficients of S are then raised to their maximum)
Step = tuple[tuple[int, ...], bool, tuple[int, ...]]
Plan = tuple[Step, ...]


def lifting_plans(k: int, level: int = 1) -> list[Plan]:
    """The lifting plans (merge schedules) used by :func:`krelu_hull_fast`.

    ``level 0``: the ``k`` cyclic merge orders, one neuron per step (PRIMA-like sequential
    lifting); ``level 1``: all ``k!`` orders for ``k ≤ 3`` (else the cyclic ones) plus, for
    ``k ≥ 2``, a joint step over all neurons that first shoots along the diagonal
    ``γ = t·1`` and then completes each cyclic order (the default); ``level 2`` adds, for
    ``k ≥ 3``, a joint diagonal step for every pair of neurons, placed first and last.
    """
    if level not in (0, 1, 2):
        raise ValueError(f"level must be 0, 1 or 2, got {level}")
    base = tuple(range(k - 1, -1, -1))
    shifts = [base[i:] + base[:i] for i in range(k)]
    orders = list(shifts)
    if level >= 1 and k <= 3:
        orders += [p for p in itertools.permutations(base) if p not in orders]
    plans: list[Plan] = [tuple(((j,), False, (j,)) for j in order) for order in orders]
    if level >= 1 and k >= 2:
        plans += [((base, True, order),) for order in shifts]
    if level >= 2 and k >= 3:
        for pair in itertools.combinations(range(k), 2):
            rest = tuple(j for j in base if j not in pair)
            single = tuple(((j,), False, (j,)) for j in rest)
            plans.append(((pair, True, pair),) + single)
            plans.append(single + ((pair, True, pair[::-1]),))
    return plans


def lift_candidates(pieces: OrthantPieces, plans: Sequence[Plan]) -> tuple[np.ndarray, np.ndarray]:
    """Split–bound–lift candidates ``(A, C)`` (rows ``a·x + c·y ≤ ·``) for every plan.

    Every facet row ``α·x ≤ β`` of a piece ``s`` is written as ``α·x + γ·g(x) ≤ β`` with
    ``g_j(x) = relu(x_j) − s_j x_j ≥ 0`` (zero on piece ``s``), starting from ``γ = 0``.
    A plan merges the neurons step by step; a step over the set ``S`` makes the row valid on
    the *partner* vertices — those of the pieces that agree with ``s`` on every neuron not
    merged yet outside ``S`` — by (optionally) shooting ``γ += t·1_S`` with the largest valid
    ``t`` (possibly negative) and then raising ``γ_j``, ``j ∈ S`` in order, each to its
    largest valid value.  After the last step the row is valid on every vertex, i.e. on the
    hull (float heuristic; right-hand sides are recomputed soundly by the caller).  With
    singleton steps this is PRIMA's sequential split–bound–lift.
    """
    k = pieces.k
    tol = pieces.tol
    live = [o for o in range(pieces.signs.shape[0]) if pieces.nonempty[o] and pieces.vertices[o].shape[0]]
    if not live or not plans:
        return np.zeros((0, k)), np.zeros((0, k))
    # all vertices, deduplicated (a vertex on x_j = 0 is shared by the pieces on both sides)
    X = np.vstack([pieces.vertices[o] for o in live])
    X = np.where(np.abs(X) <= tol, 0.0, X)
    _, first = np.unique(np.round(X / tol), axis=0, return_index=True)
    X = X[np.sort(first)]  # (p, k)
    Y = np.maximum(X, 0.0)
    bits = 1 << np.arange(k, dtype=np.int64)
    vcode = (X > 0).astype(np.int64) @ bits  # sign pattern of the non-zero coordinates
    vfree = (X == 0).astype(np.int64) @ bits  # coordinates where the vertex lies on x_j = 0
    rows = [pieces.facet_rows(o) for o in live]
    alpha = pieces.D[np.concatenate(rows)]  # (n, k)
    beta = np.concatenate([pieces.rhs[o][r] for o, r in zip(live, rows)])
    sgn = np.vstack([np.repeat(pieces.signs[o][None], r.size, axis=0) for o, r in zip(live, rows)])
    rcode = (sgn @ bits).astype(np.int64)
    # (n, p): bit i set iff the vertex lies strictly on the other side of x_i = 0 than piece s
    diff = (rcode[:, None] ^ vcode[None, :]) & ~vfree[None, :]
    g = np.ascontiguousarray((Y[None, :, :] - sgn[:, None, :] * X[None, :, :]).transpose(2, 0, 1))  # (k, n, p) ≥ 0
    slack0 = beta[:, None] - alpha @ X.T  # (n, p)
    full = (1 << k) - 1

    def raise_along(gd: np.ndarray, slack: np.ndarray, partner: np.ndarray) -> np.ndarray:
        """Largest t with slack − t·gd ≥ 0 on the partner vertices where gd > tol (0 if none)."""
        ok = partner & (gd > tol)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = slack / gd
        ratio[~ok] = np.inf
        t = ratio.min(axis=1)
        t[~np.isfinite(t)] = 0.0
        return t

    out: list[np.ndarray] = []
    for plan in plans:
        gamma = np.zeros((alpha.shape[0], k))
        slack = slack0.copy()
        unmerged = full
        for S, shoot, order in plan:
            smask = int(sum(1 << j for j in S))
            partner = (diff & (unmerged & ~smask)) == 0
            if shoot:
                gd = g[list(S)].sum(axis=0)
                t = raise_along(gd, slack, partner)
                gamma[:, list(S)] += t[:, None]
                slack -= t[:, None] * gd
            for j in order:
                t = raise_along(g[j], slack, partner)
                gamma[:, j] += t
                slack -= t[:, None] * g[j]
            unmerged &= ~smask
        out.append(np.hstack([alpha - gamma * sgn, gamma]))
    M = np.vstack(out)
    return M[:, :k], M[:, k:]


def _normalise_unique(A: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    M = np.hstack([A, C])
    M = M[np.isfinite(M).all(axis=1)]
    scale = np.abs(M).max(axis=1)
    M = M[scale > 0] / scale[scale > 0, None]
    if M.shape[0] == 0:
        return M[:, : A.shape[1]], M[:, A.shape[1] :]
    _, idx = np.unique(np.round(M, 9), axis=0, return_index=True)
    M = M[np.sort(idx)]
    k = A.shape[1]
    return M[:, :k], M[:, k:]


def krelu_hull_fast(
    D: np.ndarray,
    b: np.ndarray,
    *,
    level: int = 1,
    include_input: bool = True,
    method: str = "auto",
) -> np.ndarray:
    """Sound over-approximation of ``conv{(x, relu(x)) : D x ≤ b}`` (see module docstring).

    Args:
      D: ``(m, k)`` input directions; must contain the unit rows ``±e_i`` (the octahedral
        matrix of :func:`absint.domains.krelu.octahedron.octahedral_directions` does).
      b: ``(m,)`` upper bounds ``b_d ≥ max_{x ∈ region} d·x``; ``+inf`` rows are ignored,
        the unit rows must be finite.
      level: richness of the candidate generation, see :func:`lifting_plans` (0, 1, 2).
      include_input: also return the input constraints ``D x ≤ b`` (rows with zero ``y``
        part, right-hand sides re-certified and possibly tighter).
      method: vertex enumeration of the pieces, ``"auto"``, ``"bases"`` or ``"cdd"``.

    Returns:
      ``H`` of shape ``(n, 1 + 2k)``, rows ``h0 + hx·x + hy·y ≥ 0``, every row valid for
      all ``(x, relu(x))`` with ``x ∈ P``; ``[[−1, 0, …]]`` if ``P`` is provably empty.
    """
    D, b, k = as_polytope(D, b)
    if (b == -np.inf).any():
        return infeasible_hrep(k)
    pos, neg = unit_row_indices(D)
    if not (np.isfinite(b[pos]).all() and np.isfinite(b[neg]).all()):
        raise ValueError("the fast hull needs finite bounds b on the unit rows ±e_i (a bounded box)")
    keep = np.isfinite(b)
    D, b = D[keep], b[keep]
    lo, hi = box_from_octahedron(D, b)
    if (lo > hi).any():
        return infeasible_hrep(k)

    pieces = enumerate_pieces(D, b, method=method)
    # order matters for de-duplication: triangle rows first, so they survive exactly
    At, Ct = triangle_candidates(lo, hi)
    A_parts = [At]
    C_parts = [Ct]
    if include_input:
        A_parts.append(D)
        C_parts.append(np.zeros_like(D))
    Al, Cl = lift_candidates(pieces, lifting_plans(k, level))
    A_parts.append(Al)
    C_parts.append(Cl)
    A, C = _normalise_unique(np.vstack(A_parts), np.vstack(C_parts))
    e = certified_upper_bounds(pieces, A, C)
    if np.all(e == -np.inf):
        return infeasible_hrep(k)
    ok = np.isfinite(e)
    if not ok.all():
        logger.debug("dropping %d candidates without a finite certified bound", int((~ok).sum()))
    return from_leq(np.hstack([A[ok], C[ok]]), e[ok])
