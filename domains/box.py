"""Box (interval) domain: every neuron carries an interval ``[lower, upper]``.

Affine maps use the centre/radius form ``c' = A c + b``, ``r' = |A| r`` (exact for intervals and
cheaper than splitting ``A`` into positive and negative parts). Non-linear ops use their
monotonicity. This is the baseline every other domain must never be looser than.

Floating point (sound in real arithmetic at every magnitude, :mod:`absint.rounding`): the radius
is rounded up so that ``[c − r, c + r]`` contains ``[l, u]``; the affine image is widened by the
γ_n bound of its dot products, ``2γ_{n+2}·(|A|(|c| + r) + |b|)`` (Higham §3.1), and rounded
outward; sums are rounded outward; sigmoid/tanh images are widened by the library's accuracy
(:data:`~absint.rounding.LIBM_ULPS`). ReLU, max pooling and reshapes are exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from absint.linear import LinearOperator
from absint.domains.base import Domain, interval_add, interval_affine, interval_monotone


@dataclass(frozen=True, eq=False)
class BoxElement:
    """Intervals ``lower ≤ x ≤ upper``, each ``[B, *shape]``."""

    lower: torch.Tensor
    upper: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.lower.shape[1:])

    @property
    def batch_size(self) -> int:
        return int(self.lower.shape[0])


class BoxDomain(Domain[BoxElement]):
    """Interval arithmetic (the Box domain)."""

    name = "box"
    description = "intervals per neuron (interval bound propagation)"

    def from_box(self, lower: torch.Tensor, upper: torch.Tensor) -> BoxElement:
        lo, hi = self.tensor(lower), self.tensor(upper)
        return BoxElement(lo, hi)

    def affine(self, x: BoxElement, op: LinearOperator, bias: torch.Tensor | None) -> BoxElement:
        return BoxElement(*interval_affine(op, bias, x.lower, x.upper))

    def relu(self, x: BoxElement) -> BoxElement:
        return BoxElement(x.lower.clamp(min=0), x.upper.clamp(min=0))

    def bounds(self, x: BoxElement) -> tuple[torch.Tensor, torch.Tensor]:
        return x.lower, x.upper

    def reshape(self, x: BoxElement, shape: tuple[int, ...]) -> BoxElement:
        b = x.batch_size
        return BoxElement(x.lower.reshape(b, *shape), x.upper.reshape(b, *shape))

    def add(self, x: BoxElement, y: BoxElement) -> BoxElement:
        return BoxElement(*interval_add(x.lower, x.upper, y.lower, y.upper))

    def sigmoid(self, x: BoxElement) -> BoxElement:
        return BoxElement(*interval_monotone(torch.sigmoid, x.lower, x.upper, (0.0, 1.0)))

    def tanh(self, x: BoxElement) -> BoxElement:
        return BoxElement(*interval_monotone(torch.tanh, x.lower, x.upper, (-1.0, 1.0)))

    def maxpool(self, x: BoxElement, kernel, stride, padding) -> BoxElement:
        return BoxElement(F.max_pool2d(x.lower, kernel, stride, padding), F.max_pool2d(x.upper, kernel, stride, padding))

    def meet_box(self, x: BoxElement, lower: torch.Tensor, upper: torch.Tensor) -> BoxElement:
        return BoxElement(torch.maximum(x.lower, lower), torch.minimum(x.upper, upper))
