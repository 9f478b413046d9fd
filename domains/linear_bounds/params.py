"""Optimisable relaxation parameters: ReLU slopes α, split multipliers β, constraint multipliers μ, and
the tangent points of sigmoid/tanh lines.

For each ReLU node ``y = relu(z)`` a backward pass may use, per target row ``r``:

* ``alpha`` ``[R, n]`` — lower slopes: ``y ≥ α z`` holds for every ``α ∈ [0, 1]`` (α-CROWN, Xu et al.,
  ICLR 2021); the engine clamps to ``[0, 1]``, so any tensor is sound;
* ``beta`` ``(sign [B, n], β [R, n])`` — split constraints ``sign_j · z_j ≥ 0`` of the batch member's
  sub-problem (``sign ∈ {−1, 0, 1}``) enter by Lagrangian relaxation: ``target ≥ target − Σ β_j sign_j z_j``
  for ``β ≥ 0`` (β-CROWN, Wang et al., NeurIPS 2021); the engine clamps ``β ≥ 0``;
* ``mu`` ``(LayerConstraints, μ [R, K])`` — **the multiplier slot**: extra linear constraints
  ``A_pre z + A_post y ≤ b`` over the layer's (pre, post) neurons, valid on every point of the batch
  member's region (e.g. k-ReLU / PRIMA hull rows), enter as ``target ≥ target + μ·(A_pre z + A_post y − b)``
  for ``μ ≥ 0`` (GCP-CROWN, Zhang et al., NeurIPS 2022): ``λ_y += μ A_post`` before the ReLU is
  relaxed, ``λ_z += μ A_pre`` after, ``c −= μ·b``. The engine clamps ``μ ≥ 0``.

For each sigmoid/tanh node, per target row:

* ``tangent`` ``[R, 2n]`` — the positions ``t ∈ [0, 1]`` of the lower (first ``n``) and upper (last ``n``)
  lines' tangent points within their valid ranges (:mod:`.tangent`; α-CROWN's S-shaped case); the
  engine clamps to ``[0, 1]``.

Every value of the parameters gives a proved bound; optimisers (:mod:`.optimize`) only search for
good ones. The rounding of the extra terms is accounted for like every other step
(:meth:`LayerConstraints.err_term`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from absint.domains.linear_bounds.relax import floor, gam
from absint.domains.linear_bounds.graph import Node
from absint.domains.linear_bounds.rows import RowLayout


__all__ = ["LayerConstraints", "NodeParams", "Params"]


@dataclass(frozen=True, eq=False)
class LayerConstraints:
    """Rows ``A_pre z + A_post y ≤ b`` on one ReLU layer (``z`` its input, ``y`` its output, flat).

    ``A_pre``, ``A_post``: ``[K, n]`` (shared by all batch members) or ``[B, K, n]``; ``b``: ``[K]`` or
    ``[B, K]``. The caller guarantees that the rows hold, in real arithmetic, for every point of each
    member's region. Multipliers are ``μ`` ``[R, K]`` per target row.
    """

    A_pre: torch.Tensor
    A_post: torch.Tensor
    b: torch.Tensor
    _memo: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_rows(self) -> int:
        return int(self.b.shape[-1])

    def _apply(self, mu: torch.Tensor, A: torch.Tensor, rows: RowLayout) -> torch.Tensor:
        """``μ_r A[b(r)]`` for every row → ``[R, n]``."""
        if A.dim() == 2:
            return mu @ A
        if rows.bidx is None:
            return mu @ A[0]
        if rows.uniform is not None:
            b, m = rows.batch, rows.uniform
            return torch.bmm(mu.reshape(b, m, -1), A).reshape(b * m, -1)
        return torch.einsum("rk,rkn->rn", mu, A.index_select(0, rows.bidx))

    def post_term(self, mu: torch.Tensor, rows: RowLayout) -> torch.Tensor:
        return self._apply(mu.clamp(min=0), self.A_post, rows)

    def pre_term(self, mu: torch.Tensor, rows: RowLayout) -> torch.Tensor:
        return self._apply(mu.clamp(min=0), self.A_pre, rows)

    def const_term(self, mu: torch.Tensor, rows: RowLayout) -> torch.Tensor:
        b = self.b if self.b.dim() == 2 else self.b.unsqueeze(0)
        return rows.dot(mu.clamp(min=0), b.expand(rows.batch, -1)) if rows.bidx is not None else mu.clamp(min=0) @ b[0]

    def err_term(self, mu: torch.Tensor, rows: RowLayout, engine: Any, node: Node, K: int) -> torch.Tensor:
        """A bound ``[R]`` of the rounding error of the three terms (γ_K·|μ|·(|A_post| ymax + |A_pre| zmax + |b|))."""
        ymag = engine.magnitude(node, None)
        zmag = engine.magnitude(node.parents[0], None)
        key = (id(ymag), id(zmag))
        v = self._memo.get(key)
        if v is None:
            def absmv(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
                return (A.abs() @ x.T).T if A.dim() == 2 else torch.einsum("bkn,bn->bk", A.abs(), x)
            v = absmv(self.A_post, ymag) + absmv(self.A_pre, zmag) + self.b.abs().expand(ymag.shape[0], -1)
            k = self.num_rows + K + 4
            v = v * (4 * gam(k, v.dtype)) + k * floor(v.dtype)
            self._memo.clear()
            self._memo[key] = v
        m = mu.clamp(min=0)
        return rows.dot(m, v) if rows.bidx is not None else m @ v[0]


@dataclass
class NodeParams:
    """Parameters of one activation node for one backward pass (see the module docstring)."""

    alpha: torch.Tensor | None = None
    beta: tuple[torch.Tensor, torch.Tensor] | None = None
    mu: tuple[LayerConstraints, torch.Tensor] | None = None
    tangent: torch.Tensor | None = None


@dataclass
class Params:
    """Per-node parameters of a backward pass, keyed by node identity."""

    nodes: dict[int, NodeParams] = field(default_factory=dict)

    def set(self, node: Node, p: NodeParams) -> None:
        self.nodes[id(node)] = p

    def at(self, node: Node) -> NodeParams | None:
        return self.nodes.get(id(node))
