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
  (2× faster on 100-neuron layers, far more on convolutional ones); groups are bucketed by row
  count (:func:`bucket_groups`), so little of ``μ`` is padding.

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

__all__ = ["GroupedConstraints", "bucket_groups", "engine_upper_bounds", "relu_constraints", "to_layer_constraints"]


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


#: Buckets per layer (:func:`bucket_groups`): at most this many, …
MAX_BUCKETS = 8
#: … each worth it only when it saves at least this many padded columns of ``μ`` (its cost: one
#: more bmm call per product and per backward).
BUCKET_COST = 24


def bucket_groups(counts: np.ndarray, max_buckets: int = MAX_BUCKETS,
                  cost: int = BUCKET_COST) -> list[tuple[int, int]]:
    """Split ascending row counts ``counts`` (one per group) into contiguous buckets ``[(start, end), …]``
    that minimise the padded width ``Σ (end − start)·counts[end − 1]`` plus ``cost`` per bucket.

    Dynamic programming over the distinct counts (an optimal split never separates equal counts)."""
    vals = np.unique(counts)
    ends = np.concatenate([[0], np.searchsorted(counts, vals, side="right")])  # groups up to each value
    D = len(vals)
    i, j = np.arange(D + 1)[:, None], np.arange(D + 1)[None, :]
    width = np.where(i < j, (ends[j] - ends[i]) * np.concatenate([[0], vals])[j], np.inf)  # one bucket i..j
    best = np.full((max_buckets + 1, D + 1), np.inf)
    best[0, 0] = 0.0
    arg = np.zeros((max_buckets + 1, D + 1), dtype=np.int64)
    for b in range(1, max_buckets + 1):
        total = best[b - 1][:, None] + width
        arg[b] = total.argmin(0)
        best[b] = total.min(0)
    nb = int(np.argmin(best[1:, D] + cost * np.arange(1, max_buckets + 1))) + 1
    out, e = [], D
    for b in range(nb, 0, -1):
        s = int(arg[b, e])
        out.append((int(ends[s]), int(ends[e])))
        e = s
    return out[::-1]


class _BucketProduct(torch.autograd.Function):
    """``t[g] = μ_g A_g`` ``[G, R, C]`` for the stored groups ``g``: one bmm per bucket, reading ``μ``
    ``[R, width]`` in place; the backward writes ``∂μ`` in place too (no ``μ``-sized transposed copies)."""

    @staticmethod
    def forward(ctx, mu: torch.Tensor, buckets: tuple) -> torch.Tensor:  # type: ignore[override]
        ctx.buckets = buckets
        R = mu.shape[0]
        out = mu.new_empty(buckets[-1][1], R, buckets[0][4].shape[-1])
        for g0, g1, c0, c1, A in buckets:
            torch.bmm(mu[:, c0:c1].reshape(R, g1 - g0, A.shape[1]).transpose(0, 1), A, out=out[g0:g1])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        buckets = ctx.buckets
        R = grad.shape[1]
        out = grad.new_empty(R, buckets[-1][3])
        for g0, g1, c0, c1, A in buckets:
            torch.bmm(grad[g0:g1], A.transpose(1, 2), out=out[:, c0:c1].view(R, g1 - g0, A.shape[1]).transpose(0, 1))
        return out, None


def _version_key(mu: torch.Tensor) -> tuple[int, int, bool]:
    """What a value computed from ``mu`` depends on: the tensor, its in-place version and whether
    autograd records (a product computed without gradient must not serve a pass that needs one).
    The caches keep ``mu`` itself beside the key, so its ``id`` cannot be reused meanwhile."""
    return id(mu), mu._version, torch.is_grad_enabled()


