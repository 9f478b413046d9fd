"""Multi-neuron rows of one ReLU layer, ready for a bound-propagation dual (GCP-CROWN / PRIMA).

For a ReLU layer ``y = relu(z)`` with proved pre-activation bounds ``l ≤ z ≤ u`` this module

1. groups the unstable neurons (kPoly/ERAN sparse cover, :func:`~absint.domains.krelu.group_neurons`),
2. asks the caller for octahedral bounds ``b_d ≥ max d·z[g]`` of every group (one batched request:
   the caller back-substitutes the rows, e.g. with the linear-bound engine), meets the unit
   directions with ``[l, u]``,
3. computes each group's k-ReLU hull (exact ``cdd.gmp`` for ``k ≤ 2``, where it costs as little as
   the fast one; the certified fast hull beyond — kPoly, Singh et al. NeurIPS 2019; PRIMA, Müller
   et al. POPL 2022), keeps the rows the single-neuron relaxation does not imply
   (:func:`~absint.domains.krelu.multi_neuron_rows`),

and returns them as :class:`HullRows`: ``A_pre z + A_post y ≤ b``, each row over the ``≤ k``
neurons of its group. Every row holds, in real arithmetic, for every ``(z, relu(z))`` with ``z`` in
the region the octahedral bounds were computed for (the hull functions certify their float right-hand
sides), hence in every sub-region: a branch-and-bound sub-problem can reuse the root's rows. In a
Lagrangian dual the rows enter with multipliers ``μ ≥ 0`` (``target ≥ target + μ·(A_pre z + A_post y − b)``),
which is sound for every ``μ ≥ 0`` by weak duality (GCP-CROWN, Zhang et al., NeurIPS 2022).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from absint.domains.krelu.grouping import KReluOptions, group_neurons
from absint.domains.krelu.hrep import multi_neuron_rows
from absint.domains.krelu.hull_exact import krelu_hull_exact
from absint.domains.krelu.hull_fast import krelu_hull_fast
from absint.domains.krelu.octahedron import octahedral_directions, unit_row_indices

log = logging.getLogger(__name__)

__all__ = ["HullRows", "UpperBounds", "hull_of", "layer_hull_rows", "octahedral_rows"]

#: ``upper_bounds(C)`` → a float array ``[r]`` with ``out[i] ≥ max C[i]·z`` over the layer's region
#: (``C``: ``[r, n]`` float64 rows over the layer's flat pre-activations ``z``).
UpperBounds = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)
class HullRows:
    """Rows ``A_pre z + A_post y ≤ b`` over one ReLU layer (``z``/``y`` flat, ``numel`` neurons).

    Stored sparsely: row ``i`` reads neurons ``index[i, :]`` with coefficients ``pre[i, :]`` (on
    ``z``) and ``post[i, :]`` (on ``y``); rows of groups smaller than the widest are padded with
    zero coefficients. ``lower``/``upper`` are the bounds the rows were computed for, ``groups``
    the neuron groups, ``group_of[i]`` the group of row ``i``.
    """

    index: np.ndarray
    pre: np.ndarray
    post: np.ndarray
    rhs: np.ndarray
    numel: int
    groups: tuple[tuple[int, ...], ...] = ()
    group_of: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    stats: dict = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return int(self.rhs.shape[0])

    @staticmethod
    def empty(numel: int) -> "HullRows":
        z = np.zeros((0, 1))
        return HullRows(np.zeros((0, 1), dtype=np.int64), z, z.copy(), np.zeros(0), int(numel))

    def dense(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(A_pre, A_post, b)`` as dense ``[m, n]``, ``[m, n]``, ``[m]`` float64 arrays (exact copies)."""
        m = self.num_rows
        A_pre = np.zeros((m, self.numel))
        A_post = np.zeros((m, self.numel))
        rows = np.repeat(np.arange(m), self.index.shape[1])
        # padded entries have zero coefficients; np.add.at keeps duplicates exact (0 + c)
        np.add.at(A_pre, (rows, self.index.reshape(-1)), self.pre.reshape(-1))
        np.add.at(A_post, (rows, self.index.reshape(-1)), self.post.reshape(-1))
        return A_pre, A_post, self.rhs.copy()

    def residual(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``A_pre z + A_post y − b`` for points ``z``, ``y`` of shape ``[p, n]`` → ``[p, m]`` (≤ 0 where valid)."""
        z = np.atleast_2d(np.asarray(z, dtype=np.float64))
        y = np.atleast_2d(np.asarray(y, dtype=np.float64))
        return (z[:, self.index] * self.pre[None]).sum(-1) + (y[:, self.index] * self.post[None]).sum(-1) - self.rhs

    def select(self, keep: np.ndarray) -> "HullRows":
        """The rows ``keep`` (a boolean mask or indices, in increasing order) only; groups left without a
        row are dropped and the others renumbered."""
        idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep, dtype=np.int64)
        groups, group_of = self.groups, self.group_of
        if group_of.size:
            used, group_of = np.unique(group_of[idx], return_inverse=True)
            groups = tuple(self.groups[g] for g in used)
        return HullRows(self.index[idx], self.pre[idx], self.post[idx], self.rhs[idx], self.numel, groups,
                        group_of.reshape(-1), self.lower, self.upper, dict(self.stats))


def hull_of(D: np.ndarray, b: np.ndarray, k: int, hull: str) -> np.ndarray:
    """The k-ReLU hull rows of ``{(x, relu x) : D x ≤ b}`` by method ``hull`` (see :class:`KReluOptions`).

    ``"auto"``: exact (cdd.gmp) for ``k ≤ 2`` — about as fast as the fast hull there and exact —,
    the certified fast hull for ``k ≥ 3`` (67× faster than exact at ``k = 3``, ``benchmarks/RESULTS.md``).
    """
    if hull == "exact" or (hull == "auto" and k <= 2):
        return krelu_hull_exact(D, b)
    return krelu_hull_fast(D, b)


def octahedral_rows(groups: np.ndarray, D: np.ndarray, numel: int) -> np.ndarray:
    """Dense rows ``[G·|D|, numel]``: row ``g·|D| + j`` is ``D[j]`` placed on the neurons ``groups[g]``."""
    G, k = groups.shape
    nd = D.shape[0]
    C = np.zeros((G, nd, numel))
    gi = np.broadcast_to(groups[:, None, :], (G, nd, k))
    np.put_along_axis(C, gi, np.broadcast_to(D[None], (G, nd, k)), axis=2)
    return C.reshape(G * nd, numel)


def layer_hull_rows(lower: np.ndarray, upper: np.ndarray, upper_bounds: UpperBounds, options: KReluOptions, *,
                    deadline: float | None = None, max_query_rows: int = 8192) -> HullRows:
    """:class:`HullRows` of one ReLU layer (see the module docstring).

    Args:
      lower, upper: proved bounds of the layer's flat pre-activations.
      upper_bounds: sound upper bounds of linear functions of the pre-activations (called with at
        most ``max_query_rows`` rows at a time).
      options: grouping and hull options (``k``, ``s``, ``sparse_n``, ``cutoff``, ``hull``,
        ``max_groups``).
      deadline: a ``time.perf_counter()`` value; groups not done by then are left out (fewer rows
        are still sound).
    """
    t0 = time.perf_counter()
    lo = np.asarray(lower, dtype=np.float64).reshape(-1)
    hi = np.asarray(upper, dtype=np.float64).reshape(-1)
    n = lo.size
    groups = group_neurons(lo, hi, options)
    if options.max_groups is not None:
        groups = groups[: options.max_groups]
    stats = {"groups": 0, "query_s": 0.0, "hull_s": 0.0, "failed": 0}
    blocks: list[tuple[tuple[int, ...], np.ndarray]] = []
    by_size: dict[int, list[tuple[int, ...]]] = {}
    for g in groups:
        if len(g) >= 2:
            by_size.setdefault(len(g), []).append(g)
    late = False
    for k, grp in sorted(by_size.items()):
        D = octahedral_directions(k)
        pos, neg = unit_row_indices(D)
        garr = np.asarray(grp, dtype=np.int64)
        per = max(1, max_query_rows // D.shape[0])
        for s in range(0, len(grp), per):
            if deadline is not None and time.perf_counter() > deadline:
                late = True
                break
            t1 = time.perf_counter()
            part = garr[s:s + per]
            B = np.asarray(upper_bounds(octahedral_rows(part, D, n)), dtype=np.float64).reshape(len(part), D.shape[0])
            t2 = time.perf_counter()
            stats["query_s"] += t2 - t1
            for g, b in zip(part, B):
                if deadline is not None and time.perf_counter() > deadline:
                    late = True
                    break
                b = b.copy()
                b[pos] = np.minimum(b[pos], hi[g])
                b[neg] = np.minimum(b[neg], -lo[g])
                if np.isnan(b).any() or not np.isfinite(b[pos]).all() or not np.isfinite(b[neg]).all():
                    stats["failed"] += 1
                    continue
                try:
                    H = multi_neuron_rows(hull_of(D, b, k, options.hull))
                except (ValueError, ArithmeticError, RuntimeError) as exc:  # a lost group only costs precision
                    log.debug("k-ReLU hull failed for group %s: %s", g, exc)
                    stats["failed"] += 1
                    continue
                if H.shape[0]:
                    blocks.append((tuple(int(i) for i in g), H))
            stats["hull_s"] += time.perf_counter() - t2
            if late:
                break
        if late:
            break
    if late:
        log.info("k-ReLU rows: deadline reached after %d of %d groups", len(blocks), len(groups))
    stats["groups"] = len(blocks)
    stats["seconds"] = time.perf_counter() - t0
    if not blocks:
        out = HullRows.empty(n)
        out.stats.update(stats)
        return out
    kmax = max(len(g) for g, _ in blocks)
    m = sum(H.shape[0] for _, H in blocks)
    index = np.zeros((m, kmax), dtype=np.int64)
    pre = np.zeros((m, kmax))
    post = np.zeros((m, kmax))
    rhs = np.zeros(m)
    group_of = np.zeros(m, dtype=np.int64)
    r = 0
    for gi, (g, H) in enumerate(blocks):
        k, nr = len(g), H.shape[0]
        index[r:r + nr, :k] = g
        index[r:r + nr, k:] = g[0]
        pre[r:r + nr, :k] = -H[:, 1:1 + k]
        post[r:r + nr, :k] = -H[:, 1 + k:]
        rhs[r:r + nr] = H[:, 0]
        group_of[r:r + nr] = gi
        r += nr
    pre += 0.0  # −0.0 → 0.0
    post += 0.0
    return HullRows(index, pre, post, rhs, n, tuple(g for g, _ in blocks), group_of, lo.copy(), hi.copy(), stats)
