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
  float rows, whose right-hand sides the hull functions certified);
* :class:`GroupedConstraints` — the same rows in the slot's protocol but stored per group (each row
  reads the ``k`` neurons of its group): ``μ A`` costs ``R·K·k`` instead of ``R·K·n`` operations
  (2× faster on 100-neuron layers, far more on convolutional ones).

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
from absint.domains.linear_bounds.relax import floor, gam

__all__ = ["GroupedConstraints", "engine_upper_bounds", "relu_constraints", "to_layer_constraints"]


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


class GroupedConstraints:
    """:class:`HullRows` in the engine's multiplier-slot protocol, stored group by group.

    The rows are laid out as ``G`` groups of ``r`` rows (groups with fewer rows are padded with zero
    rows, ``0 ≤ 0``, which any multiplier keeps valid); group ``g`` reads neurons ``index[g]``
    (``k`` of them; smaller groups are padded with zero coefficients). Multipliers are ``μ``
    ``[R, G·r]`` (the engine's ``[R, K]``); the methods are those the engine calls
    (:class:`~absint.domains.linear_bounds.LayerConstraints`): ``post_term`` (``μ A_post``),
    ``pre_term`` (``μ A_pre``), ``const_term`` (``μ·b``) and ``err_term`` (a bound of their rounding
    errors, the same formula as the dense class). Shared by every batch member. ``μ`` is clamped to
    ``≥ 0`` (once per tensor version).
    """

    def __init__(self, rows: HullRows, *, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"):
        groups = rows.group_of
        G = len(rows.groups)
        if G == 0 or rows.num_rows == 0:
            raise ValueError("GroupedConstraints needs at least one row")
        k = rows.index.shape[1]
        counts = np.bincount(groups, minlength=G)
        r = int(counts.max())
        slot = np.arange(rows.num_rows) - np.concatenate([[0], np.cumsum(counts)[:-1]])[groups]
        pre = np.zeros((G, r, k))
        post = np.zeros((G, r, k))
        b = np.zeros((G, r))
        pre[groups, slot] = rows.pre
        post[groups, slot] = rows.post
        b[groups, slot] = rows.rhs
        index = np.zeros((G, k), dtype=np.int64)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        index[:] = rows.index[first]
        self.G, self.r, self.k, self.n = G, r, k, rows.numel
        #: column of each row of ``rows`` in the grouped layout
        self.position = torch.as_tensor(groups * r + slot, device=device)
        self.index = torch.as_tensor(index.reshape(-1), device=device)
        self.A_pre = torch.as_tensor(pre, dtype=dtype, device=device)
        self.A_post = torch.as_tensor(post, dtype=dtype, device=device)
        self.b = torch.as_tensor(b.reshape(-1), dtype=dtype, device=device)
        self._clamped: tuple | None = None
        self._err: dict = {}

    @property
    def num_rows(self) -> int:
        return self.G * self.r

    def to_grouped(self, mu: torch.Tensor) -> torch.Tensor:
        """Multipliers ``[R, m]`` over the rows of the :class:`HullRows` → the grouped layout ``[R, G·r]``."""
        out = mu.new_zeros(mu.shape[0], self.num_rows)
        out[:, self.position] = mu
        return out

    def from_grouped(self, mu: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_grouped` (padding columns dropped)."""
        return mu[:, self.position]

    def _mu(self, mu: torch.Tensor) -> torch.Tensor:
        key = (id(mu), mu._version)
        if self._clamped is None or self._clamped[0] != key:
            self._clamped = (key, mu, mu.clamp(min=0))
        return self._clamped[2]

    def _apply(self, mu: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        R = mu.shape[0]
        t = torch.bmm(mu.reshape(R, self.G, self.r).transpose(0, 1), A)  # [G, R, k]
        return mu.new_zeros(R, self.n).index_add(1, self.index, t.transpose(0, 1).reshape(R, self.G * self.k))

    def post_term(self, mu: torch.Tensor, rows) -> torch.Tensor:
        return self._apply(self._mu(mu), self.A_post)

    def pre_term(self, mu: torch.Tensor, rows) -> torch.Tensor:
        return self._apply(self._mu(mu), self.A_pre)

    def const_term(self, mu: torch.Tensor, rows) -> torch.Tensor:
        return self._mu(mu) @ self.b

    def err_term(self, mu: torch.Tensor, rows, engine: Engine, node: Node, K: int) -> torch.Tensor:
        """``γ·|μ|·(|A_post| ymax + |A_pre| zmax + |b|)``: every entry of the three terms is a sum of at
        most ``G·r`` products (the row sums inside a group, then the groups sharing a neuron)."""
        ymag = engine.magnitude(node, None)[0]
        zmag = engine.magnitude(node.parents[0], None)[0]
        key = (id(ymag), id(zmag))
        v = self._err.get(key)
        if v is None:
            gi = self.index.reshape(self.G, 1, self.k)
            v = ((self.A_post.abs() * ymag[gi]).sum(-1) + (self.A_pre.abs() * zmag[gi]).sum(-1)).reshape(-1)
            v = v + self.b.abs()
            m = self.num_rows + K + 4
            v = v * (4 * gam(m, v.dtype)) + m * floor(v.dtype)
            self._err = {key: v}
        return self._mu(mu) @ v


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
