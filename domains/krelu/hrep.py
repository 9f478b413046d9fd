"""H-representation conventions shared by the k-ReLU hull functions.

Every hull function of :mod:`absint.domains.krelu` returns a float matrix ``H`` of shape
``(n, 1 + 2k)`` in the cdd / ELINA convention::

    row h = [h0 | hx_1 … hx_k | hy_1 … hy_k]   means   h0 + hx·x + hy·y ≥ 0,

where ``x`` are the pre-activation values of the group's ``k`` neurons and ``y = relu(x)``
(in the same order).  Equivalently ``a·x + c·y ≤ e`` with ``a = −hx``, ``c = −hy``,
``e = h0`` (see :func:`to_leq` / :func:`from_leq`).  An empty input polytope is reported by
the single infeasible row ``[−1, 0, …, 0]`` (``−1 ≥ 0``).
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "to_leq",
    "from_leq",
    "infeasible_hrep",
    "triangle_candidates",
    "min_slack",
    "multi_neuron_rows",
]


def to_leq(H: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split ``H`` (rows ``h0 + h·z ≥ 0``) into ``(M, e)`` with ``M z ≤ e``, ``z = (x, y)``."""
    H = np.asarray(H, dtype=np.float64)
    return -H[:, 1:], H[:, 0].copy()


def from_leq(M: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_leq`: rows ``M z ≤ e`` → ``[e | −M]``."""
    M = np.asarray(M, dtype=np.float64)
    e = np.asarray(e, dtype=np.float64).reshape(-1, 1)
    return np.hstack([e, -M]) + 0.0  # + 0.0 turns −0.0 into 0.0


def infeasible_hrep(k: int) -> np.ndarray:
    """The H-representation ``[[−1, 0, …, 0]]`` of the empty set in ``R^{2k}``."""
    H = np.zeros((1, 1 + 2 * k))
    H[0, 0] = -1.0
    return H


def triangle_candidates(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients ``(A, C)`` of the single-neuron (triangle) constraints ``a·x + c·y ≤ e``.

    For each neuron ``i`` with bounds ``[lo_i, hi_i]`` (Ehlers 2017; DeepPoly/kPoly's 1-ReLU):

    * unstable (``lo < 0 < hi``): ``−y ≤ 0``, ``x − y ≤ 0``, ``−λx + y ≤ −λ·lo`` with
      ``λ = hi/(hi − lo)``;
    * active (``lo ≥ 0``): ``y − x ≤ 0`` and ``x − y ≤ 0``;
    * inactive (``hi ≤ 0``): ``y ≤ 0`` and ``−y ≤ 0``.

    Only the coefficient rows are returned: right-hand sides are left to the caller, which in
    :func:`absint.domains.krelu.hull_fast.krelu_hull_fast` recomputes them rigorously, so rounding
    in ``λ`` can never make a constraint unsound.
    """
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    k = lo.shape[0]
    A_rows: list[np.ndarray] = []
    C_rows: list[np.ndarray] = []

    def add(i: int, a: float, c: float) -> None:
        ar = np.zeros(k)
        cr = np.zeros(k)
        ar[i] = a
        cr[i] = c
        A_rows.append(ar)
        C_rows.append(cr)

    for i in range(k):
        if lo[i] >= 0:
            add(i, -1.0, 1.0)
            add(i, 1.0, -1.0)
        elif hi[i] <= 0:
            add(i, 0.0, 1.0)
            add(i, 0.0, -1.0)
        else:
            lam = hi[i] / (hi[i] - lo[i])
            add(i, 0.0, -1.0)
            add(i, 1.0, -1.0)
            add(i, -lam, 1.0)
    return np.array(A_rows).reshape(-1, k), np.array(C_rows).reshape(-1, k)


def min_slack(H: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """For each point ``z`` (rows of ``Z``, shape ``(p, 2k)``) the smallest ``h0 + h·z`` over ``H``.

    Non-negative iff the point satisfies every row (up to float rounding).
    """
    H = np.asarray(H, dtype=np.float64)
    Z = np.atleast_2d(np.asarray(Z, dtype=np.float64))
    return (H[:, :1].T + Z @ H[:, 1:].T).min(axis=1)


def multi_neuron_rows(H: np.ndarray) -> np.ndarray:
    """The rows of ``H`` that the single-neuron relaxation does not already imply.

    A row that involves one neuron only (non-zero ``hx_i``/``hy_i`` for a single ``i``) is a
    1-ReLU constraint over the group's box, implied by that neuron's triangle relaxation with
    the same bounds; a row without ``y`` part is an octahedral input constraint ``d·x ≤ b_d``,
    which the relaxation of the earlier layers that produced ``b_d`` implies. Keeping only the
    others shrinks a fast k=2 hull from ~23 to ~9 rows without changing any LP optimum
    (measured: ERAN 6x100, image 36, final-LP bounds equal to 1e-9). The infeasible row of an
    empty polytope is kept.
    """
    H = np.asarray(H, dtype=np.float64)
    if H.shape[0] == 0:
        return H
    k = (H.shape[1] - 1) // 2
    hx, hy = H[:, 1:1 + k], H[:, 1 + k:]
    involved = ((hx != 0) | (hy != 0)).sum(axis=1)
    keep = (involved >= 2) & (hy != 0).any(axis=1)
    keep |= (involved == 0) & (H[:, 0] < 0)  # "−c ≥ 0": the empty set
    return H[keep]
