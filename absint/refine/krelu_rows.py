"""k-ReLU joint constraints of one ReLU layer, domain-independent (kPoly, Singh et al., NeurIPS 2019).

For the pre-activations ``z`` of a ReLU layer: group the unstable neurons (ERAN's sparse cover,
:func:`absint.domains.krelu.group_neurons`), ask the domain for octahedral bounds ``b_d ≥ max d·z_g``
over every direction ``d ∈ {−1,0,1}^k \\ {0}`` of each group (one batched call), intersect the
unit directions with the proved box, and compute the hull of ``{(z, relu(z)) : D z ≤ b}``
(:func:`absint.domains.krelu.krelu_hull`). The rows go into the LP as :class:`~absint.refine.encoding.KReluRows`.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from absint.refine.encoding import KReluRows
from absint.domains.base import Domain, ShapedElement
from absint.domains.krelu import (KReluOptions, group_neurons, krelu_hull, multi_neuron_rows, octahedral_directions,
                                  unit_row_indices)

log = logging.getLogger(__name__)

__all__ = ["octahedral_upper_bounds", "krelu_rows"]


def octahedral_upper_bounds(domain: Domain, element: Any, groups: list[tuple[int, ...]], k: int,
                            chunk: int = 4096) -> np.ndarray:
    """``b[g, j] ≥ max D[j]·z[groups[g]]`` from the domain (``D = octahedral_directions(k)``).

    Uses :meth:`Domain.linear_bounds` (DeepPoly back-substitutes the rows themselves; other
    domains use their own linear bounds) on the batched ``±`` directions of all groups.
    """
    D = octahedral_directions(k)
    nd = D.shape[0]
    n = int(np.prod(element.shape)) if isinstance(element, ShapedElement) else None
    if n is None:
        lo, _ = domain.bounds(element)
        n = int(lo[0].numel())
    G = len(groups)
    gi = torch.as_tensor(np.asarray(groups, dtype=np.int64))  # [G, k]
    out = np.empty((G, nd))
    rows_per = max(1, chunk // nd)
    with torch.no_grad():
        for s in range(0, G, rows_per):
            e = min(G, s + rows_per)
            C = torch.zeros(e - s, nd, n, dtype=domain.dtype, device=domain.device)
            Dt = torch.as_tensor(-D, dtype=domain.dtype, device=domain.device)  # lower bound of -d·z
            idx = gi[s:e].to(domain.device)  # [g, k]
            C.scatter_(2, idx[:, None, :].expand(-1, nd, -1), Dt[None].expand(e - s, -1, -1))
            lb = domain.linear_bounds(element, C.reshape(1, (e - s) * nd, n))
            out[s:e] = (-lb.reshape(e - s, nd)).cpu().numpy()
    return out


def krelu_rows(domain: Domain, element: Any, lower: np.ndarray, upper: np.ndarray, options: KReluOptions,
               deadline: float | None = None) -> tuple[KReluRows, dict[str, float]]:
    """k-ReLU hull rows for the ReLU whose input element (pre-activations) is ``element``.

    ``lower``/``upper`` are the proved flat bounds of the pre-activations (possibly tighter than
    the domain's own). Stops adding groups once ``deadline`` passes (fewer rows is still sound).
    """
    t0 = time.perf_counter()
    groups = group_neurons(lower, upper, options)
    rows = KReluRows()
    stats = {"groups": 0.0, "octahedron_s": 0.0, "hull_s": 0.0}
    if not groups:
        return rows, stats
    # Groups of size < k (small windows) are handled per size.
    by_size: dict[int, list[tuple[int, ...]]] = {}
    for g in groups:
        by_size.setdefault(len(g), []).append(g)
    for k, grp in by_size.items():
        if k < 2:
            continue
        D = octahedral_directions(k)
        pos, neg = unit_row_indices(D)
        B = octahedral_upper_bounds(domain, element, grp, k)
        t1 = time.perf_counter()
        stats["octahedron_s"] += t1 - t0
        for g, b in zip(grp, B):
            if deadline is not None and time.perf_counter() > deadline:
                log.info("k-ReLU: deadline reached after %d groups", len(rows.groups))
                break
            gi = np.asarray(g)
            b = b.copy()
            b[pos] = np.minimum(b[pos], upper[gi])
            b[neg] = np.minimum(b[neg], -lower[gi])
            if not np.all(np.isfinite(b)):
                continue
            try:
                H = multi_neuron_rows(krelu_hull(D, b, options))  # the LP has the triangles already
            except Exception as exc:  # noqa: BLE001 - a failed hull only loses precision
                log.debug("k-ReLU hull failed for group %s: %s", g, exc)
                continue
            if H.shape[0] == 0:
                continue
            rows.groups.append(tuple(int(i) for i in g))
            rows.hulls.append(np.asarray(H, dtype=np.float64))
        stats["hull_s"] += time.perf_counter() - t1
        t0 = time.perf_counter()
    stats["groups"] = float(len(rows.groups))
    return rows, stats
