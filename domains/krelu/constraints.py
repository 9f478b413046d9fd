"""k-ReLU hull rows as extra constraints of the linear-bound engine (the multiplier slot).

The engine (:mod:`absint.domains.linear_bounds`) accepts, per ReLU node, rows ``A_pre z + A_post y ≤ b``
that hold on the region, with multipliers ``μ ≥ 0`` per bounded target row
(:class:`~absint.domains.linear_bounds.LayerConstraints`, GCP-CROWN, Zhang et al. NeurIPS 2022). This module
fills that slot with the multi-neuron rows of :mod:`absint.domains.krelu.layer` (kPoly, Singh et al.
NeurIPS 2019; PRIMA, Müller et al. POPL 2022):

* :func:`engine_upper_bounds` — the octahedral query of a layer answered by the engine: one batched
  back-substitution of all ``±d`` rows of all groups, over the node's current (tightened) bounds;
* :func:`relu_constraints` — the :class:`~absint.domains.krelu.layer.HullRows` of a ReLU node and its
  :class:`LayerConstraints`;
* :func:`to_layer_constraints` — dense engine tensors from :class:`HullRows` (exact copies of the
  float rows, whose right-hand sides the hull functions certified).

Soundness: the rows hold for every ``(z, relu z)`` with ``z`` in the region the engine bounded (every
sub-region of it too), so every ``μ ≥ 0`` gives a proved bound by weak duality; the engine accounts
for the rounding of the ``μ`` terms (:meth:`LayerConstraints.err_term`).
"""
from __future__ import annotations

import numpy as np
import torch

from absint.domains.krelu.grouping import KReluOptions
from absint.domains.krelu.layer import HullRows, UpperBounds, layer_hull_rows
from absint.domains.linear_bounds import Engine, LayerConstraints, Node

__all__ = ["engine_upper_bounds", "relu_constraints", "to_layer_constraints"]


def engine_upper_bounds(engine: Engine, node: Node, member: int = 0) -> UpperBounds:
    """``C ↦ out`` with ``out[i] ≥ max C[i]·x`` over batch member ``member`` of ``node`` (proved by the engine)."""

    def upper(C: np.ndarray) -> np.ndarray:
        Ct = torch.as_tensor(-np.asarray(C, dtype=np.float64), dtype=engine.dtype, device=engine.device)
        if node.batch > 1:
            full = Ct.new_zeros(node.batch, *Ct.shape)
            full[member] = Ct
            Ct = full
        with torch.no_grad():
            lb = engine.linear_bounds_at(node, Ct[None] if Ct.dim() == 2 else Ct)
        return (-lb[member]).detach().cpu().double().numpy()

    return upper


def to_layer_constraints(rows: HullRows, *, dtype: torch.dtype = torch.float64,
                         device: torch.device | str = "cpu") -> LayerConstraints:
    """The engine's dense ``LayerConstraints`` for ``rows`` (``[K, n]`` matrices shared by all members)."""
    A_pre, A_post, b = rows.dense()
    return LayerConstraints(torch.as_tensor(A_pre, dtype=dtype, device=device),
                            torch.as_tensor(A_post, dtype=dtype, device=device),
                            torch.as_tensor(b, dtype=dtype, device=device))


def relu_constraints(engine: Engine, relu: Node, options: KReluOptions, *, deadline: float | None = None,
                     member: int = 0) -> tuple[HullRows, LayerConstraints | None]:
    """Hull rows of the ReLU node ``relu`` from its input's current bounds (member ``member``).

    Returns the rows and their engine constraints (None when no group gave a row).
    """
    pre = relu.parents[0]
    lo, hi = engine.bounds(pre)
    lo = lo[member].reshape(-1).detach().cpu().double().numpy()
    hi = hi[member].reshape(-1).detach().cpu().double().numpy()
    rows = layer_hull_rows(lo, hi, engine_upper_bounds(engine, pre, member), options, deadline=deadline)
    if rows.num_rows == 0:
        return rows, None
    return rows, to_layer_constraints(rows, dtype=engine.dtype, device=engine.device)
