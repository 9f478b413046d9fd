"""Domain-independent k-ReLU machinery of kPoly (Singh et al., NeurIPS 2019) and a fast sound hull.

Pure functions on numpy arrays, no network code:

* :mod:`~absint.domains.krelu.grouping` — :class:`KReluOptions`, :func:`group_neurons` (ERAN's
  sparse-cover grouping of the unstable neurons of a layer);
* :mod:`~absint.domains.krelu.octahedron` — the ``3^k − 1`` octahedral directions ``D`` and helpers
  computing bounds ``b`` (the domain supplies ``b_d ≥ max d·x``); ``P = {x : D x ≤ b}``;
* :mod:`~absint.domains.krelu.hull_exact` — exact hull of ``{(x, relu(x)) : x ∈ P}`` with cdd.gmp;
* :mod:`~absint.domains.krelu.hull_fast` — fast over-approximation (PRIMA-style split–bound–lift
  candidates) whose right-hand sides are certified by dual bounds with directed rounding
  (:mod:`~absint.domains.krelu.certify`), so it provably contains the exact hull;
* :mod:`~absint.domains.krelu.layer` — :class:`HullRows`, the multi-neuron rows of a whole ReLU
  layer (:func:`layer_hull_rows`), for a bound-propagation dual or an LP.

All hulls are returned as ``H`` of shape ``(n, 1 + 2k)`` with rows meaning
``h0 + hx·x + hy·y ≥ 0`` (cdd/ELINA convention; :mod:`~absint.domains.krelu.hrep`).
"""
from __future__ import annotations

import numpy as np

from absint.domains.krelu.certify import certified_upper_bounds
from absint.domains.krelu.grouping import KReluOptions, group_neurons, sparse_cover, unstable_ranking
from absint.domains.krelu.hrep import from_leq, infeasible_hrep, min_slack, multi_neuron_rows, to_leq, triangle_candidates
from absint.domains.krelu.hull_exact import RationalHull, krelu_hull_exact, krelu_hull_exact_rational
from absint.domains.krelu.hull_fast import krelu_hull_fast
from absint.domains.krelu.layer import HullRows, hull_of, layer_hull_rows, octahedral_rows
from absint.domains.krelu.octahedron import (
    box_from_octahedron,
    negation_index,
    octahedral_bounds_from_box,
    octahedral_bounds_from_points,
    octahedral_bounds_from_zonotope,
    octahedral_directions,
    unit_row_indices,
)

__all__ = [
    "HullRows",
    "KReluOptions",
    "RationalHull",
    "box_from_octahedron",
    "certified_upper_bounds",
    "from_leq",
    "group_neurons",
    "hull_of",
    "infeasible_hrep",
    "krelu_hull",
    "krelu_hull_exact",
    "krelu_hull_exact_rational",
    "krelu_hull_fast",
    "layer_hull_rows",
    "min_slack",
    "multi_neuron_rows",
    "negation_index",
    "octahedral_bounds_from_box",
    "octahedral_bounds_from_points",
    "octahedral_bounds_from_zonotope",
    "octahedral_directions",
    "octahedral_rows",
    "relu_support_upper_bounds",
    "sparse_cover",
    "to_leq",
    "triangle_candidates",
    "unit_row_indices",
    "unstable_ranking",
]


def krelu_hull(D: np.ndarray, b: np.ndarray, options: KReluOptions | None = None) -> np.ndarray:
    """k-ReLU hull of ``{(x, relu(x)) : D x ≤ b}`` with the method of ``options.hull``.

    ``"fast"`` → :func:`krelu_hull_fast`; ``"exact"`` → :func:`krelu_hull_exact`; ``"auto"`` (default)
    → exact for ``k ≤ 2``, fast beyond. All return sound float rows ``h0 + hx·x + hy·y ≥ 0``.
    """
    opt = options or KReluOptions()
    return hull_of(D, b, np.atleast_2d(np.asarray(D)).shape[1], opt.hull)


def relu_support_upper_bounds(D: np.ndarray, b: np.ndarray, A: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Rigorous ``e_n ≥ max_{x : D x ≤ b} A_n·x + C_n·relu(x)`` for arbitrary rows ``(A_n, C_n)``.

    Lets a domain make any linear constraint over ``(x, relu(x))`` sound (``+inf`` rows of
    ``b`` are ignored; ``D`` must contain the unit rows; returns ``−inf`` if ``P`` is
    provably empty).
    """
    from absint.domains.krelu.pieces import enumerate_pieces

    D = np.atleast_2d(np.asarray(D, dtype=np.float64))
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if (b == -np.inf).any():
        return np.full(np.asarray(A).shape[0], -np.inf)
    keep = np.isfinite(b)
    D, b = D[keep], b[keep]
    lo, hi = box_from_octahedron(D, b)
    if (lo > hi).any():
        return np.full(np.asarray(A).shape[0], -np.inf)
    return certified_upper_bounds(enumerate_pieces(D, b), np.atleast_2d(np.asarray(A, dtype=np.float64)), np.atleast_2d(np.asarray(C, dtype=np.float64)))