class GroupedConstraints:
    """:class:`HullRows` in the engine's multiplier-slot protocol, stored group by group.

    Group ``g``'s rows read its ``k`` neurons ``index[g]`` (smaller groups' rows are padded with zero
    coefficients) and form a block ``(A_post | A_pre | b)`` ``[rows, 2k + 1]``. The groups, sorted by
    row count, are split into a few buckets (:func:`bucket_groups`); a bucket pads its groups to its
    largest one with zero rows (``0 ≤ 0``, valid under any multiplier) and stores them as one
    ``[G_b, r_b, 2k + 1]`` tensor. Multipliers are ``μ`` ``[R, num_rows]`` (the engine's ``[R, K]``,
    ``num_rows = Σ_b G_b·r_b``: the buckets side by side, each ``[G_b, r_b]`` row-major);
    :attr:`position` maps the rows of the :class:`HullRows` to their columns.

    The methods are those the engine calls (:class:`~absint.domains.linear_bounds.LayerConstraints`):
    ``post_term`` (``μ A_post``), ``pre_term`` (``μ A_pre``), ``const_term`` (``μ·b``) and ``err_term``
    (a bound of their rounding errors). ``post_term`` computes all three terms, one product
    ``μ (A_post | A_pre | b)`` per bucket; ``pre_term`` and ``const_term`` reuse them for the same
    tensor version of ``μ`` (the engine calls ``post_term`` first at each ReLU). ``μ`` is clamped to
    ``≥ 0`` once per tensor version (not copied when it has no negative entry). Shared by every batch
    member.
    """

    def __init__(self, rows: HullRows, *, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                 max_buckets: int = MAX_BUCKETS):
        if rows.num_rows == 0:
            raise ValueError("GroupedConstraints needs at least one row")
        m, k, n = rows.num_rows, rows.index.shape[1], rows.numel
        group_of = np.asarray(rows.group_of, dtype=np.int64)
        counts = np.bincount(group_of, minlength=len(rows.groups))
        used = np.flatnonzero(counts)
        order = used[np.argsort(counts[used], kind="stable")]  # the stored groups, by row count
        by_group = np.argsort(group_of, kind="stable")
        first = np.concatenate([[0], np.cumsum(counts)])  # of each group's rows in by_group
        slot = np.empty(m, dtype=np.int64)  # rank of each row among its group's rows
        slot[by_group] = np.arange(m) - first[group_of[by_group]]
        offset = np.zeros(len(counts), dtype=np.int64)  # first column of each group
        spans, width = [], 0
        for s, e in bucket_groups(counts[order], max_buckets):
            r_b = int(counts[order[e - 1]])
            offset[order[s:e]] = width + r_b * np.arange(e - s)
            spans.append((s, e, width, width + (e - s) * r_b, r_b))
            width += (e - s) * r_b
        position = offset[group_of] + slot
        A = np.zeros((width, 2 * k + 1))
        A[position, :k] = rows.post
        A[position, k:2 * k] = rows.pre
        A[position, 2 * k] = rows.rhs
        A_t = torch.as_tensor(A, dtype=dtype, device=device)
        self.G, self.k, self.n = len(order), k, n  # stored groups, neurons per group, layer width
        self._width = width
        #: column of each row of ``rows`` in the grouped layout
        self.position = torch.as_tensor(position, device=device)
        #: ``[G, k]``: the neurons of each stored group
        self.index = torch.as_tensor(rows.index[by_group[first[order]]], device=device)
        #: per bucket: its groups ``g0:g1``, its columns ``c0:c1`` and its rows ``[G_b, r_b, 2k + 1]``
        self.buckets = tuple((s, e, c0, c1, A_t[c0:c1].reshape(e - s, r_b, 2 * k + 1))
                             for s, e, c0, c1, r_b in spans)
        self._index2 = torch.cat([self.index, self.index + n], 1).reshape(-1)  # the post | pre columns
        self._clamped: tuple | None = None
        self._terms: tuple | None = None
        self._err: tuple | None = None

    @property
    def num_rows(self) -> int:
        return self._width

    def to_grouped(self, mu: torch.Tensor) -> torch.Tensor:
        """Multipliers ``[R, m]`` over the rows of the :class:`HullRows` → the grouped layout ``[R, num_rows]``."""
        out = mu.new_zeros(mu.shape[0], self.num_rows)
        out[:, self.position] = mu
        return out

    def from_grouped(self, mu: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_grouped` (padding columns dropped)."""
        return mu[:, self.position]

    def _mu(self, mu: torch.Tensor) -> torch.Tensor:
        """``max(μ, 0)``, once per tensor version (and grad mode)."""
        key = _version_key(mu)
        if self._clamped is None or self._clamped[0] != key:
            neg = mu.numel() > 0 and bool(mu.min() < 0)
            self._clamped = (key, mu, mu.clamp(min=0) if neg else mu)
        return self._clamped[2]

    def _compute(self, mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(μ A_post, μ A_pre, μ·b)``, memoised for :meth:`pre_term` and :meth:`const_term`."""
        R, k, n = mu.shape[0], self.k, self.n
        t = _BucketProduct.apply(self._mu(mu), self.buckets)  # [G, R, 2k + 1]
        flat = t[:, :, :2 * k].transpose(0, 1).reshape(R, self.G * 2 * k)
        lam = mu.new_zeros(R, 2 * n).index_add(1, self._index2, flat)
        terms = (lam[:, :n], lam[:, n:], t[:, :, 2 * k].sum(0))
        self._terms = (_version_key(mu), mu, terms)
        return terms

    def _memo(self, mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = _version_key(mu)
        return self._terms[2] if self._terms is not None and self._terms[0] == key else self._compute(mu)

    def post_term(self, mu: torch.Tensor, rows) -> torch.Tensor:
        return self._compute(mu)[0]

    def pre_term(self, mu: torch.Tensor, rows) -> torch.Tensor:
        return self._memo(mu)[1]

    def const_term(self, mu: torch.Tensor, rows) -> torch.Tensor:
        return self._memo(mu)[2]

    def err_term(self, mu: torch.Tensor, rows, engine: Engine, node: Node, K: int) -> torch.Tensor:
        """``|μ|·v`` with ``v = 4γ_m·(|A_post| ymax + |A_pre| zmax + |b|) + m·floor``, ``m = num_rows + K + 4``
        (the dense class's formula). Every entry of the three terms is computed along rounding paths
        of at most ``r_b + G`` operations (a product, a sum over a group's ``r_b`` rows in the bmm,
        then over at most ``G`` groups; padding adds exact zeros), and ``r_b + G ≤ num_rows + 1`` as
        every stored group has a row."""
        ymag = engine.magnitude(node, None)
        zmag = engine.magnitude(node.parents[0], None)
        memo = self._err
        if memo is None or memo[0] is not ymag or memo[1] is not zmag or memo[2] != K:
            k, parts = self.k, []
            for g0, g1, _, _, A in self.buckets:
                gi = self.index[g0:g1, None, :]
                parts.append(((A[..., :k].abs() * ymag[0][gi]).sum(-1) + (A[..., k:2 * k].abs() * zmag[0][gi]).sum(-1)
                              + A[..., 2 * k].abs()).reshape(-1))
            v = torch.cat(parts)
            m = self.num_rows + K + 4
            memo = self._err = (ymag, zmag, K, v * (4 * gam(m, v.dtype)) + m * floor(v.dtype))
        return self._mu(mu) @ memo[3]


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
